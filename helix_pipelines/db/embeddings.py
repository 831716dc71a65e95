"""Claiming pairs to embed and writing their vectors back in bulk.

A `failed` pair is one of two kinds, told apart by its embedding_error:
- the API refused the input itself (HTTP 400 for that input, or too long to send): the API's
  message, as it came; it stays failed until an operator re-queues it (`requeue_failed`);
- parked: its attempts ran out on transient errors (429, 5xx, timeouts, dropped connections):
  PARKED_PREFIX then the last error; `requeue_parked` returns these to pending once the API is
  healthy again (pipeline.embedding.release_parked decides when).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa
from pgvector.psycopg import register_vector
from sqlalchemy.engine import Connection, Engine

PARKED_PREFIX = "retries_exhausted: "
# Statuses of an import whose pairs must not be claimed by a new embedding run.
NOT_EMBEDDABLE_JOB_STATUSES = ("rolling_back", "rolled_back")


@dataclass(frozen=True)
class ClaimedPair:
    id: int
    question: str
    answer: str


def claim_pending(conn: Connection, job_id: uuid.UUID | None, limit: int) -> list[ClaimedPair]:
    """Lock up to `limit` pending pairs for this transaction; others' claims are skipped."""
    job_filter = "AND import_job_id = :job" if job_id else ""
    rows = conn.execute(
        sa.text(
            "SELECT id, question, answer FROM qa_pair "
            f"WHERE embedding_status = 'pending' AND retired_at IS NULL {job_filter} "
            "ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED"
        ),
        {"job": job_id, "limit": limit},
    )
    return [ClaimedPair(*row) for row in rows]


@dataclass
class ChunkOutcome:
    """What embedding a claimed chunk came to, by pair id: the input of write_results."""

    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    truncated: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)  # the input itself is bad
    retry_later: dict[int, str] = field(default_factory=dict)  # transient, retries exhausted

    def merge(self, other: ChunkOutcome) -> None:
        self.vectors.update(other.vectors)
        self.failed.update(other.failed)
        self.retry_later.update(other.retry_later)


def write_results(conn: Connection, outcome: ChunkOutcome, *, model: str, max_attempts: int):
    """Vectors, bad inputs and transient failures of one chunk; returns how many pairs were
    parked (their attempts ran out)."""
    _write_vectors(conn, outcome, model)
    _write_invalid(conn, outcome.failed)
    return _write_transient(conn, outcome.retry_later, max_attempts)


def _write_vectors(conn: Connection, outcome: ChunkOutcome, model: str) -> None:
    """COPY (binary) into a staging table, then one UPDATE ... FROM: the fast way to set many
    vectors (STACK.md)."""
    if not outcome.vectors:
        return
    raw = conn.connection.driver_connection
    register_vector(raw)
    conn.exec_driver_sql(
        "CREATE TEMP TABLE IF NOT EXISTS embedding_staging "
        "(id bigint, embedding vector, truncated boolean) ON COMMIT DELETE ROWS"
    )
    with raw.cursor() as cursor:
        copy_sql = (
            "COPY embedding_staging (id, embedding, truncated) FROM STDIN WITH (FORMAT BINARY)"
        )
        with cursor.copy(copy_sql) as copy:
            copy.set_types(["int8", "vector", "bool"])
            for key, vector in outcome.vectors.items():
                copy.write_row((key, vector, key in outcome.truncated))
    conn.execute(
        sa.text(
            "UPDATE qa_pair q SET embedding = s.embedding, embedding_status = 'completed', "
            "embedding_model = :model, embedded_at = now(), embedding_error = NULL, "
            "embedding_truncated = s.truncated, embedding_attempts = q.embedding_attempts + 1 "
            "FROM embedding_staging s WHERE q.id = s.id"
        ),
        {"model": model},
    )


def _write_invalid(conn: Connection, errors: dict[int, str]) -> None:
    """A bad input fails at once, with the API's message."""
    if not errors:
        return
    conn.execute(
        sa.text(
            "UPDATE qa_pair SET embedding_status = 'failed', embedding_error = :error, "
            "embedding_attempts = embedding_attempts + 1 WHERE id = :id"
        ),
        [{"id": key, "error": message} for key, message in errors.items()],
    )


def _write_transient(conn: Connection, errors: dict[int, str], max_attempts: int) -> int:
    """A transient failure counts an attempt; the pair is parked once its attempts are used."""
    if not errors:
        return 0
    statuses = conn.scalars(
        sa.text(
            "UPDATE qa_pair q SET embedding_attempts = q.embedding_attempts + 1, "
            "embedding_status = CASE WHEN q.embedding_attempts + 1 >= :max THEN 'failed' "
            "ELSE 'pending' END, "
            "embedding_error = CASE WHEN q.embedding_attempts + 1 >= :max "
            "THEN :prefix || f.error ELSE f.error END "
            "FROM unnest(CAST(:ids AS bigint[]), CAST(:errors AS text[])) AS f(id, error) "
            "WHERE q.id = f.id RETURNING q.embedding_status"
        ),
        {"ids": list(errors), "errors": list(errors.values()), "max": max_attempts,
         "prefix": PARKED_PREFIX},
    ).all()  # fmt: skip
    return sum(status == "failed" for status in statuses)


def requeue_parked(engine: Engine) -> int:
    """Parked pairs (every import's) back to pending with fresh attempts."""
    return _requeue(engine, "AND starts_with(embedding_error, :prefix)", prefix=PARKED_PREFIX)


def requeue_failed(engine: Engine, job_id: uuid.UUID | None = None) -> int:
    """Every failed pair (of one import, or all) back to pending: the operator's retry."""
    return _requeue(engine, "AND import_job_id = :job" if job_id else "", job=job_id)


def _requeue(engine: Engine, condition: str, **params) -> int:
    with engine.begin() as conn:
        return conn.execute(
            sa.text(
                "UPDATE qa_pair SET embedding_status = 'pending', embedding_attempts = 0, "
                f"embedding_error = NULL WHERE embedding_status = 'failed' {condition}"
            ),
            params,
        ).rowcount


def reset_other_models(engine: Engine, model: str, job_id: uuid.UUID | None) -> int:
    """Pairs embedded with another model go back to `pending` (their old vector stays usable
    until the new one replaces it)."""
    job_filter = "AND import_job_id = :job" if job_id else ""
    with engine.begin() as conn:
        return conn.execute(
            sa.text(
                "UPDATE qa_pair SET embedding_status = 'pending', embedding_attempts = 0 "
                f"WHERE embedding_status = 'completed' AND embedding_model <> :model {job_filter}"
            ),
            {"model": model, "job": job_id},
        ).rowcount


def count_pending(engine: Engine, job_id: uuid.UUID | None) -> int:
    job_filter = "AND import_job_id = :job" if job_id else ""
    with engine.connect() as conn:
        return conn.scalar(
            sa.text(
                "SELECT count(*) FROM qa_pair WHERE embedding_status = 'pending' "
                f"AND retired_at IS NULL {job_filter}"
            ),
            {"job": job_id},
        )


def count_parked(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(
            sa.text(
                "SELECT count(*) FROM qa_pair WHERE embedding_status = 'failed' "
                "AND starts_with(embedding_error, :prefix)"
            ),
            {"prefix": PARKED_PREFIX},
        )


def partitions_to_embed(engine: Engine, model: str) -> list[str]:
    """Partition keys of imports with pending pairs, or with pairs embedded by another model
    than the configured one, oldest first, whatever the import's status (an import that failed
    or died after committing pairs still has them embedded), unless it is being rolled back."""
    with engine.connect() as conn:
        return list(
            conn.scalars(
                sa.text(
                    "SELECT j.partition_key FROM import_job j "
                    "WHERE j.status <> ALL(:excluded) AND EXISTS (SELECT 1 FROM qa_pair q "
                    "WHERE q.import_job_id = j.id AND q.retired_at IS NULL AND "
                    "(q.embedding_status = 'pending' OR "
                    "(q.embedding_status = 'completed' AND q.embedding_model <> :model))) "
                    "ORDER BY j.created_at"
                ),
                {"model": model, "excluded": list(NOT_EMBEDDABLE_JOB_STATUSES)},
            )
        )


@dataclass(frozen=True)
class Coverage:
    total: int
    completed: int
    failed: int
    pending: int
    top_errors: list[tuple[str, int]]
    wrong_dimension: int
    batched: int = 0  # in a live Batch API batch
    oldest_batched_age_s: float | None = None

    @property
    def ratio(self) -> float:
        return self.completed / self.total if self.total else 1.0


def coverage(engine: Engine, job_id: uuid.UUID, dim: int) -> Coverage:
    with engine.connect() as conn:
        counts = dict(
            conn.execute(
                sa.text(
                    "SELECT embedding_status, count(*) FROM qa_pair WHERE import_job_id = :job "
                    "AND retired_at IS NULL GROUP BY embedding_status"
                ),
                {"job": job_id},
            ).all()
        )
        top_errors = conn.execute(
            sa.text(
                "SELECT left(embedding_error, 200) AS reason, count(*) AS n FROM qa_pair "
                "WHERE import_job_id = :job AND embedding_status = 'failed' AND retired_at IS NULL "
                "GROUP BY 1 ORDER BY 2 DESC LIMIT 5"
            ),
            {"job": job_id},
        ).all()
        wrong_dimension = conn.scalar(
            sa.text(
                "SELECT count(*) FROM qa_pair WHERE import_job_id = :job "
                "AND embedding IS NOT NULL AND vector_dims(embedding) <> :dim"
            ),
            {"job": job_id, "dim": dim},
        )
        oldest_batched_age_s = conn.scalar(
            sa.text(
                "SELECT extract(epoch FROM now() - min(b.created_at)) FROM embedding_batch_pair l "
                "JOIN embedding_batch b ON b.id = l.batch_id JOIN qa_pair q ON q.id = l.qa_pair_id "
                "WHERE q.import_job_id = :job AND q.embedding_status = 'batched' "
                "AND l.outcome IS NULL"
            ),
            {"job": job_id},
        )
    return Coverage(
        total=sum(counts.values()),
        completed=counts.get("completed", 0),
        failed=counts.get("failed", 0),
        pending=counts.get("pending", 0),
        top_errors=[(r.reason, r.n) for r in top_errors],
        wrong_dimension=wrong_dimension,
        batched=counts.get("batched", 0),
        oldest_batched_age_s=float(oldest_batched_age_s) if oldest_batched_age_s else None,
    )
