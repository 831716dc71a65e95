"""Everything an embedding run needs, built from plain values (settings or a resource)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from helix_pipelines.core.circuit_breaker import CircuitBreaker
from helix_pipelines.core.embed_mode import BatchModeUnavailable, choose_mode, has_batch_api
from helix_pipelines.core.rate_limit import NoLimit, RateLimiter, RateLimits, Window
from helix_pipelines.db.state_store import PostgresStateStore
from helix_pipelines.embedding import build_provider
from helix_pipelines.embedding.base import EmbeddingProvider, ProviderConfigError
from helix_pipelines.embedding.local_provider import LOCAL_MODEL
from helix_pipelines.embedding.openai_batch import BatchClient
from helix_pipelines.pipeline.batch_embedding import BatchOptions
from helix_pipelines.pipeline.embedding import (
    EmbedOptions,
    EmbedReport,
    embed_pending,
)

LIMITER_NAME = "embeddings_rate"
BREAKER_NAME = "embeddings_api"


@dataclass(frozen=True)
class EmbeddingSetup:
    provider: str
    model: str
    dim: int
    api_key: str | None
    base_url: str | None
    rpm: int
    tpm: int
    max_concurrency: int
    batch_size: int
    timeout_s: float
    max_attempts: int
    truncate: bool
    breaker_failures: int = 5
    breaker_recovery_s: float = 30.0
    send_dimensions: bool = True
    blocked_retry_s: float = 3600.0
    parked_retry_s: float = 900.0
    mode: str = "auto"  # auto | sync | batch (HELIX_EMBED_MODE)
    batch_threshold: int = 10_000
    batch_poll_s: float = 60.0
    batch_max_pairs: int = 50_000
    batch_api: bool | None = None  # HELIX_EMBED_BATCH_API; unset: OpenAI's own API only
    limit_window_s: float = 60.0  # the window the API counts RPM/TPM over

    def __repr__(self) -> str:  # never show the key
        return f"EmbeddingSetup(provider={self.provider!r}, model={self.model!r}, dim={self.dim})"

    def provider_model(self) -> str:
        """The name recorded in qa_pair.embedding_model: the local provider has its own."""
        return self.model if self.provider == "openai" else LOCAL_MODEL

    def fingerprint(self) -> str:
        """What a block of the circuit is tied to: provider, model, base URL, dim,
        send_dimensions and a hash of the key (never the key). A change lifts the block."""
        key_hash = hashlib.sha256(self.api_key.encode()).hexdigest() if self.api_key else None
        setup = [self.provider, self.model, self.base_url, self.dim, self.send_dimensions]
        return hashlib.sha256(json.dumps(setup + [key_hash]).encode()).hexdigest()[:16]

    def build_provider(self) -> EmbeddingProvider:
        return build_provider(
            provider=self.provider, model=self.model, dim=self.dim, api_key=self.api_key,
            base_url=self.base_url, timeout_s=self.timeout_s,
            send_dimensions=self.send_dimensions,
        )  # fmt: skip

    def build_limiter(self, engine: Engine) -> RateLimiter | NoLimit:
        if self.provider == "local":
            return NoLimit()  # no API behind it: the deployment's API budget does not apply
        return RateLimiter(
            RateLimits(self.rpm, self.tpm), PostgresStateStore(engine), LIMITER_NAME,
            window=Window(window_s=self.limit_window_s, slot_s=min(1.0, self.limit_window_s)),
        )  # fmt: skip

    def build_breaker(
        self, engine: Engine, clock: Callable[[], float] = time.time
    ) -> CircuitBreaker:
        return CircuitBreaker(
            PostgresStateStore(engine), BREAKER_NAME,
            failure_threshold=self.breaker_failures, recovery_s=self.breaker_recovery_s,
            clock=clock, block_retry_s=self.blocked_retry_s, parked_retry_s=self.parked_retry_s,
            fingerprint=self.fingerprint(),
        )  # fmt: skip

    def options(self) -> EmbedOptions:
        return EmbedOptions(
            batch_size=self.batch_size, max_concurrency=self.max_concurrency,
            max_attempts=self.max_attempts, truncate=self.truncate,
            # The estimate in metadata: the local provider costs nothing.
            **({"usd_per_million_tokens": 0.0} if self.provider == "local" else {}),
        )  # fmt: skip

    def embed(
        self,
        engine: Engine,
        *,
        job_id=None,
        observer=None,
        operator: bool = False,
        on_progress=None,
    ) -> tuple[EmbedReport, str]:
        """One embedding run of `job_id`'s pending pairs (all when None); returns the report
        and the circuit state after it. ProviderConfigError propagates, and blocks the circuit.

        operator: someone asked for this run (CLI, Launchpad), so a block gives way to one
        probe: the quota may have been topped up since."""
        breaker = self.build_breaker(engine)
        if operator:
            breaker.lift_block()
        provider = self._provider_or_block(breaker)
        try:
            report = embed_pending(
                engine, provider, limiter=self.build_limiter(engine), breaker=breaker,
                options=self.options(), job_id=job_id, observer=observer,
                on_progress=on_progress,
            )  # fmt: skip
        finally:
            provider.close()
        return report, breaker.snapshot()["state"]

    def mode_for(self, pending: int, override: str | None = None) -> str:
        """sync or batch for a run with `pending` pairs (core.embed_mode decides). An explicit
        `batch` is the operator's word; `auto` chooses batches only where a Batch API is."""
        mode = override or self.mode
        capable = self.provider == "openai" and (
            mode != "auto" or has_batch_api(self.base_url, self.batch_api)
        )
        return choose_mode(mode, pending=pending, threshold=self.batch_threshold,
                           batch_capable=capable)  # fmt: skip

    def batch_client(self) -> BatchClient:
        if self.provider != "openai" or not self.api_key:
            raise BatchModeUnavailable(
                "batch mode needs the openai provider and OPENAI_API_KEY "
                f"(the provider is {self.provider!r})"
            )
        return BatchClient(api_key=self.api_key, base_url=self.base_url)

    def batch_options(self) -> BatchOptions:
        return BatchOptions(
            model=self.model, dim=self.dim, send_dimensions=self.send_dimensions,
            max_pairs=self.batch_max_pairs, truncate=self.truncate,
            max_attempts=self.max_attempts, poll_interval_s=self.batch_poll_s,
        )  # fmt: skip

    def blocked(self, engine: Engine) -> dict | None:
        """{reason, message, retry_in_s} while a block holds embedding back, else None."""
        circuit = self.build_breaker(engine).snapshot()
        if circuit["blocked"] is None:
            return None
        return circuit["blocked"] | {"retry_in_s": round(circuit["retry_in_s"])}

    def _provider_or_block(self, breaker: CircuitBreaker) -> EmbeddingProvider:
        try:
            return self.build_provider()
        except ProviderConfigError as exc:
            if exc.blocker is not None:
                breaker.block(exc.blocker.value, exc.message)
            raise


def setup_from_settings(settings) -> EmbeddingSetup:
    return EmbeddingSetup(
        provider=settings.embedding_provider,
        model=settings.embedding_model,
        dim=settings.embedding_dim,
        api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
        base_url=settings.openai_base_url,
        rpm=settings.embed_rpm,
        tpm=settings.embed_tpm,
        max_concurrency=settings.embed_max_concurrency,
        batch_size=settings.embed_batch_size,
        timeout_s=settings.embed_timeout_s,
        max_attempts=settings.embed_max_attempts,
        truncate=settings.embed_truncate_long_inputs,
        send_dimensions=settings.embed_send_dimensions,
        blocked_retry_s=settings.embed_blocked_retry_s,
        parked_retry_s=settings.embed_parked_retry_s,
        mode=settings.embed_mode,
        batch_threshold=settings.embed_batch_threshold,
        batch_poll_s=settings.embed_batch_poll_s,
        batch_max_pairs=settings.embed_batch_max_pairs,
        batch_api=settings.embed_batch_api,
        limit_window_s=settings.embed_limit_window_s,
    )
