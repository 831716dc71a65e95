"""One import batch, committed atomically with the job's checkpoint.

Pairs and row errors go in with COPY (the fastest bulk path: see STACK.md), in the same
transaction that advances `checkpoint_data`, `rows_processed` and `heartbeat_at`. A crash at any
instant therefore loses at most the batch in flight and never duplicates one: a resumed import
starts after the checkpoint, and a retried commit whose acknowledgement was lost finds its rows
already covered by the checkpoint and does nothing.

A batch commits without waiting for its WAL to reach the disk (`synchronous_commit = off`): the
wait was a tenth of an import. A server crash may then lose the last batches an import saw
committed, but only together with their checkpoint, in commit order (WAL is flushed in order,
so any later synchronous commit, such as the one that completes the import, makes them all
durable). The next batch finds the checkpoint behind it (`CheckpointMoved`) and the import
reads on from the checkpoint.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from helix_pipelines.core.normalize import printable_excerpt
from helix_pipelines.core.parsing import RowError
from helix_pipelines.core.parsing.pair_block import PairBlock
from helix_pipelines.db import pair_copy
from helix_pipelines.db.dedupe import (
    EarlyLookup,
    OwnBatches,
    advance,
    array_literal,
    current_tick,
    earliest_pairs,
)
from helix_pipelines.db.jobs import CheckpointMoved, lock_owned_job, merge_jsonb
from helix_pipelines.db.schema import import_job

# Imports that dedupe against the whole knowledge base commit one batch at a time, so two files
# with the same pair cannot both insert it.
DEDUPE_LOCK_ID = 72110002

ERROR_COLUMNS = "import_job_id, source_row, error_code, message, raw_excerpt"

Hook = Callable[[str], None]


@dataclass(frozen=True)
class Batch:
    """Consecutive records of a file: its pairs as columns (a list of Pairs is turned into a
    PairBlock) and its row errors, from ``first_source_row`` to ``last_source_row``."""

    pairs: PairBlock
    errors: Sequence[RowError]
    first_source_row: int
    last_source_row: int
    early: EarlyLookup | None = None  # its contents looked up before its turn (db.dedupe)

    def __post_init__(self) -> None:
        if not isinstance(self.pairs, PairBlock):
            object.__setattr__(self, "pairs", PairBlock.of(list(self.pairs)))

    @property
    def rows(self) -> int:
        return len(self.pairs) + len(self.errors)

    def split(self) -> tuple[Batch, Batch]:
        """Two halves by source row, for a batch that missed its deadline."""
        rows = sorted([*self.pairs.source_rows.tolist(), *(e.source_row for e in self.errors)])
        middle = rows[len(rows) // 2 - 1]
        return (
            self._between(self.first_source_row, middle),
            self._between(middle + 1, self.last_source_row),
        )

    def _between(self, first: int, last: int) -> Batch:
        rows = self.pairs.source_rows
        return Batch(
            pairs=self.pairs.take(np.flatnonzero((rows >= first) & (rows <= last))),
            errors=[e for e in self.errors if first <= e.source_row <= last],
            first_source_row=first,
            last_source_row=last,
            early=self.early,
        )


@dataclass(frozen=True)
class BatchOutcome:
    pairs_created: int
    duplicates_skipped: int
    row_errors: int
    already_committed: bool = False


def commit_batch(
    engine: Engine,
    job_id: uuid.UUID,
    run_id: str,
    batch: Batch,
    *,
    keep_duplicates: bool,
    statement_timeout_s: float,
    hook: Hook | None = None,
    checkpoint_extra: dict | None = None,
    own: OwnBatches | None = None,
) -> BatchOutcome:
    """`own`: the batches this writer committed before, which an early lookup of this batch may
    not have seen; this batch joins them once committed."""
    hook = hook or _no_hook
    with engine.begin() as conn:
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(statement_timeout_s * 1000)}")
        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        job = lock_owned_job(conn, job_id, run_id)
        hook("locked")
        if job.last_source_row >= batch.last_source_row:
            return BatchOutcome(0, 0, 0, already_committed=True)
        if job.last_source_row < batch.first_source_row - 1:
            raise CheckpointMoved(job.last_source_row, batch.first_source_row - 1)
        pairs, duplicates = (
            (batch.pairs, Duplicates())
            if keep_duplicates
            else _split_duplicates(conn, batch.pairs, batch.early, own)
        )
        _copy_pairs(conn, job_id, pairs)
        _record_duplicates(conn, job_id, duplicates)
        hook("pairs_copied")
        _copy_errors(conn, job_id, batch.errors)
        hook("errors_copied")
        outcome = BatchOutcome(
            pairs_created=len(pairs),
            duplicates_skipped=len(batch.pairs) - len(pairs),
            row_errors=len(batch.errors),
        )
        _advance_checkpoint(conn, job_id, batch, outcome, checkpoint_extra or {})
        tick = advance(conn) if len(pairs) else None
        hook("before_commit")
    hook("committed")
    if own is not None and tick is not None:
        own.add(tick, batch.pairs.content_hashes)
    return outcome


@dataclass
class Duplicates:
    """A batch's skipped rows, each with the id of the pair an earlier import holds with its
    content, or (None and) its content hash when it repeats a pair earlier in the batch, whose
    id is known once it is copied."""

    rows: list[int] = field(default_factory=list)
    pair_ids: list[int | None] = field(default_factory=list)
    hashes: list[str | None] = field(default_factory=list)

    def add(self, row: int, pair_id: int | None, digest: str | None) -> None:
        self.rows.append(row)
        self.pair_ids.append(pair_id)
        self.hashes.append(digest)

    def __len__(self) -> int:
        return len(self.rows)


def _split_duplicates(
    conn: Connection, pairs: PairBlock, early: EarlyLookup | None, own: OwnBatches | None
) -> tuple[PairBlock, Duplicates]:
    """(new pairs, the duplicates): a duplicate's content already exists anywhere, or earlier
    in this batch. The early lookup stands when nothing but this writer's own batches changed
    the contents since; their contents count as existing (recorded by hash, like a pair copied
    earlier in the batch)."""
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(DEDUPE_LOCK_ID)))
    hashes = pairs.content_hashes
    distinct = set(hashes)
    since = None
    if early is not None and own is not None:
        since = own.since(early.tick, current_tick(conn))
    if since is None:
        earliest, since = earliest_pairs(conn, distinct), frozenset()
    else:
        earliest = early.earliest
    duplicates = Duplicates()
    if not earliest and len(distinct) == len(hashes) and since.isdisjoint(distinct):
        return pairs, duplicates  # the usual batch: nothing to drop
    keep, kept = [], set(since)
    rows = pairs.source_rows.tolist()
    for position, digest in enumerate(hashes):
        if (pair_id := earliest.get(digest)) is not None:
            duplicates.add(rows[position], pair_id, None)
        elif digest in kept:
            duplicates.add(rows[position], None, digest)
        else:
            kept.add(digest)
            keep.append(position)
    return pairs.take(np.array(keep, dtype=np.int64)), duplicates


def _record_duplicates(conn: Connection, job_id: uuid.UUID, duplicates: Duplicates) -> None:
    """Each skipped row with the pair it matched (the earliest with its content), so a rollback
    of the import that created that pair can hand it over instead of deleting it."""
    if not duplicates:
        return
    # A pair copied earlier in this batch is looked up by its hash. min(p.id + 0), not
    # min(p.id): the planner would answer min(id) by walking the primary key from its start
    # until a row has the hash.
    with _job_checked_by_lock(conn, "import_duplicate"):
        conn.exec_driver_sql(
            "INSERT INTO import_duplicate (import_job_id, source_row, qa_pair_id) "
            "SELECT %s, d.source_row, coalesce(d.pair_id, "
            "(SELECT min(p.id + 0) FROM qa_pair p WHERE p.content_hash = d.hash)) "
            "FROM unnest(%s::int[], %s::bigint[], %s::text[]) AS d(source_row, pair_id, hash) "
            "ON CONFLICT DO NOTHING",
            (job_id, *map(array_literal, (duplicates.rows, duplicates.pair_ids,
                                          duplicates.hashes))),
        )  # fmt: skip


# Where PostgreSQL lets this session switch foreign key checks off and nothing else would be
# switched off with them: a trigger or rule of someone's own on the table must still fire.
_CHECKS_OFF = (
    "SELECT current_setting('session_replication_role'), "
    "set_config('session_replication_role', 'replica', true) "
    "WHERE current_setting('is_superuser') = 'on' "
    "AND NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = %(table)s::regclass "
    "AND NOT tgisinternal) "
    "AND NOT EXISTS (SELECT FROM pg_rewrite WHERE ev_class = %(table)s::regclass)"
)


@contextlib.contextmanager
def _job_checked_by_lock(conn: Connection, table: str) -> Iterator[None]:
    """Around the COPY of a batch's pairs or the insert of its duplicates into `table`: no
    foreign key check of each row's job. This transaction holds the job's row lock
    (lock_owned_job), so the job exists and cannot be deleted before the commit: every check
    would pass. Each one is an index probe and a row lock in a trigger: a fifth of an import's
    time on the embedded server, a third of recording a batch's duplicates (bench/import.py,
    bench/sync.py). Only a superuser may do this (session_replication_role); for anyone else
    every row is checked."""
    before = conn.exec_driver_sql(_CHECKS_OFF, {"table": table}).scalar()
    yield  # an exception aborts the transaction, and the setting goes with it
    if before is not None:
        conn.exec_driver_sql("SELECT set_config('session_replication_role', %s, true)", (before,))


def _copy_pairs(conn: Connection, job_id: uuid.UUID, pairs: PairBlock) -> None:
    if not len(pairs):
        return
    # Binary, built from the pairs' columns (db.pair_copy): no escaping on either side and no
    # Python call per pair, so the writer leaves the GIL to the parser thread.
    with _job_checked_by_lock(conn, "qa_pair"):
        pair_copy.copy_pairs(conn.connection.driver_connection.cursor(), job_id, pairs)


def _copy_errors(conn: Connection, job_id: uuid.UUID, errors: Sequence[RowError]) -> None:
    if not errors:
        return
    cursor = conn.connection.driver_connection.cursor()
    with cursor.copy(f"COPY import_row_error ({ERROR_COLUMNS}) FROM STDIN") as copy:
        for e in errors:
            excerpt = printable_excerpt(e.raw_excerpt)  # NUL or a lone surrogate breaks COPY
            copy.write_row(
                (job_id, e.source_row, e.error_code, printable_excerpt(e.message, 2000), excerpt)
            )


def _advance_checkpoint(
    conn: Connection, job_id: uuid.UUID, batch: Batch, outcome: BatchOutcome, extra: dict
) -> None:
    """`extra`: what else the checkpoint carries (the reader's byte offset, for progress)."""
    c = import_job.c
    checkpoint = merge_jsonb(c.checkpoint_data, extra | {"last_source_row": batch.last_source_row})
    conn.execute(
        sa.update(import_job)
        .where(c.id == job_id)
        .values(
            checkpoint_data=checkpoint,
            rows_processed=c.rows_processed + batch.rows,
            pairs_created=c.pairs_created + outcome.pairs_created,
            duplicates_skipped=c.duplicates_skipped + outcome.duplicates_skipped,
            row_errors=c.row_errors + outcome.row_errors,
            heartbeat_at=sa.func.now(),
        )
    )


def _no_hook(point: str) -> None:
    return None
