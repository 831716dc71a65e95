"""Embeddings through the official `openai` client, against any OpenAI-compatible server.

Vectors are requested as base64 and decoded with numpy straight from the raw response body:
letting the client build its pydantic objects costs more than the request itself at 2,048 inputs
(see bench/decode_probe.py). Every response is validated before anything is returned, and every
failure is mapped to one of the EmbeddingError classes; the client's own retries are off so the
caller's retry, rate limiter and circuit breaker see each attempt.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from helix_pipelines.core.errors import Blocker, blocker
from helix_pipelines.core.redact import redact
from helix_pipelines.core.tokens import count_tokens
from helix_pipelines.embedding.base import (
    EmbeddingError,
    EmbeddingResult,
    InvalidInputError,
    ProviderConfigError,
    RateLimitedError,
    RateLimitInfo,
    TransientEmbeddingError,
)

if TYPE_CHECKING:
    import openai

_TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
# OpenAI echoes a masked key ("sk-abc***wxyz") in 401 messages: scrub anything key-shaped.
_KEY_LIKE = re.compile(r"\b(?:sk|pk|rk)-[^\s'\",}]*")


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        model: str,
        dim: int,
        timeout_s: float,
        send_dimensions: bool = True,
    ) -> None:
        self.model = model
        self.dim = dim
        self.timeout_s = timeout_s
        self._send_dimensions = send_dimensions
        self._secret = api_key
        import openai  # here, not at module level: half a second that only API users pay

        self._client = openai.OpenAI(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_s
        )

    def __repr__(self) -> str:
        return f"OpenAIProvider(model={self.model!r}, dim={self.dim}, url={self._base_url()!r})"

    def embed(self, texts: Sequence[str]) -> EmbeddingResult:
        inputs = list(texts)
        if not inputs:
            return EmbeddingResult(np.empty((0, self.dim), np.float32), 0, None, 0.0)
        started = time.perf_counter()
        raw = self._post(inputs)
        latency = time.perf_counter() - started
        rate_limit = parse_rate_limit_headers(raw.headers)
        body = _json_body(raw.content)
        vectors = decode_embeddings(body, len(inputs), self.dim)
        tokens = _usage_tokens(body) or sum(count_tokens(text) for text in inputs)
        return EmbeddingResult(vectors, tokens, rate_limit, latency)

    def close(self) -> None:
        self._client.close()

    def _post(self, inputs: list[str]) -> Any:
        import openai  # loaded by __init__ already

        extra: dict[str, Any] = {"dimensions": self.dim} if self._send_dimensions else {}
        try:
            return self._client.embeddings.with_raw_response.create(
                input=inputs, model=self.model, encoding_format="base64", **extra
            )
        except openai.APITimeoutError as exc:
            raise TransientEmbeddingError(f"request timed out after {self.timeout_s}s") from exc
        except openai.APIConnectionError as exc:
            reason = self._scrub(str(exc.__cause__ or exc))
            raise TransientEmbeddingError(f"connection error: {reason}") from exc
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from None  # the cause holds the request's headers

    def _status_error(self, exc: openai.APIStatusError) -> EmbeddingError:
        status = exc.status_code
        info = parse_rate_limit_headers(exc.response.headers)
        message = self._scrub(_api_message(exc))
        retry_after = info.retry_after_s if info else None
        kwargs = {"status_code": status, "rate_limit": info, "retry_after_s": retry_after}
        refusal = blocker(exc)  # core.errors decides, from the client's own exception
        if refusal is not None:
            return ProviderConfigError(self._blocked_line(refusal, status, message),
                                       blocker=refusal, **kwargs)  # fmt: skip
        if status == 429:
            return RateLimitedError(f"rate limited (429): {message}", **kwargs)
        if status in _TRANSIENT_STATUSES or status >= 500:
            return TransientEmbeddingError(f"server error ({status}): {message}", **kwargs)
        return InvalidInputError(message, **kwargs)

    def _blocked_line(self, refusal: Blocker, status: int, message: str) -> str:
        """One line that says what to change."""
        where = f"model {self.model!r} at {self._base_url()}"
        advice = {
            Blocker.QUOTA: "the account is out of quota: add credit or use another OPENAI_API_KEY",
            Blocker.AUTH: "the key is refused: check OPENAI_API_KEY",
            Blocker.MODEL: "unknown model or URL: check HELIX_EMBEDDING_MODEL and OPENAI_BASE_URL",
            Blocker.DIMENSIONS: (
                "the server rejects the `dimensions` parameter: set "
                f"HELIX_EMBED_SEND_DIMENSIONS=false with a model whose native width is "
                f"HELIX_EMBEDDING_DIM={self.dim}"
            ),
        }[refusal]
        return f"{advice} ({status}, {where}): {message}"

    def _scrub(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***")
        return redact(_KEY_LIKE.sub("***", text))

    def _base_url(self) -> str:
        return redact(str(self._client.base_url))


def decode_embeddings(body: Any, count: int, dim: int) -> np.ndarray:
    """(count, dim) float32 rows ordered by each item's `index`; TransientEmbeddingError if the
    body is anything but exactly one finite, dim-wide embedding per input."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise _malformed("no `data` list")
    if len(data) != count:
        raise _malformed(f"{len(data)} embeddings for {count} inputs")
    vectors = np.empty((count, dim), dtype=np.float32)
    seen = np.zeros(count, dtype=bool)
    for item in data:
        index = _item_index(item, count)
        if seen[index]:
            raise _malformed(f"index {index} appears twice")
        seen[index] = True
        vectors[index] = _item_vector(item, dim, index)
    if not np.isfinite(vectors).all():
        raise _malformed("non-finite values in embeddings")
    return vectors


def _item_index(item: Any, count: int) -> int:
    index = item.get("index") if isinstance(item, dict) else None
    if type(index) is not int or not 0 <= index < count:
        raise _malformed(f"bad index {index!r} for {count} inputs")
    return index


def _item_vector(item: dict, dim: int, index: int) -> np.ndarray:
    raw = item.get("embedding")
    if isinstance(raw, str):
        try:
            vector = np.frombuffer(base64.b64decode(raw, validate=True), dtype="<f4")
        except (binascii.Error, ValueError) as exc:
            raise _malformed(f"embedding {index} is not base64 float32: {exc}") from None
    elif isinstance(raw, list):  # a server that ignored encoding_format=base64
        try:
            vector = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError):
            raise _malformed(f"embedding {index} is not a list of numbers") from None
    else:
        raise _malformed(f"embedding {index} is missing")
    if vector.shape != (dim,):
        raise _malformed(f"embedding {index} has {vector.size} dimensions, expected {dim}")
    return vector


def _json_body(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        raise _malformed(f"body is not JSON: {exc}") from None


def _usage_tokens(body: dict) -> int | None:
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    tokens = usage.get("total_tokens", usage.get("prompt_tokens"))
    return tokens if type(tokens) is int and tokens >= 0 else None


def _api_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return f"HTTP {exc.status_code}"


def _malformed(detail: str) -> TransientEmbeddingError:
    return TransientEmbeddingError(f"malformed response: {detail}")


def parse_rate_limit_headers(
    headers: Mapping[str, str], now: float | None = None
) -> RateLimitInfo | None:
    """RateLimitInfo from OpenAI's headers, or None when the server sent none of them."""
    info = RateLimitInfo(
        remaining_requests=_int_header(headers, "x-ratelimit-remaining-requests"),
        remaining_tokens=_int_header(headers, "x-ratelimit-remaining-tokens"),
        reset_requests_s=parse_duration(headers.get("x-ratelimit-reset-requests")),
        reset_tokens_s=parse_duration(headers.get("x-ratelimit-reset-tokens")),
        retry_after_s=parse_retry_after(headers, now),
    )
    return None if info == RateLimitInfo() else info


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait: retry-after-ms wins; retry-after may be seconds or an HTTP date."""
    millis = _float(headers.get("retry-after-ms"))
    if millis is not None and millis >= 0:
        return millis / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _float(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def parse_duration(value: str | None) -> float | None:
    """'1s', '6m0s', '20ms', '1h2m3.5s' or a bare number of seconds, in seconds."""
    if not value:
        return None
    value = value.strip()
    bare = _float(value)
    if bare is not None:
        return bare
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    number = _float(headers.get(name))
    return int(number) if number is not None else None


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if np.isfinite(number) else None
