"""Embedding providers: `build_provider` picks one from settings."""

from __future__ import annotations

from helix_pipelines.core.errors import Blocker
from helix_pipelines.embedding.base import (
    EmbeddingError,
    EmbeddingProvider,
    EmbeddingResult,
    InvalidInputError,
    ProviderConfigError,
    RateLimitedError,
    RateLimitInfo,
    TransientEmbeddingError,
    embedding_text,
)

__all__ = [
    "EmbeddingError",
    "EmbeddingProvider",
    "EmbeddingResult",
    "InvalidInputError",
    "ProviderConfigError",
    "RateLimitInfo",
    "RateLimitedError",
    "TransientEmbeddingError",
    "build_provider",
    "embedding_text",
]


def build_provider(
    *,
    provider: str,
    model: str,
    dim: int,
    api_key: str | None,
    base_url: str | None,
    timeout_s: float,
    send_dimensions: bool = True,
) -> EmbeddingProvider:
    """`openai` (needs api_key) or `local`; ProviderConfigError for anything else."""
    kind = provider.strip().lower()
    if kind == "local":
        from helix_pipelines.embedding.local_provider import LocalProvider

        return LocalProvider(dim=dim)
    if kind == "openai":
        if not api_key:
            raise ProviderConfigError(
                "the openai provider needs OPENAI_API_KEY", blocker=Blocker.AUTH
            )
        from helix_pipelines.embedding.openai_provider import OpenAIProvider  # imports openai

        return OpenAIProvider(
            api_key=api_key, base_url=base_url, model=model, dim=dim, timeout_s=timeout_s,
            send_dimensions=send_dimensions,
        )  # fmt: skip
    raise ProviderConfigError(f"unknown embedding provider {provider!r}: use 'openai' or 'local'")
