"""A job's rejected rows: the first few for the UI, all of them as CSV."""

from __future__ import annotations

import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from helix_pipelines.db.schema import import_row_error as t

COLUMNS = ["source_row", "error_code", "message", "raw_excerpt"]
# Control characters shown as escapes, so a cell stays one line and shows what was there.
_ESCAPES = {c: repr(chr(c))[1:-1] for c in [*range(0x20), 0x7F]}


def escape(text: str | None, limit: int = 120) -> str:
    """One line, control characters escaped (\\n, \\t, \\x00...), cut at `limit` characters."""
    flat = (text or "").translate(_ESCAPES)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def first_errors(engine: Engine, job_id: uuid.UUID, limit: int = 20) -> list[dict]:
    """The first `limit` rejected rows by row number, excerpts escaped for display (plain
    dicts: pandas would cost half a second of every import that has a rejected row)."""
    with engine.connect() as conn:
        rows = conn.execute(_query(job_id, limit)).mappings().all()
    return [
        {
            "source_row": row["source_row"],
            "error_code": row["error_code"],
            "message": escape(row["message"], 300),
            "raw_excerpt": escape(row["raw_excerpt"]),
        }
        for row in rows
    ]


def write_errors_csv(engine: Engine, job_id: uuid.UUID, path: Path, chunk_rows=10_000) -> int:
    """Every rejected row of a job into a CSV file (excerpts as stored); returns the count.
    Read in chunks: memory stays flat whatever the number of errors."""
    import pandas as pd  # here: half a second of start-up that only callers pay

    written = 0
    with engine.connect() as conn:
        chunks = pd.read_sql_query(
            _query(job_id), conn, chunksize=chunk_rows, dtype={"source_row": "int64"}
        )
        for chunk in chunks:
            chunk.to_csv(path, mode="a" if written else "w", header=not written, index=False)
            written += len(chunk)
    if not written:
        pd.DataFrame(columns=COLUMNS).to_csv(path, index=False)
    return written


def _query(job_id: uuid.UUID, limit: int | None = None):
    query = (
        sa.select(t.c.source_row, t.c.error_code, t.c.message, t.c.raw_excerpt)
        .where(t.c.import_job_id == job_id)
        .order_by(t.c.source_row)
    )
    return query.limit(limit) if limit is not None else query
