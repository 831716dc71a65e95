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

from helix_pipelines.core.liveness import Owner, owner_is_dead, this_process
from helix_pipelines.core.naming import partition_key_for
from helix_pipelines.core.redact import redact
from helix_pipelines.db import dedupe, liveness, source_history, sources
from helix_pipelines.db.schema import (
    FINISHED_JOB_STATUSES,
    import_duplicate,
    import_job,
    import_row_error,
    qa_pair,
    run_heartbeat,
)

UNFINISHED = ("pending", "processing")


class JobBusy(RuntimeError):
    """Another live run owns the job."""


class JobNotFound(LookupError):
    pass


class JobRolledBack(JobBusy):
    """The job is being (or has been) rolled back: nothing may add to it."""


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
    owner_host: str | None = None
    owner_pid: int | None = None
    source_key: str | None = None
    source_version: int | None = None

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
    source_key: str | None = None,
) -> tuple[Job, bool]:
    """The job for this content: an unfinished one when it exists (same content dropped again
    starts nothing new; a source version refused for retiring too much counts as unfinished),
    else a new `pending` job, the next version of `source_key` when given. Returns (job,
    created)."""
    with engine.begin() as conn:
        # Serialise registrations of the same content across processes.
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(sha256))))
        same_content = conn.execute(
            sa.select(import_job).where(import_job.c.source_sha256 == sha256)
        ).all()
        for row in same_content:
            if row.status in UNFINISHED or sync_refused(Job.from_row(row)):
                return Job.from_row(row), False
        key = partition_key_for(source_name, sha256, generation=len(same_content) + 1)
        version = None
        if source_key:
            sources.lock_source(conn, source_key)
            version = sources.next_version(conn, source_key)
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
                source_key=source_key,
                source_version=version,
            )
            .returning(*import_job.c)
        ).one()
        return Job.from_row(row), True


def start_job(engine: Engine, ref: str | uuid.UUID, run_id: str, *, stale_after_s: float) -> Job:
    """Take ownership for `run_id` and mark the job `processing`, with this process's heartbeat
    claimed in the same transaction. A job whose owning run is alive is refused, and so is a job
    being rolled back; a finished job is returned unchanged."""
    with engine.begin() as conn:
        job = get_job(conn, ref, lock=True)
        if job.status == "rolling_back":
            raise JobRolledBack(f"import {job.partition_key} is being rolled back")
        if job.finished:
            return job
        held_by_other = job.status == "processing" and job.dagster_run_id not in (None, run_id)
        if held_by_other and owner_alive(conn, job, stale_after_s):
            raise JobBusy(
                f"import {job.partition_key} is being processed by run {job.dagster_run_id}"
            )
        started = sa.func.coalesce(import_job.c.started_at, sa.func.now())
        return _take(conn, job, run_id, "processing", started_at=started)


def _take(conn: Connection, job: Job, run_id: str, status: str, **values) -> Job:
    """Make `run_id` (this process) the job's owner, its heartbeat claimed in the same
    transaction so that a held job always has evidence of its holder."""
    kind = "rollback" if status == "rolling_back" else "import"
    liveness.claim(conn, run_id, kind, job.partition_key)
    me = this_process()
    return _update(conn, job.id, status=status, dagster_run_id=run_id, owner_host=me.host,
                   owner_pid=me.pid, heartbeat_at=sa.func.now(), **values)  # fmt: skip


def owner_alive(conn: Connection, job: Job, stale_after_s: float) -> bool:
    """Whether the run that owns `job` still lives: its heartbeat row decides (see
    core.liveness). A run that stopped working on the job released its row: no row, no owner."""
    age = sa.func.extract("epoch", sa.func.now() - run_heartbeat.c.heartbeat_at)
    row = conn.execute(
        sa.select(run_heartbeat, age.label("age")).where(
            run_heartbeat.c.run_id == job.dagster_run_id
        )
    ).first()
    if row is None:
        return False
    owner = Owner(row.host, row.pid, row.pid_started, float(row.age))
    return not owner_is_dead(owner, stale_after_s=stale_after_s, this_host=this_process().host)


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


def merge_options(engine: Engine, job_id: uuid.UUID, options: dict) -> Job:
    """Merge a launch's options (column mapping, keep duplicates) into the job's stored ones,
    so a resumed or retried run reads the file the same way."""
    with engine.begin() as conn:
        return _update(conn, job_id, options=merge_jsonb(import_job.c.options, options))


def merge_jsonb(column, values: dict):
    """`column || values`, treating NULL as an empty object."""
    empty = sa.text("'{}'::jsonb")
    return sa.func.coalesce(column, empty).op("||")(sa.bindparam(None, values, type_=JSONB))


class CheckpointMoved(RuntimeError):
    """The job's checkpoint is behind the rows this run committed: batches committed without
    waiting for the WAL flush (db.batches) were lost in a database crash, together with their
    checkpoint. The import must go on from the checkpoint, not from its own position."""

    def __init__(self, checkpoint_row: int, committed_through: int):
        super().__init__(
            f"the import's checkpoint is at row {checkpoint_row}, but this run had committed "
            f"through row {committed_through}: the batches since were lost (a database crash?)"
        )


def finish_job(
    engine: Engine,
    job_id: uuid.UUID,
    run_id: str,
    *,
    max_retire_share: float = 0.5,
    hook=None,
    written_through: int | None = None,
) -> Job:
    """All rows are accounted for: completed, or completed_with_errors when rows were rejected.
    A source version replaces the previous one in this same transaction (db.sources), or is
    refused and fails with the reason, having changed nothing. `written_through`: the last row
    the import committed; a checkpoint behind it raises CheckpointMoved, nothing finished."""
    with engine.begin() as conn:
        job = lock_owned_job(conn, job_id, run_id)
        if written_through is not None and job.last_source_row < written_through:
            raise CheckpointMoved(job.last_source_row, written_through)
        extra = {}
        if job.source_key:
            outcome = sources.sync_version(
                conn, job, max_retire_share=max_retire_share,
                allow_shrink=bool(job.options.get("allow_shrink")),
            )  # fmt: skip
            checkpoint = merge_jsonb(import_job.c.checkpoint_data, {"sync": outcome.summary})
            if outcome.refused:
                message = (
                    f"version {job.source_version} of source {job.source_key!r} {outcome.refused}"
                )
                return _update(conn, job.id, status="failed", rows_total=job.rows_processed,
                               finished_at=sa.func.now(), last_error=redact(message),
                               checkpoint_data=checkpoint)  # fmt: skip
            job = get_job(conn, job.id)  # repeated questions became row errors
            extra["checkpoint_data"] = checkpoint
        if hook is not None:
            hook("synced")
        status = "completed_with_errors" if job.row_errors else "completed"
        return _update(
            conn,
            job.id,
            status=status,
            rows_total=job.rows_processed,
            finished_at=sa.func.now(),
            last_error=None,
            **extra,
        )


def sync_refused(job: Job) -> bool:
    """A source version that stopped before retiring too much, waiting for a confirmation."""
    sync = (job.checkpoint_data or {}).get("sync") or {}
    return job.status == "failed" and bool(sync.get("refused"))


def reopen_refused(engine: Engine, job_id: uuid.UUID) -> Job:
    """A refused source version back to `pending`, so that its next run tries the swap again
    (with the options it has now, e.g. allow_shrink). Its pairs are still there: the file is
    not read again. Other jobs are returned unchanged."""
    with engine.begin() as conn:
        job = get_job(conn, job_id, lock=True)
        if not sync_refused(job):
            return job
        return _update(conn, job.id, status="pending", finished_at=None, dagster_run_id=None)


def set_source(engine: Engine, job_id: uuid.UUID, source_key: str) -> Job:
    """Make an import not yet in place a version of `source_key` (the Launchpad's choice)."""
    with engine.begin() as conn:
        job = get_job(conn, job_id, lock=True)
        if job.source_key == source_key:
            return job
        if job.finished and not sync_refused(job):
            raise JobBusy(f"import {job.partition_key} has finished: its source stays")
        sources.lock_source(conn, source_key)
        version = sources.next_version(conn, source_key)
        return _update(conn, job.id, source_key=source_key, source_version=version)


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
    engine: Engine,
    partition_key: str,
    message: str,
    *,
    max_attempts: int,
    run_id: str,
    terminal: bool = False,
) -> Job:
    """A run of the import failed: count it; `pending` again while attempts remain, else
    `failed`. A terminal failure (unreadable input, a bug, bad configuration) fails the job at
    once. A job that finished meanwhile, or that another run owns, is left alone."""
    with engine.begin() as conn:
        job = get_job(conn, partition_key, lock=True)
        if job.finished or job.status == "rolling_back":
            return job
        if job.dagster_run_id not in (None, run_id):
            return job
        attempts = job.attempts + 1
        gave_up = terminal or attempts >= max_attempts
        return _update(
            conn,
            job.id,
            attempts=attempts,
            last_error=redact(message),
            status="failed" if gave_up else "pending",
            dagster_run_id=None,
            finished_at=sa.func.now() if gave_up else None,
        )


def note_embedding_failure(engine: Engine, ref: str, run_id: str, message: str) -> None:
    """An embedding run of the job failed: kept beside the job for `status` and the UI."""
    failure = {"run_id": run_id, "message": message[:2000]}
    with engine.begin() as conn:
        job = get_job(conn, ref, lock=True)
        conn.execute(
            sa.update(import_job)
            .where(import_job.c.id == job.id)
            .values(
                checkpoint_data=merge_jsonb(
                    import_job.c.checkpoint_data, {"embedding_run_failure": failure}
                )
            )
        )


def find_owned(engine: Engine) -> list[Job]:
    """Jobs a run holds: `processing` imports and `rolling_back` rollbacks."""
    query = sa.select(import_job).where(import_job.c.status.in_(("processing", "rolling_back")))
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


def return_to_pending(
    engine: Engine, job_id: uuid.UUID, expected_run_id: str | None, *, max_deaths: int = 3
) -> Job | None:
    """Release the job of a dead run for resumption; its checkpoint is kept. A job whose runs
    keep dying at the same checkpoint (a file that kills its reader) fails after `max_deaths`.
    None when its owner changed meanwhile (another recoverer, or the run came back)."""
    with engine.begin() as conn:
        job = get_job(conn, job_id, lock=True)
        if job.status != "processing" or job.dagster_run_id != expected_run_id:
            return None
        previous = (job.checkpoint_data or {}).get("deaths") or {}
        same_place = previous.get("at_row") == job.last_source_row
        deaths = {
            "count": previous.get("count", 0) + 1 if same_place else 1,
            "at_row": job.last_source_row,
        }
        if deaths["count"] >= max_deaths:
            message = (
                f"the run processing this import died {deaths['count']} times at row "
                f"{job.last_source_row} without progress; giving up"
            )
            status, finished = "failed", sa.func.now()
        else:
            message = "the run processing this import died; resuming from its checkpoint"
            status, finished = "pending", None
        return _update(
            conn,
            job_id,
            status=status,
            dagster_run_id=None,
            owner_host=None,
            owner_pid=None,
            finished_at=finished,
            last_error=message,
            checkpoint_data=merge_jsonb(import_job.c.checkpoint_data, {"deaths": deaths}),
        )


# -- rollback -----------------------------------------------------------------------------------


def begin_rollback(engine: Engine, ref: str | uuid.UUID, run_id: str, stale_after_s: float) -> Job:
    """Hold the job for a rollback (`rolling_back`) from start to end. A job whose import run is
    alive is refused; a rollback that died half-way is taken over."""
    with engine.begin() as conn:
        job = get_job(conn, ref, lock=True)
        if job.status == "rolled_back":
            return job
        held = job.status in ("processing", "rolling_back")
        if (
            held
            and job.dagster_run_id not in (None, run_id)
            and owner_alive(conn, job, stale_after_s)
        ):
            verb = "rolled back" if job.status == "rolling_back" else "processed"
            raise JobBusy(
                f"import {job.partition_key} is being {verb} by run {job.dagster_run_id}: "
                "wait for it, or stop it and run `helix-pipelines recover`"
            )
        if job.status != "rolling_back":
            # The previous version is back in the same transaction that hides this one.
            try:
                source_history.undo_version(conn, job)
            except sources.SourceBusy as exc:
                raise JobBusy(str(exc)) from exc
        return _take(conn, job, run_id, "rolling_back")


@dataclass(frozen=True)
class RollbackResult:
    job: Job
    pairs_deleted: int
    pairs_handed_over: int


def rollback_job(
    engine: Engine,
    ref: str | uuid.UUID,
    *,
    run_id: str | None = None,
    stale_after_s: float = 300.0,
    batch_size: int = 5000,
) -> RollbackResult:
    """Remove the pairs this job created, in batches, except those a surviving import also held
    (skipped there as duplicates): each of those moves to the earliest such import. Each batch
    locks the job row and checks this rollback still owns it; killed half-way, the job stays
    `rolling_back` and `recover` finishes it. The job ends `rolled_back`."""
    run_id = run_id or f"rollback-{uuid.uuid4()}"
    job = begin_rollback(engine, ref, run_id, stale_after_s)
    handed = deleted = 0
    try:
        while job.status == "rolling_back":
            with engine.begin() as conn:
                lock_rollback(conn, job.id, run_id)
                moved = _hand_over_shared_pairs(conn, job.id, batch_size)
                removed = 0 if moved else _delete_own_pairs(conn, job.id, batch_size)
                conn.execute(
                    sa.update(import_job)
                    .where(import_job.c.id == job.id)
                    .values(heartbeat_at=sa.func.now())
                )
                if removed:
                    dedupe.advance(conn)  # contents gone: early lookups before this are stale
            handed, deleted = handed + moved, deleted + removed
            if not moved and removed < batch_size:
                break
        if job.status == "rolling_back":
            with engine.begin() as conn:
                lock_rollback(conn, job.id, run_id)
                conn.execute(
                    sa.delete(import_duplicate).where(import_duplicate.c.import_job_id == job.id)
                )
                job = _update(
                    conn,
                    job.id,
                    status="rolled_back",
                    finished_at=sa.func.now(),
                    dagster_run_id=None,
                    owner_host=None,
                    owner_pid=None,
                )
    finally:
        liveness.release(engine, run_id)
    return RollbackResult(job, deleted, handed)


def lock_rollback(conn: Connection, job_id: uuid.UUID, run_id: str) -> Job:
    job = get_job(conn, job_id, lock=True)
    if job.status != "rolling_back" or job.dagster_run_id != run_id:
        raise JobBusy(f"the rollback of import {job.partition_key} was taken over by another run")
    return job


# The earliest surviving import that skipped a pair of the job being rolled back as a duplicate
# takes the pair over: its row becomes the pair's origin and stops counting as a duplicate.
_HAND_OVER = sa.text("""
WITH heirs AS (
    SELECT DISTINCT ON (d.qa_pair_id) d.qa_pair_id, d.import_job_id, d.source_row
    FROM import_duplicate d
    JOIN qa_pair p ON p.id = d.qa_pair_id AND p.import_job_id = :job_id
    JOIN import_job j ON j.id = d.import_job_id
    WHERE d.import_job_id <> :job_id AND j.status NOT IN ('rolling_back', 'rolled_back')
    ORDER BY d.qa_pair_id, j.created_at, d.source_row
    LIMIT :batch
), moved AS (
    UPDATE qa_pair p SET import_job_id = h.import_job_id, source_row = h.source_row
    FROM heirs h WHERE p.id = h.qa_pair_id
    RETURNING h.import_job_id, h.source_row
), unrecorded AS (
    DELETE FROM import_duplicate d USING moved m
    WHERE d.import_job_id = m.import_job_id AND d.source_row = m.source_row
), recounted AS (
    UPDATE import_job j SET pairs_created = j.pairs_created + c.n,
                            duplicates_skipped = j.duplicates_skipped - c.n
    FROM (SELECT import_job_id, count(*) AS n FROM moved GROUP BY import_job_id) c
    WHERE j.id = c.import_job_id
)
SELECT count(*) FROM moved
""")


def _hand_over_shared_pairs(conn: Connection, job_id: uuid.UUID, batch_size: int) -> int:
    return int(conn.execute(_HAND_OVER, {"job_id": job_id, "batch": batch_size}).scalar_one())


def _delete_own_pairs(conn: Connection, job_id: uuid.UUID, batch_size: int) -> int:
    ids = sa.select(qa_pair.c.id).where(qa_pair.c.import_job_id == job_id).limit(batch_size)
    doomed = conn.execute(sa.delete(qa_pair).where(qa_pair.c.id.in_(ids)).returning(qa_pair.c.id))
    doomed_ids = [row.id for row in doomed]
    if doomed_ids:
        # Matches of this job's own rows (duplicates within its file) go with their pairs.
        conn.execute(
            sa.delete(import_duplicate).where(import_duplicate.c.qa_pair_id.in_(doomed_ids))
        )
    return len(doomed_ids)


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
        .where(qa_pair.c.import_job_id == job_id, qa_pair.c.retired_at.is_(None))
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
