"""embed_pending(): claim pending pairs, embed them under the shared limiter and breaker, write
their vectors.

Pairs are claimed with `FOR UPDATE SKIP LOCKED` in a transaction that stays open while the
chunk is embedded and commits the results: a run killed at any instant releases its claim, and
its pairs are simply `pending` again. Vectors are matched to pairs by key from claim to write,
never by position.

What a failure costs a pair:
- the API refused the input itself (400): the pair fails at once, with the API's message;
- transient (429, 5xx, timeouts, dropped connections): an attempt; once its attempts are used
  the pair is parked (`failed`, db.embeddings.PARKED_PREFIX), and `release_parked` returns it to
  pending when the circuit has closed after having been open since, or after a long back-off;
- the circuit is open, or our own limiter cannot grant in time: nothing, the pair stays pending;
- a refusal of the account or configuration (core.errors.Blocker: quota, key, model,
  `dimensions`): nothing; the circuit is blocked with the reason, the run stops, and the error
  propagates once the chunk's results are written.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.engine import Engine

from helix_pipelines.core.batching import EmbedItem, plan_batches, prepare_items
from helix_pipelines.core.circuit_breaker import CircuitBreaker, CircuitOpenError
from helix_pipelines.core.errors import is_transient
from helix_pipelines.core.rate_limit import RateLimiter, RateLimitTimeout
from helix_pipelines.core.retry import RetryBudget, retrying
from helix_pipelines.db import embeddings as store
from helix_pipelines.db.embeddings import ChunkOutcome
from helix_pipelines.embedding.base import (
    EmbeddingError,
    EmbeddingProvider,
    InvalidInputError,
    ProviderConfigError,
    RateLimitedError,
    TransientEmbeddingError,
    embedding_text,
)


@dataclass(frozen=True)
class EmbedOptions:
    batch_size: int = 256
    max_concurrency: int = 4
    max_attempts: int = 5
    truncate: bool = True
    max_input_tokens: int = 8192
    max_request_tokens: int = 300_000
    batch_deadline_s: float = 180.0
    retry: RetryBudget = field(
        default_factory=lambda: RetryBudget(attempts=6, initial_s=0.5, max_s=30.0, deadline_s=120.0)
    )
    usd_per_million_tokens: float = 0.02

    @property
    def claim_size(self) -> int:
        return self.batch_size * self.max_concurrency * 2


class EmbedObserver:
    """Hooks for metrics; the default does nothing."""

    def request(self, outcome: str, latency_s: float, inputs: int) -> None: ...

    def limiter_wait(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class EmbedProgress:
    """After each chunk, and whenever the run starts or stops waiting."""

    embedded: int  # by this run
    failed: int
    total: int  # pending when the run began (plus what it released from parking)
    waiting: str | None = None  # "rate limit", "retrying after an error", "circuit open"


# on_progress(progress): for progress bars and logs; called from the embedding threads too.
EmbedProgressObserver = Callable[[EmbedProgress], None]


@dataclass
class EmbedReport:
    embedded: int = 0
    failed: int = 0
    pending: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    tokens: int = 0
    latencies_s: list[float] = field(default_factory=list)
    circuit_open: bool = False
    stopped_reason: str | None = None
    reset_for_model: int = 0
    parked: int = 0  # attempts used up on transient errors: failed until released
    released: int = 0  # parked pairs returned to pending by this run
    usd_per_million_tokens: float = 0.0

    def latency_percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q)) if self.latencies_s else 0.0

    @property
    def cost_usd(self) -> float:
        return self.tokens * self.usd_per_million_tokens / 1_000_000


def embed_pending(
    engine: Engine,
    provider: EmbeddingProvider,
    *,
    limiter: RateLimiter,
    breaker: CircuitBreaker,
    options: EmbedOptions | None = None,
    job_id: uuid.UUID | None = None,
    observer: EmbedObserver | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_progress: EmbedProgressObserver | None = None,
) -> EmbedReport:
    """Embed the pending pairs of one import (or of all when `job_id` is None) until none is
    left, the circuit opens, or a chunk leaves pairs for later."""
    options = options or EmbedOptions()
    report = EmbedReport(usd_per_million_tokens=options.usd_per_million_tokens)
    report.reset_for_model = store.reset_other_models(engine, provider.model, job_id)
    report.released = release_parked(engine, breaker)
    progress = _ProgressNotes(report, store.count_pending(engine, job_id), on_progress)
    embedder = _ChunkEmbedder(
        provider, limiter, breaker, options, report, observer or EmbedObserver(), sleep
    )
    embedder.progress = progress
    progress.note()
    while report.stopped_reason is None and _embed_one_chunk(engine, embedder, job_id):
        progress.note(in_chunk=0)
    progress.note("circuit open" if report.circuit_open else None, in_chunk=0)
    report.released += release_parked(engine, breaker)
    report.pending = store.count_pending(engine, job_id)
    if embedder.blocked is not None:
        raise embedder.blocked
    return report


def _embed_one_chunk(engine: Engine, embedder: _ChunkEmbedder, job_id) -> bool:
    """Claim, embed and write one chunk; False when nothing was left to claim."""
    report, options = embedder.report, embedder.options
    with engine.begin() as conn:
        claimed = store.claim_pending(conn, job_id, options.claim_size)
        if not claimed:
            return False
        outcome = embedder.embed(claimed)
        parked = store.write_results(
            conn, outcome, model=embedder.provider.model, max_attempts=options.max_attempts
        )
    if parked:
        embedder.breaker.note_parked()
    report.embedded += len(outcome.vectors)
    report.failed += len(outcome.failed) + parked
    report.parked += parked
    if outcome.retry_later and report.stopped_reason is None:
        report.stopped_reason = "some requests kept failing; the rest waits for a later run"
    return True


def release_parked(engine: Engine, breaker: CircuitBreaker) -> int:
    """Parked pairs back to pending when the breaker says the API is healthy again (it closed
    after having been open since they were parked, or a probe is due, or the parked back-off
    passed: core.circuit_breaker.release_due)."""
    checked_at = breaker.release_due()
    if checked_at is None:
        return 0
    released = store.requeue_parked(engine)
    breaker.released(checked_at)
    return released


def retry_failed(engine: Engine, job_id: uuid.UUID | None = None) -> int:
    """The operator's re-queue: every failed pair (of one import, or all) back to pending."""
    return store.requeue_failed(engine, job_id)


class _ChunkEmbedder:
    def __init__(self, provider, limiter, breaker, options, report, observer, sleep):
        self.provider, self.limiter, self.breaker = provider, limiter, breaker
        self.options, self.report, self.observer, self.sleep = options, report, observer, sleep
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.blocked: ProviderConfigError | None = None
        self.progress: _ProgressNotes | None = None

    def _sleep_for(self, reason: str) -> Callable[[float], None]:
        """The sleep to wait with, telling the progress observer why while it lasts."""
        if self.progress is None:
            return self.sleep

        def sleep(seconds: float) -> None:
            self.progress.note(reason)
            try:
                self.sleep(seconds)
            finally:
                self.progress.note()

        return sleep

    def embed(self, claimed: Sequence[store.ClaimedPair]) -> ChunkOutcome:
        outcome = ChunkOutcome()
        rows = [(p.id, embedding_text(p.question, p.answer)) for p in claimed]
        items, rejected = prepare_items(rows, self.options.max_input_tokens, self.options.truncate)
        outcome.failed.update(dict(rejected))
        outcome.truncated.update(item.key for item in items if item.truncated)
        batches = plan_batches(items, self.options.batch_size, self.options.max_request_tokens)
        with ThreadPoolExecutor(self.options.max_concurrency, "helix-embed") as pool:
            try:
                for result in pool.map(self._embed_batch, batches):
                    outcome.merge(result)
                    if self.progress is not None:  # vectors in hand, written with the chunk
                        self.progress.note(in_chunk=len(outcome.vectors) + len(outcome.failed))
            except BaseException:
                # Ctrl-C, say: the batches not sent yet return untouched, so leaving the pool
                # waits for the requests in flight only, not for the whole chunk.
                self._stop.set()
                raise
        return outcome

    def _embed_batch(self, items: list[EmbedItem]) -> ChunkOutcome:
        if self._stop.is_set():
            return ChunkOutcome()  # untouched: still pending, no attempt counted
        try:
            vectors = self._call_with_retries(items)
        except InvalidInputError as exc:
            return self._isolate_bad_input(items, exc)
        except CircuitOpenError:
            self._halt("the circuit breaker is open: the embeddings API looks down")
            with self._lock:
                self.report.circuit_open = True
            return ChunkOutcome()
        except RateLimitTimeout:
            # Our own limiter held the batch past its deadline: nothing was sent and nothing is
            # wrong with the pairs, so they stay pending without an attempt (a rate limit must
            # never fail a pair); a later run picks them up.
            self._halt("rate limit: the limiter's next grant lies past the batch deadline")
            return ChunkOutcome()
        except ProviderConfigError as exc:
            # The account or the configuration, not the pairs: they stay pending, no attempt.
            self._halt(f"embeddings are blocked: {exc.message}")
            with self._lock:
                self.blocked = self.blocked or exc
            return ChunkOutcome()
        except Exception as exc:
            if not is_transient(exc):
                raise
            return ChunkOutcome(retry_later={item.key: _describe(exc) for item in items})
        return ChunkOutcome(vectors={item.key: vectors[i] for i, item in enumerate(items)})

    def _isolate_bad_input(self, items: list[EmbedItem], exc: InvalidInputError) -> ChunkOutcome:
        """One bad input fails a whole request: split until it stands alone."""
        if len(items) == 1:
            return ChunkOutcome(failed={items[0].key: exc.message})
        middle = len(items) // 2
        outcome = self._embed_batch(items[:middle])
        outcome.merge(self._embed_batch(items[middle:]))
        return outcome

    def _call_with_retries(self, items: list[EmbedItem]) -> np.ndarray:
        deadline = self.limiter.now() + self.options.batch_deadline_s
        for attempt in retrying(
            self.options.retry,
            sleep=self._sleep_for("retrying after an error"),
            retry_if=_retryable,
            on_retry=self._count_retry,
        ):
            with attempt:
                return self._call_once(items, deadline)
        raise AssertionError("unreachable: retrying re-raises")

    def _call_once(self, items: list[EmbedItem], deadline: float) -> np.ndarray:
        self.breaker.before_call()
        tokens = sum(item.tokens for item in items)
        waited = self.limiter.acquire(
            tokens, sleep=self._sleep_for("rate limit"), deadline=deadline
        )
        self.observer.limiter_wait(waited)
        started = time.monotonic()  # failed and timed-out attempts count in latency too
        try:
            result = self.provider.embed([item.text for item in items])
        except RateLimitedError as exc:
            self._record_request("rate_limited", time.monotonic() - started, len(items))
            if exc.retry_after_s:
                self.limiter.pause_for(exc.retry_after_s)
            raise
        except ProviderConfigError as exc:
            if exc.blocker is not None:
                self.breaker.block(exc.blocker.value, exc.message)
            self._record_request("blocked", 0.0, len(items))
            raise
        except InvalidInputError:
            self.breaker.record_success()  # the service answered: it is up
            self._record_request("invalid_input", time.monotonic() - started, len(items))
            raise
        except EmbeddingError:
            self.breaker.record_failure()
            self._record_request("error", time.monotonic() - started, len(items))
            raise
        self.breaker.record_success()
        if result.rate_limit is not None:
            info = result.rate_limit
            self.limiter.observe(
                info.remaining_requests,
                info.remaining_tokens,
                info.reset_requests_s,
                info.reset_tokens_s,
            )
        _check_vectors(result.vectors, len(items), self.provider.dim)
        self._record_request("success", result.latency_s, len(items), result.tokens)
        return result.vectors

    def _record_request(self, outcome: str, latency_s: float, inputs: int, tokens: int = 0):
        with self._lock:
            self.report.requests += 1
            self.report.rate_limited += outcome == "rate_limited"
            self.report.tokens += tokens
            if outcome == "success":
                self.report.latencies_s.append(latency_s)
        self.observer.request(outcome, latency_s, inputs)

    def _count_retry(self, error: BaseException, attempt: int, wait_s: float) -> None:
        with self._lock:
            self.report.retries += 1

    def _halt(self, reason: str) -> None:
        self._stop.set()
        with self._lock:
            self.report.stopped_reason = self.report.stopped_reason or reason


class _ProgressNotes:
    def __init__(self, report: EmbedReport, pending: int, on_progress):
        self.report, self.total, self.on_progress = report, pending, on_progress
        self.in_chunk = 0

    def note(self, waiting: str | None = None, in_chunk: int | None = None) -> None:
        """`in_chunk`: pairs of the chunk in flight already answered (embedded or failed); 0
        once the chunk is written (the report counts them then)."""
        if in_chunk is not None:
            self.in_chunk = in_chunk
        if self.on_progress is not None:
            r = self.report
            embedded = min(r.embedded + self.in_chunk, self.total - r.failed)
            self.on_progress(EmbedProgress(embedded, r.failed, self.total, waiting))


def _retryable(exc: BaseException) -> bool:
    # An open circuit is transient for the deployment, but this run stops rather than waits.
    return not isinstance(exc, CircuitOpenError) and is_transient(exc)


def _check_vectors(vectors: np.ndarray, count: int, dim: int) -> None:
    """The provider validated the response; a vector must still never reach the wrong row."""
    if vectors.shape != (count, dim) or not np.isfinite(vectors).all():
        raise TransientEmbeddingError(
            f"malformed response: got vectors of shape {vectors.shape}, expected ({count}, {dim})"
        )


def _describe(exc: BaseException) -> str:
    return (getattr(exc, "message", None) or str(exc) or type(exc).__name__)[:1000]
