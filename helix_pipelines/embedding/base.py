"""What every embedding provider offers, and the errors that tell the caller what to do next."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from helix_pipelines.core.errors import Blocker
from helix_pipelines.core.redact import redact


def embedding_text(question: str, answer: str) -> str:
    """The text embedded for a pair (the design requires it to contain the question)."""
    return f"{question}\n\n{answer}"


@dataclass
class RateLimitInfo:
    """What the API said about our remaining budget; None where it did not say."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None
    retry_after_s: float | None = None


@dataclass
class EmbeddingResult:
    vectors: np.ndarray  # (n, dim) float32; row i embeds input i
    tokens: int
    rate_limit: RateLimitInfo | None
    latency_s: float


class EmbeddingError(Exception):
    """Base of provider errors. Messages never contain the API key."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        rate_limit: RateLimitInfo | None = None,
        blocker: Blocker | None = None,
    ) -> None:
        message = redact(message)  # the text reaches embedding_error, logs and metadata
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.rate_limit = rate_limit
        self.blocker = blocker  # read by core.errors.blocker

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status_code={self.status_code})"


class TransientEmbeddingError(EmbeddingError):
    """Worth retrying: 408, 409, 429, 5xx, timeouts, connection failures, malformed responses."""

    transient = True  # read by core.errors.classify, the one place that decides


class RateLimitedError(TransientEmbeddingError):
    """HTTP 429; retry_after_s holds the server's hint when it sent one."""


class InvalidInputError(EmbeddingError):
    """HTTP 400 and the like: some input in the batch is bad; retrying it unchanged won't help."""

    transient = False


class ProviderConfigError(EmbeddingError):
    """Nothing can succeed until the configuration or the account changes: a refused key
    (401/403), an unknown model or URL (404), the `dimensions` parameter refused (400), an
    exhausted quota (429 insufficient_quota). `blocker` says which; no pair's attempts are
    spent on it, and the circuit breaker holds every run back until the setup changes."""

    transient = False


@runtime_checkable
class EmbeddingProvider(Protocol):
    name: str
    model: str
    dim: int

    def embed(self, texts: Sequence[str]) -> EmbeddingResult: ...

    def close(self) -> None: ...
