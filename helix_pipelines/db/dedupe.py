"""Which of a batch's contents the knowledge base already holds, looked up early.

An import that dedupes commits its batches one at a time under an advisory lock, and looks up
every content hash of a batch there: a hash-index probe each, about a fifth of an import's
time. The reader thread can make that lookup while the writer is still copying the batch
before, on a second server backend (`look_up_early`). Such a lookup is only as good as its
snapshot, so every change to the set of contents (pairs copied, deleted, or given other
content) advances `dedupe_clock.tick` in its own transaction (`advance`). Under the lock, the
writer takes the early lookup only when every tick since its snapshot came from the writer's
own batches (`OwnBatches`), whose hashes it still holds; otherwise it looks up again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy.engine import Connection, Engine

# The lookup: one probe of the hash index per hash (`= ANY` would build a bitmap of them all
# first), returning the pairs it finds, so a duplicate is recorded against the earliest.
_EARLIEST = "SELECT h, p.id FROM unnest(%s::text[]) AS h JOIN qa_pair p ON p.content_hash = h"


@dataclass(frozen=True)
class EarlyLookup:
    """The pairs holding a batch's contents (hash -> earliest id), as of `tick`."""

    tick: int
    earliest: dict[str, int]


def array_literal(values) -> str:
    """One array literal as text: psycopg dumps a Python list element by element, which cost as
    much as the COPY itself. Numbers and hex hashes need no quoting inside '{...}'."""
    return "{" + ",".join("NULL" if value is None else str(value) for value in values) + "}"


def earliest_pairs(conn: Connection, hashes: Iterable[str]) -> dict[str, int]:
    """Inside a transaction: the earliest pair holding each content that exists."""
    return _earliest_of(_probe(conn, _EARLIEST, hashes))


def look_up_early(engine: Engine, hashes: Iterable[str], *, timeout_s: float) -> EarlyLookup:
    """The lookup and the tick it is valid at, from one snapshot (one statement). It gives up
    after `timeout_s` (a lock held on qa_pair, say): the reader that makes it must not hang
    where the writer would have given up."""
    with engine.begin() as conn:
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(timeout_s * 1000))}")
        sql = f"SELECT NULL, tick FROM dedupe_clock UNION ALL {_EARLIEST}"
        rows = _probe(conn, sql, set(hashes))
    (tick,) = [value for digest, value in rows if digest is None]
    return EarlyLookup(tick=tick, earliest=_earliest_of(row for row in rows if row[0] is not None))


def _probe(conn: Connection, sql: str, hashes: Iterable[str]) -> list:
    # While a table fills faster than autovacuum analyses it, the planner believes it is small
    # and scans it whole for every batch: quadratic in the import. Thousands of probes into an
    # index are right at any size.
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    return conn.exec_driver_sql(sql, (array_literal(hashes),)).all()


def _earliest_of(rows) -> dict[str, int]:
    earliest: dict[str, int] = {}
    for digest, pair_id in rows:
        earliest[digest] = min(pair_id, earliest.get(digest, pair_id))
    return earliest


def advance(conn: Connection) -> int:
    """In a transaction that changed the set of contents, as late as it can: the clock's row
    stays locked until the commit, so ticks follow the order of commits."""
    return conn.exec_driver_sql("UPDATE dedupe_clock SET tick = tick + 1 RETURNING tick").scalar()


def current_tick(conn: Connection) -> int:
    return conn.exec_driver_sql("SELECT tick FROM dedupe_clock").scalar()


class OwnBatches:
    """The ticks of one writer's last committed batches, each with the contents it held (all of
    which the knowledge base holds once it committed). Two are enough: the reader looks a batch
    up once the writer has taken the one before the batch waiting for it, so at most two
    batches commit after the lookup; more ticks since (a batch split after a timeout) make the
    writer look up again."""

    def __init__(self, keep: int = 2) -> None:
        # The batch's own list of hashes, not a set of them: a set would hold another quarter
        # of a megabyte per batch, where `since` builds one of the batch or two it needs.
        self._batches: deque[tuple[int, Sequence[str]]] = deque(maxlen=keep)

    def add(self, tick: int, hashes: Sequence[str]) -> None:
        self._batches.append((tick, hashes))

    def since(self, tick: int, now: int) -> frozenset[str] | None:
        """The contents this writer committed after `tick`, when every tick up to `now` is one
        of its batches; None when anything else changed the contents meanwhile (or the ticks
        are older than this record)."""
        mine = dict(self._batches)
        ticks = range(tick + 1, now + 1)
        if any(t not in mine for t in ticks):
            return None
        return frozenset().union(*(mine[t] for t in ticks))
