"""Counts that describe the knowledge base, for metrics and status."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from helix_pipelines.db.schema import EMBEDDING_STATUSES, JOB_STATUSES


def job_status_counts(engine: Engine) -> dict[str, int]:
    return _counts(engine, "SELECT status, count(*) FROM import_job GROUP BY status", JOB_STATUSES)


def embedding_status_counts(engine: Engine) -> dict[str, int]:
    return _counts(
        engine,
        "SELECT embedding_status, count(*) FROM qa_pair GROUP BY embedding_status",
        EMBEDDING_STATUSES,
    )


def _counts(engine: Engine, query: str, statuses: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(statuses, 0)
    with engine.connect() as conn:
        counts.update(dict(conn.execute(sa.text(query)).all()))
    return counts
