"""A source's history: undoing a version (its rollback) and listing the versions."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from helix_pipelines.db import dedupe
from helix_pipelines.db.schema import PUBLISHED_JOB_STATUSES
from helix_pipelines.db.sources import (
    OLD_COLUMNS,
    SourceBusy,
    later_version_in_place,
    lock_source,
    recount,
)


def undo_version(conn: Connection, job) -> int:
    """Inside the transaction that starts a rollback of `job`: put back what the version changed
    in other versions' pairs (answers, vectors, places, retirements), newest change first. The
    pairs it added are hidden at once (the job is no longer published) and deleted after."""
    if not job.source_key or job.status not in PUBLISHED_JOB_STATUSES:
        return 0  # never in place: nothing of other versions was touched
    lock_source(conn, job.source_key)
    later = later_version_in_place(conn, job.source_key, job.source_version)
    if later is not None:
        raise SourceBusy(
            f"version {later} of source {job.source_key!r} replaced this one: roll back "
            f"version {later} first"
        )
    _take_back_handed(conn, job.id)
    assignments = ", ".join(f"{c.strip()} = c.old_{c.strip()}" for c in OLD_COLUMNS.split(","))
    restored = conn.execute(
        sa.text(
            f"UPDATE qa_pair p SET {assignments} FROM qa_pair_change c "
            "WHERE c.import_job_id = :j AND c.qa_pair_id = p.id"
        ),
        {"j": job.id},
    ).rowcount
    conn.execute(sa.text("DELETE FROM qa_pair_change WHERE import_job_id = :j"), {"j": job.id})
    if restored:
        dedupe.advance(conn)  # contents put back: early lookups before this are stale
    return restored


def _take_back_handed(conn: Connection, job_id: uuid.UUID) -> None:
    """A pair handed to another import goes back: that import skips its row as a duplicate
    again (its record and counts as before); the pair's owner and row are restored after."""
    conn.execute(
        sa.text(
            "CREATE TEMP TABLE undo_heir ON COMMIT DROP AS SELECT p.id AS pair_id, "
            "p.import_job_id AS job_id, p.source_row FROM qa_pair p JOIN qa_pair_change c "
            "ON c.qa_pair_id = p.id WHERE c.import_job_id = :j AND c.change = 'handed'"
        ),
        {"j": job_id},
    )
    conn.execute(
        sa.text(
            "INSERT INTO import_duplicate (import_job_id, source_row, qa_pair_id) "
            "SELECT job_id, source_row, pair_id FROM undo_heir ON CONFLICT DO NOTHING"
        )
    )
    recount(conn, "undo_heir", "job_id", -1)
    conn.execute(sa.text("DROP TABLE undo_heir"))


def versions_of(engine: Engine, key: str) -> list[dict]:
    """The versions of a source, newest first, with what each changed."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT source_version, id, partition_key, source_name, status, created_at, "
                "finished_at, checkpoint_data -> 'sync' AS sync FROM import_job "
                "WHERE source_key = :k ORDER BY source_version DESC"
            ),
            {"k": key},
        )
        current = None
        listing = []
        for r in rows:
            sync = {k: v for k, v in (r.sync or {}).items() if k != "first_changes"}
            is_current = (
                current is None and r.status in PUBLISHED_JOB_STATUSES and "refused" not in sync
            )
            current = current or (r.source_version if is_current else None)
            listing.append(
                {
                    "version": r.source_version,
                    "import_job_id": str(r.id),
                    "partition_key": r.partition_key,
                    "source_name": r.source_name,
                    "status": r.status,
                    "current": is_current,
                    "created_at": r.created_at,
                    "finished_at": r.finished_at,
                    "sync": sync or None,
                }
            )
    return listing
