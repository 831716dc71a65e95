"""The registry of stored uploads, and the bytes of those kept in PostgreSQL.

Chunks are written and read one at a time (CHUNK_BYTES each), so storing or reading a file of
any size holds one chunk in memory. A copy is needed while any import that names it is
unfinished, or finished and within the retention period (always, when none is set); an import
that was rolled back needs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine

from helix_pipelines.db.schema import import_job, stored_file, stored_file_chunk

CHUNK_BYTES = 1 << 20
# Statuses whose import may still read its file (a rollback reads nothing but may be undone by
# recovery finishing it, which reads nothing either; it is here to keep the copy until it ends).
STILL_READING = ("pending", "processing", "rolling_back")
KEPT_WHEN_FINISHED = ("completed", "completed_with_errors", "failed")


def record(engine: Engine, location: str, sha256: str, size: int) -> None:
    """Note a stored copy (again present, if it had been removed)."""
    values = {"sha256": sha256, "size": size, "stored_at": sa.func.now(), "removed_at": None}
    with engine.begin() as conn:
        conn.execute(
            insert(stored_file)
            .values(location=location, **values)
            .on_conflict_do_update(index_elements=[stored_file.c.location], set_=values)
        )


def mark_removed(engine: Engine, location: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(stored_file)
            .where(stored_file.c.location == location)
            .values(removed_at=sa.func.now())
        )


def unneeded(
    engine: Engine, retention_days: float | None, locations: Iterable[str] | None = None
) -> list[str]:
    """Stored copies that no import needs any more (see the module's docstring)."""
    finished_recently = import_job.c.status.in_(KEPT_WHEN_FINISHED)
    if retention_days is not None:
        cutoff = sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, retention_days * 86400)
        finished_recently = sa.and_(finished_recently, import_job.c.finished_at > cutoff)
    needed = sa.exists().where(
        import_job.c.source_path == stored_file.c.location,
        sa.or_(import_job.c.status.in_(STILL_READING), finished_recently),
    )
    query = sa.select(stored_file.c.location).where(stored_file.c.removed_at.is_(None), ~needed)
    if locations is not None:
        query = query.where(stored_file.c.location.in_(list(locations)))
    with engine.connect() as conn:
        return list(conn.scalars(query))


# -- bytes kept in PostgreSQL ---------------------------------------------------------------------


def write_chunks(engine: Engine, location: str, sha256: str, source: BinaryIO) -> int:
    """Store a file's bytes under `location` in one transaction (a crash leaves nothing half
    written); a location already complete is kept as it is. Returns the size."""
    with engine.begin() as conn:
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(location))))
        present = conn.execute(
            sa.select(stored_file.c.size).where(
                stored_file.c.location == location, stored_file.c.removed_at.is_(None)
            )
        ).first()
        if present is not None:
            return int(present.size)
        conn.execute(
            insert(stored_file)
            .values(location=location, sha256=sha256, size=0, stored_at=sa.func.now())
            .on_conflict_do_nothing()
        )
        conn.execute(sa.delete(stored_file_chunk).where(stored_file_chunk.c.location == location))
        size = seq = 0
        while block := source.read(CHUNK_BYTES):
            conn.execute(
                sa.insert(stored_file_chunk).values(location=location, seq=seq, data=block)
            )
            seq, size = seq + 1, size + len(block)
        conn.execute(
            sa.update(stored_file)
            .where(stored_file.c.location == location)
            .values(size=size, removed_at=None)
        )
    return size


def read_chunks(engine: Engine, location: str) -> Iterator[bytes]:
    """The file's bytes in order, one chunk per query."""
    seq = 0
    with engine.connect() as conn:
        while True:
            data = conn.scalar(
                sa.select(stored_file_chunk.c.data).where(
                    stored_file_chunk.c.location == location, stored_file_chunk.c.seq == seq
                )
            )
            if data is None:
                return
            yield bytes(data)
            seq += 1


def has_chunks(engine: Engine, location: str) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.scalar(
                sa.select(sa.func.count())
                .select_from(stored_file)
                .where(stored_file.c.location == location, stored_file.c.removed_at.is_(None))
            )
        )


def delete_chunks(engine: Engine, location: str) -> None:
    """Drop a file's bytes; its registry row stays, marked removed."""
    with engine.begin() as conn:
        conn.execute(sa.delete(stored_file_chunk).where(stored_file_chunk.c.location == location))
        conn.execute(
            sa.update(stored_file)
            .where(stored_file.c.location == location)
            .values(removed_at=sa.func.now())
        )
