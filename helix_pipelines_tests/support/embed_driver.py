"""Helpers for the embedding tests, and a child process that embeds pending pairs.

    python -m helix_pipelines_tests.support.embed_driver [--batch-size 8] [--concurrency 2]

The child embeds every pending pair of HELIX_DATABASE_URL through OPENAI_BASE_URL with
OPENAI_API_KEY (dim HELIX_EMBEDDING_DIM) and prints its report as one JSON line; the kill test
SIGKILLs it mid-chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import sqlalchemy as sa

from helix_pipelines.core.circuit_breaker import CircuitBreaker
from helix_pipelines.core.rate_limit import RateLimiter, RateLimits
from helix_pipelines.db.state_store import PostgresStateStore
from helix_pipelines.embedding.base import embedding_text
from helix_pipelines.pipeline.embedding import EmbedReport, embed_pending
from helix_pipelines.pipeline.embedding_setup import LIMITER_NAME, EmbeddingSetup

MODEL = "text-embedding-3-small"


@dataclass
class FakeClock:
    """Wall-clock-like time that only moves when someone sleeps on it: retries and limiter
    waits take no real time, and every wait is recorded."""

    now_s: float = field(default_factory=time.time)
    slept: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self) -> float:
        with self._lock:
            return self.now_s

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now_s += max(seconds, 0.0)


class ScaledClock:
    """Wall-clock-like time running `speed` times faster than real time, shared by the limiter
    and the fake server, so that 60 s rate windows pass in a few real seconds."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self._start = time.time()

    def __call__(self) -> float:
        return self._start + (time.time() - self._start) * self.speed

    def sleep(self, seconds: float) -> None:
        time.sleep(max(seconds, 0.0) / self.speed)


def openai_setup(base_url: str, api_key: str, dim: int, **overrides) -> EmbeddingSetup:
    values = dict(
        provider="openai", model=MODEL, dim=dim, api_key=api_key, base_url=base_url,
        rpm=100_000, tpm=100_000_000, max_concurrency=2, batch_size=8, timeout_s=5.0,
        max_attempts=5, truncate=True, breaker_failures=1000, breaker_recovery_s=30.0,
    )  # fmt: skip
    values.update(overrides)
    return EmbeddingSetup(**values)


@dataclass
class Embedder:
    """embed_pending wired like production, with an injectable clock for limiter and breaker."""

    engine: sa.Engine
    setup: EmbeddingSetup
    clock: FakeClock | ScaledClock | None = None

    def limiter(self) -> RateLimiter:
        limits = RateLimits(self.setup.rpm, self.setup.tpm)
        store = PostgresStateStore(self.engine)
        return RateLimiter(limits, store, LIMITER_NAME, clock=self._now)

    def breaker(self) -> CircuitBreaker:
        return self.setup.build_breaker(self.engine, clock=self._now)

    def run(self, job_id: uuid.UUID | None = None, **option_overrides) -> EmbedReport:
        provider = self.setup.build_provider()
        try:
            return embed_pending(
                self.engine, provider, limiter=self.limiter(), breaker=self.breaker(),
                options=replace(self.setup.options(), **option_overrides), job_id=job_id,
                sleep=self.clock.sleep if self.clock else time.sleep,
            )  # fmt: skip
        finally:
            provider.close()

    def _now(self) -> float:
        return self.clock() if self.clock else time.time()


def insert_job(
    engine: sa.Engine, texts: Iterable[tuple[str, str]], *, status: str = "completed"
) -> tuple[uuid.UUID, str]:
    """An import_job row and its qa_pair rows (all `pending`), without parsing any file."""
    pairs = list(texts)
    job_id = uuid.uuid4()
    key = f"job-{job_id.hex[:12]}"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO import_job (id, partition_key, source_name, status, rows_total, "
                "rows_processed, pairs_created) VALUES (:id, :key, :key, :status, :n, :n, :n)"
            ),
            {"id": job_id, "key": key, "status": status, "n": len(pairs)},
        )
        conn.execute(
            sa.text(
                "INSERT INTO qa_pair (import_job_id, source_row, question, answer, content_hash) "
                "VALUES (:job, :row, :q, :a, md5(:q || :a))"
            ),
            [{"job": job_id, "row": i + 1, "q": q, "a": a} for i, (q, a) in enumerate(pairs)],
        )
    return job_id, key


def sample_pairs(count: int, tag: str = "") -> list[tuple[str, str]]:
    return [
        (f"{tag}question {i}: how do I do thing {i}?", f"answer {i}: like so.")
        for i in range(count)
    ]


@dataclass(frozen=True)
class StoredPair:
    id: int
    question: str
    answer: str
    status: str
    attempts: int
    error: str | None
    model: str | None
    vector: np.ndarray | None


def stored_pairs(engine: sa.Engine, job_id: uuid.UUID | None = None) -> list[StoredPair]:
    where = "WHERE import_job_id = :job" if job_id else ""
    sql = (
        "SELECT id, question, answer, embedding_status, embedding_attempts, embedding_error, "
        f"embedding_model, embedding::text FROM qa_pair {where} ORDER BY id"
    )
    with engine.connect() as conn:
        rows = conn.execute(sa.text(sql), {"job": job_id}).all()
    return [StoredPair(*row[:7], _parse_vector(row[7])) for row in rows]


def _parse_vector(text: str | None) -> np.ndarray | None:
    if text is None:
        return None
    return np.array(json.loads(text), dtype=np.float32)


def mismatched_vectors(pairs: Iterable[StoredPair], dim: int) -> list[int]:
    """Ids of completed pairs whose vector is not the fake server's vector of their own text."""
    from helix_pipelines_tests.support.fake_openai import FakeOpenAI

    wrong = []
    for pair in pairs:
        if pair.status != "completed":
            continue
        expected = FakeOpenAI.vector_for(embedding_text(pair.question, pair.answer), dim)
        if pair.vector is None or not np.allclose(pair.vector, expected, atol=1e-6):
            wrong.append(pair.id)
    return wrong


def status_counts(engine: sa.Engine, job_id: uuid.UUID | None = None) -> dict[str, int]:
    where = "WHERE import_job_id = :job" if job_id else ""
    sql = f"SELECT embedding_status, count(*) FROM qa_pair {where} GROUP BY 1"
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(sql), {"job": job_id}).all())


def main(argv: list[str] | None = None) -> None:
    from helix_pipelines.db.engine import create_app_engine, with_driver

    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args(argv)
    engine = create_app_engine(with_driver(os.environ["HELIX_DATABASE_URL"], "psycopg"))
    setup = openai_setup(
        os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"],
        int(os.environ["HELIX_EMBEDDING_DIM"]), batch_size=args.batch_size,
        max_concurrency=args.concurrency,
    )  # fmt: skip
    report = Embedder(engine, setup).run()
    print(json.dumps({"embedded": report.embedded, "pending": report.pending}), flush=True)


if __name__ == "__main__":
    main()
