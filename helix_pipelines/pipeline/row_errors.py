"""A job's rejected rows as pandas frames: the first few for the UI, all of them as CSV."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from helix_pipelines.db.schema import import_row_error as t

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ["source_row", "error_code", "message", "raw_excerpt"]
# Control characters shown as escapes, so a cell stays one line and shows what was there.
_ESCAPES = {c: repr(chr(c))[1:-1] for c in [*range(0x20), 0x7F]}


def escape(text: str | None, limit: int = 120) -> str:
    """One line, control characters escaped (\\n, \\t, \\x00...), cut at `limit` characters."""
    flat = (text or "").translate(_ESCAPES)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def first_errors_frame(engine: Engine, job_id: uuid.UUID, limit: int = 20) -> pd.DataFrame:
    """The first `limit` rejected rows by row number, excerpts escaped for display."""
    frame = _read(engine, job_id, limit=limit)
    frame["raw_excerpt"] = frame["raw_excerpt"].map(escape)
    frame["message"] = frame["message"].map(lambda m: escape(m, 300))
    return frame


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


def _read(engine: Engine, job_id: uuid.UUID, limit: int) -> pd.DataFrame:
    import pandas as pd  # here: half a second of start-up that only callers pay

    with engine.connect() as conn:
        frame = pd.read_sql_query(_query(job_id, limit), conn)
    return frame.reindex(columns=COLUMNS)


def _query(job_id: uuid.UUID, limit: int | None = None):
    query = (
        sa.select(t.c.source_row, t.c.error_code, t.c.message, t.c.raw_excerpt)
        .where(t.c.import_job_id == job_id)
        .order_by(t.c.source_row)
    )
    return query.limit(limit) if limit is not None else query
