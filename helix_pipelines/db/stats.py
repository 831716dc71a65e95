"""Counts that describe the knowledge base, for metrics and status."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from helix_pipelines.db import jobs
from helix_pipelines.db.schema import EMBEDDING_STATUSES, JOB_STATUSES


def job_status_counts(engine: Engine) -> dict[str, int]:
    return _counts(engine, "SELECT status, count(*) FROM import_job GROUP BY status", JOB_STATUSES)


def embedding_status_counts(engine: Engine) -> dict[str, int]:
    return _counts(
        engine,
        # Retired pairs are no longer the knowledge base (and never claimed for embedding).
        "SELECT embedding_status, count(*) FROM qa_pair WHERE retired_at IS NULL "
        "GROUP BY embedding_status",
        EMBEDDING_STATUSES,
    )


def processing_imports(engine: Engine, stale_after_s: float) -> tuple[int, int]:
    """(imports a live run is processing, `processing` imports whose run is dead)."""
    with engine.connect() as conn:
        owned = [j for j in jobs.find_owned(engine) if j.status == "processing"]
        live = sum(jobs.owner_alive(conn, job, stale_after_s) for job in owned)
    return live, len(owned) - live


def _counts(engine: Engine, query: str, statuses: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(statuses, 0)
    with engine.connect() as conn:
        counts.update(dict(conn.execute(sa.text(query)).all()))
    return counts
