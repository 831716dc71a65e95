"""Import jobs: registration, ownership, status transitions, recovery and rollback.

Every transition runs in a short transaction holding the job's row lock, so two runs of one
partition can never both believe they own it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Engine

from helix_pipelines.core.naming import partition_key_for
from helix_pipelines.core.redact import redact
from helix_pipelines.db.schema import FINISHED_JOB_STATUSES, import_job, import_row_error, qa_pair

UNFINISHED = ("pending", "processing")


class JobBusy(RuntimeError):
    """Another live run owns the job."""


class JobNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Job:
    id: uuid.UUID
    partition_key: str
    source_name: str
    source_path: str | None
    source_sha256: str | None
    format: str | None
    status: str
    rows_total: int
    rows_processed: int
    pairs_created: int
    duplicates_skipped: int
    row_errors: int
    checkpoint_data: dict | None
    options: dict
    attempts: int
    last_error: str | None
    dagster_run_id: str | None
    created_at: datetime
    started_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: sa.Row) -> Job:
        return cls(**row._mapping)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_JOB_STATUSES

    @property
    def last_source_row(self) -> int:
        return int((self.checkpoint_data or {}).get("last_source_row", 0))


def get_job(conn: Connection | Engine, ref: str | uuid.UUID, *, lock: bool = False) -> Job:
    """A job by id or partition key; `lock` takes its row lock (inside a transaction)."""
    if isinstance(conn, Engine):
        with conn.connect() as connection:
            return get_job(connection, ref)
    query = sa.select(import_job).where(_ref_clause(ref))
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise JobNotFound(f"no import job {ref}")
    return Job.from_row(row)


def list_jobs(engine: Engine, limit: int = 100) -> list[Job]:
    query = sa.select(import_job).order_by(import_job.c.created_at.desc()).limit(limit)
    with engine.connect() as conn:
        return [Job.from_row(r) for r in conn.execute(query)]


def register_job(
    engine: Engine,
    *,
    source_name: str,
    source_path: str,
    sha256: str,
    options: dict | None = None,
) -> tuple[Job, bool]:
    """The job for this content: an unfinished one when it exists (same content dropped again
    starts nothing new), else a new `pending` job. Returns (job, created)."""
    with engine.begin() as conn:
        # Serialise registrations of the same content across processes.
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(sha256))))
        same_content = conn.execute(
            sa.select(import_job).where(import_job.c.source_sha256 == sha256)
        ).all()
        for row in same_content:
            if row.status in UNFINISHED:
                return Job.from_row(row), False
        key = partition_key_for(source_name, sha256, generation=len(same_content) + 1)
        row = conn.execute(
            sa.insert(import_job)
            .values(
                id=uuid.uuid4(),
                partition_key=key,
                source_name=source_name,
                source_path=source_path,
                source_sha256=sha256,
                status="pending",
                options=options or {},
            )
            .returning(*import_job.c)
        ).one()
        return Job.from_row(row), True


def start_job(engine: Engine, ref: str | uuid.UUID, run_id: str, *, stale_after_s: float) -> Job:
    """Take ownership for `run_id` and mark the job `processing`. A job owned by another run
    whose heartbeat is fresh is refused; a finished job is returned unchanged."""
    with engine.begin() as conn:
        job = get_job(conn, ref, lock=True)
        if job.finished:
            return job
        if job.status == "processing" and job.dagster_run_id not in (None, run_id):
            age = conn.scalar(
                sa.select(sa.func.now() - import_job.c.heartbeat_at).where(
                    import_job.c.id == job.id
                )
            )
            if age is not None and age.total_seconds() < stale_after_s:
                raise JobBusy(
                    f"import {job.partition_key} is being processed by run {job.dagster_run_id}"
                )
        row = conn.execute(
            sa.update(import_job)
            .where(import_job.c.id == job.id)
            .values(
                status="processing",
                dagster_run_id=run_id,
                started_at=sa.func.coalesce(import_job.c.started_at, sa.func.now()),
                heartbeat_at=sa.func.now(),
            )
            .returning(*import_job.c)
        ).one()
        return Job.from_row(row)


def lock_owned_job(conn: Connection, job_id: uuid.UUID, run_id: str) -> Job:
    """Inside a batch's transaction: lock the job and check this run still owns it."""
    job = get_job(conn, job_id, lock=True)
    if job.status != "processing" or job.dagster_run_id != run_id:
        raise JobBusy(
            f"import {job.partition_key} is no longer owned by run {run_id} "
            f"(status {job.status}, run {job.dagster_run_id})"
        )
    return job


def set_format(engine: Engine, job_id: uuid.UUID, file_format: str, summary: dict) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(import_job)
            .where(import_job.c.id == job_id)
            .values(
                format=file_format,
                checkpoint_data=merge_jsonb(import_job.c.checkpoint_data, {"summary": summary}),
            )
        )


def merge_jsonb(column, values: dict):
    """`column || values`, treating NULL as an empty object."""
    empty = sa.text("'{}'::jsonb")
    return sa.func.coalesce(column, empty).op("||")(sa.bindparam(None, values, type_=JSONB))


def finish_job(engine: Engine, job_id: uuid.UUID, run_id: str) -> Job:
    """All rows are accounted for: completed, or completed_with_errors when rows were rejected."""
    with engine.begin() as conn:
        job = lock_owned_job(conn, job_id, run_id)
        status = "completed_with_errors" if job.row_errors else "completed"
        return _update(
            conn,
            job.id,
            status=status,
            rows_total=job.rows_processed,
            finished_at=sa.func.now(),
            last_error=None,
        )


def fail_job(engine: Engine, job_id: uuid.UUID, message: str) -> Job:
    """The file cannot be read at all: nothing is kept, the reason is."""
    with engine.begin() as conn:
        get_job(conn, job_id, lock=True)
        return _update(
            conn, job_id, status="failed", last_error=redact(message), finished_at=sa.func.now()
        )


def note_error(engine: Engine, job_id: uuid.UUID, message: str) -> None:
    """Best effort: the error of an attempt that will be retried."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(import_job)
            .where(import_job.c.id == job_id)
            .values(last_error=redact(message))
        )


def record_run_failure(
    engine: Engine, partition_key: str, message: str, *, max_attempts: int, run_id: str
) -> Job:
    """A run of the import died: count it; `pending` again while attempts remain, else
    `failed`. A job that finished meanwhile, or that another run owns, is left alone."""
    with engine.begin() as conn:
        job = get_job(conn, partition_key, lock=True)
        if job.finished or job.dagster_run_id not in (None, run_id):
            return job
        attempts = job.attempts + 1
        gave_up = attempts >= max_attempts
        return _update(
            conn,
            job.id,
            attempts=attempts,
            last_error=redact(message),
            status="failed" if gave_up else "pending",
            dagster_run_id=None,
            finished_at=sa.func.now() if gave_up else None,
        )


def find_stale(engine: Engine, stale_after_s: float) -> list[Job]:
    """`processing` jobs whose heartbeat is older than `stale_after_s`."""
    threshold = sa.func.now() - _seconds(stale_after_s)
    query = sa.select(import_job).where(
        import_job.c.status == "processing",
        sa.or_(import_job.c.heartbeat_at.is_(None), import_job.c.heartbeat_at < threshold),
    )
    with engine.connect() as conn:
        return [Job.from_row(r) for r in conn.execute(query)]


def list_pending(engine: Engine, *, quiet_for_s: float = 0.0) -> list[Job]:
    """`pending` jobs untouched for `quiet_for_s` (a job just registered by a CLI import is
    about to be started by it: no need to request a run for it too)."""
    touched = sa.func.coalesce(import_job.c.heartbeat_at, import_job.c.created_at)
    query = sa.select(import_job).where(
        import_job.c.status == "pending", touched <= sa.func.now() - _seconds(quiet_for_s)
    )
    with engine.connect() as conn:
        return [Job.from_row(r) for r in conn.execute(query.order_by(import_job.c.created_at))]


def _seconds(value: float):
    return sa.func.make_interval(0, 0, 0, 0, 0, 0, value)


def return_to_pending(engine: Engine, job_id: uuid.UUID, expected_run_id: str | None) -> bool:
    """Release a stale job for resumption; its checkpoint is kept. False when its owner changed
    meanwhile (another recoverer, or the run came back)."""
    with engine.begin() as conn:
        job = get_job(conn, job_id, lock=True)
        if job.status != "processing" or job.dagster_run_id != expected_run_id:
            return False
        _update(
            conn,
            job_id,
            status="pending",
            dagster_run_id=None,
            last_error="the run processing this import died; resuming from its checkpoint",
        )
        return True


def rollback_job(engine: Engine, ref: str | uuid.UUID, batch_size: int = 5000) -> tuple[Job, int]:
    """Delete exactly the pairs this job created, in batches, and mark it `rolled_back`."""
    with engine.begin() as conn:
        job = get_job(conn, ref, lock=True)
        if job.status == "processing":
            raise JobBusy(f"import {job.partition_key} is processing: wait for it or recover it")
    deleted = 0
    while True:
        with engine.begin() as conn:
            ids = sa.select(qa_pair.c.id).where(qa_pair.c.import_job_id == job.id).limit(batch_size)
            count = conn.execute(sa.delete(qa_pair).where(qa_pair.c.id.in_(ids))).rowcount
        deleted += count
        if count < batch_size:
            break
    with engine.begin() as conn:
        job = _update(conn, job.id, status="rolled_back", finished_at=sa.func.now())
    return job, deleted


def row_errors_of(engine: Engine, job_id: uuid.UUID, limit: int = 100) -> list[dict[str, Any]]:
    query = (
        sa.select(
            import_row_error.c.source_row,
            import_row_error.c.error_code,
            import_row_error.c.message,
            import_row_error.c.raw_excerpt,
        )
        .where(import_row_error.c.import_job_id == job_id)
        .order_by(import_row_error.c.source_row)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def embedding_counts(engine: Engine, job_id: uuid.UUID) -> dict[str, int]:
    query = (
        sa.select(qa_pair.c.embedding_status, sa.func.count())
        .where(qa_pair.c.import_job_id == job_id)
        .group_by(qa_pair.c.embedding_status)
    )
    counts = {"completed": 0, "failed": 0, "pending": 0}
    with engine.connect() as conn:
        counts.update({status: n for status, n in conn.execute(query)})
    return counts


def _update(conn: Connection, job_id: uuid.UUID, **values) -> Job:
    row = conn.execute(
        sa.update(import_job)
        .where(import_job.c.id == job_id)
        .values(**values)
        .returning(*import_job.c)
    ).one()
    return Job.from_row(row)


def _ref_clause(ref: str | uuid.UUID):
    if isinstance(ref, uuid.UUID):
        return import_job.c.id == ref
    try:
        return import_job.c.id == uuid.UUID(str(ref))
    except ValueError:
        return import_job.c.partition_key == str(ref)
