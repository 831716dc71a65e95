"""`embedding_batch` and `embedding_batch_pair`: the Batch API's work, as the database sees it.

States of a batch (a row is written before each remote call, so a crash leaves the intent):

    building ──> uploading ──> creating ──> validating / in_progress / finalizing / cancelling
        (pairs reserved)  (upload sent)  (create sent)          │ (polled)
                                                                ▼
                                    completed | expired | failed | cancelled ──> collected

A batch is worked on by one process at a time: a session-level advisory lock per batch
(`batch_lock`), released by PostgreSQL when its holder dies, so a batch whose lock is free and
whose state is before `validating` was abandoned and may be resumed.
"""

from __future__ import annotations

import contextlib
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from helix_pipelines.db.schema import embedding_batch

UNSUBMITTED = ("building", "uploading", "creating")
LIVE_REMOTE = ("validating", "in_progress", "finalizing", "cancelling")
FINISHED_REMOTE = ("completed", "expired", "failed", "cancelled")
LOCK_NAMESPACE = 72110014


@dataclass(frozen=True)
class BatchRow:
    id: uuid.UUID
    state: str
    model: str
    dim: int
    import_job_id: uuid.UUID | None
    input_file_id: str | None
    remote_batch_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    request_count: int
    completed_count: int
    failed_count: int
    token_estimate: int
    tokens_used: int | None
    errors: list | None
    created_at: datetime
    submitted_at: datetime | None
    expires_at: datetime | None
    finished_at: datetime | None
    collected_at: datetime | None
    polled_at: datetime | None

    @property
    def live(self) -> bool:
        return self.state not in ("collected",)


@dataclass(frozen=True)
class BatchPair:
    id: int
    question: str
    answer: str
    status: str
    text_hash: str
    truncated: bool


def reserve(
    conn: Connection,
    *,
    model: str,
    dim: int,
    job_id: uuid.UUID | None,
    pairs: list[tuple[int, str, bool]],
    token_estimate: int,
) -> uuid.UUID:
    """A new batch in `building` carrying `pairs` (id, text hash, truncated), which become
    `batched`: from this commit on no synchronous run claims them."""
    batch_id = uuid.uuid4()
    conn.execute(
        sa.text(
            "INSERT INTO embedding_batch (id, state, model, dim, import_job_id, request_count, "
            "token_estimate) VALUES (:id, 'building', :model, :dim, :job, :n, :tokens)"
        ),
        {"id": batch_id, "model": model, "dim": dim, "job": job_id, "n": len(pairs),
         "tokens": token_estimate},
    )  # fmt: skip
    conn.execute(
        sa.text(
            "INSERT INTO embedding_batch_pair (batch_id, qa_pair_id, text_hash, truncated) "
            "SELECT :batch, * FROM unnest(CAST(:ids AS bigint[]), CAST(:hashes AS text[]), "
            "CAST(:truncated AS boolean[]))"
        ),
        {"batch": batch_id, "ids": [p[0] for p in pairs], "hashes": [p[1] for p in pairs],
         "truncated": [p[2] for p in pairs]},
    )  # fmt: skip
    conn.execute(
        sa.text(
            "UPDATE qa_pair SET embedding_status = 'batched' WHERE id = ANY(CAST(:ids AS bigint[]))"
        ),
        {"ids": [p[0] for p in pairs]},
    )
    return batch_id


def update(engine_or_conn: Engine | Connection, batch_id: uuid.UUID, **values) -> None:
    statement = sa.update(embedding_batch).where(embedding_batch.c.id == batch_id).values(**values)
    if isinstance(engine_or_conn, Engine):
        with engine_or_conn.begin() as conn:
            conn.execute(statement)
    else:
        engine_or_conn.execute(statement)


def get(engine: Engine, batch_id: uuid.UUID) -> BatchRow:
    with engine.connect() as conn:
        row = conn.execute(sa.select(embedding_batch).where(embedding_batch.c.id == batch_id)).one()
    return BatchRow(**row._mapping)


def list_batches(
    engine: Engine, states: tuple[str, ...] | None = None, limit: int = 1000
) -> list[BatchRow]:
    query = sa.select(embedding_batch).order_by(embedding_batch.c.created_at).limit(limit)
    if states is not None:
        query = query.where(embedding_batch.c.state.in_(states))
    with engine.connect() as conn:
        return [BatchRow(**row._mapping) for row in conn.execute(query)]


def find(engine: Engine, prefix: str) -> list[BatchRow]:
    """Batches whose local or remote id starts with `prefix` (the CLI's way to name one)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(embedding_batch).where(
                sa.or_(
                    sa.cast(embedding_batch.c.id, sa.Text).startswith(prefix),
                    embedding_batch.c.remote_batch_id.startswith(prefix),
                )
            )
        )
        return [BatchRow(**row._mapping) for row in rows]


def open_pairs(conn: Connection, batch_id: uuid.UUID, *, lock: bool = False) -> list[BatchPair]:
    """The batch's pairs not yet settled by a collection, with their current text."""
    rows = conn.execute(
        sa.text(
            "SELECT q.id, q.question, q.answer, q.embedding_status, l.text_hash, l.truncated "
            "FROM embedding_batch_pair l JOIN qa_pair q ON q.id = l.qa_pair_id "
            "WHERE l.batch_id = :batch AND l.outcome IS NULL ORDER BY q.id"
            + (" FOR UPDATE OF q" if lock else "")
        ),
        {"batch": batch_id},
    )
    return [BatchPair(*row) for row in rows]


def settle(conn: Connection, batch_id: uuid.UUID, outcomes: dict[int, str]) -> None:
    if not outcomes:
        return
    conn.execute(
        sa.text(
            "UPDATE embedding_batch_pair l SET outcome = f.outcome FROM unnest("
            "CAST(:ids AS bigint[]), CAST(:outcomes AS text[])) AS f(id, outcome) "
            "WHERE l.batch_id = :batch AND l.qa_pair_id = f.id"
        ),
        {"batch": batch_id, "ids": list(outcomes), "outcomes": list(outcomes.values())},
    )


def return_to_pending(conn: Connection, pair_ids: list[int]) -> int:
    """Pairs the batch did not finish (expired, cancelled, text changed): pending again, with
    no attempt counted: nothing was wrong with them."""
    if not pair_ids:
        return 0
    return conn.execute(
        sa.text(
            "UPDATE qa_pair SET embedding_status = 'pending' "
            "WHERE id = ANY(CAST(:ids AS bigint[])) AND embedding_status = 'batched'"
        ),
        {"ids": pair_ids},
    ).rowcount


def jobs_of(conn: Connection, pair_ids: list[int]) -> set[uuid.UUID]:
    """The imports these pairs belong to (their partitions' metadata changes)."""
    if not pair_ids:
        return set()
    query = "SELECT DISTINCT import_job_id FROM qa_pair WHERE id = ANY(CAST(:ids AS bigint[]))"
    return set(conn.scalars(sa.text(query), {"ids": pair_ids}))


@contextlib.contextmanager
def batch_lock(engine: Engine, batch_id: uuid.UUID) -> Iterator[bool]:
    """True while this process alone works on the batch; False when another holds it."""
    key = zlib.crc32(batch_id.bytes)
    with engine.connect() as conn:
        got = conn.scalar(
            sa.text("SELECT pg_try_advisory_lock(:ns, :key)"),
            {"ns": LOCK_NAMESPACE, "key": key - 2**31},
        )
        conn.commit()
        try:
            yield bool(got)
        finally:
            if got:
                conn.execute(
                    sa.text("SELECT pg_advisory_unlock(:ns, :key)"),
                    {"ns": LOCK_NAMESPACE, "key": key - 2**31},
                )
                conn.commit()


@dataclass(frozen=True)
class BatchSummary:
    in_flight: int  # batches not yet collected
    pairs_waiting: int  # pairs in them
    oldest_age_s: float | None  # since the oldest of them was created


def summary(engine: Engine, job_id: uuid.UUID | None = None) -> BatchSummary:
    job_filter = "AND q.import_job_id = :job" if job_id else ""
    with engine.connect() as conn:
        in_flight = conn.scalar(
            sa.text("SELECT count(*) FROM embedding_batch WHERE state <> 'collected'")
        )
        waiting, age = conn.execute(
            sa.text(
                "SELECT count(*), extract(epoch FROM now() - min(b.created_at)) "
                "FROM embedding_batch_pair l JOIN embedding_batch b ON b.id = l.batch_id "
                "JOIN qa_pair q ON q.id = l.qa_pair_id "
                f"WHERE b.state <> 'collected' AND l.outcome IS NULL {job_filter}"
            ),
            {"job": job_id},
        ).one()
    return BatchSummary(in_flight, waiting, float(age) if age is not None else None)
