"""A batch's duplicates are recorded against the earliest pair with their content: one an
earlier import holds, or one copied earlier in the same batch."""

from __future__ import annotations

import hashlib

from helix_pipelines.core.parsing import Pair
from helix_pipelines.db.batches import Batch, commit_batch
from helix_pipelines_tests.pipeline.import_checks import (
    duplicates_recorded,
    empty_tables,
    ids_by_source_row,
    started_job,
)


def pair(row: int, text: str) -> Pair:
    return Pair(row, f"{text}?", f"Answer to {text}.", None,
                hashlib.sha256(text.encode()).hexdigest())  # fmt: skip


def commit(engine, name: str, pairs: list[Pair], *, keep_duplicates: bool = False):
    job_id, run_id = started_job(engine, name)
    batch = Batch(pairs, [], 1, len(pairs))
    outcome = commit_batch(engine, job_id, run_id, batch, keep_duplicates=keep_duplicates,
                           statement_timeout_s=60)  # fmt: skip
    return job_id, outcome


def test_each_duplicate_names_the_earliest_pair_with_its_content(engine):
    try:
        first, _ = commit(engine, "first.csv", [pair(1, "a"), pair(2, "b"), pair(3, "c")])
        earlier = ids_by_source_row(engine, first)
        # A later copy of b (an import that kept its duplicates): b's earliest pair is first's.
        commit(engine, "kept.csv", [pair(1, "b"), pair(2, "c")], keep_duplicates=True)
        rows = [pair(1, "b"), pair(2, "x"), pair(3, "x"), pair(4, "b"), pair(5, "y"),
                pair(6, "c")]  # fmt: skip
        second, outcome = commit(engine, "second.csv", rows)
        assert (outcome.pairs_created, outcome.duplicates_skipped) == (2, 4)
        own = ids_by_source_row(engine, second)
        assert sorted(own) == [2, 5]
        expected = {1: earlier[2], 3: own[2], 4: earlier[2], 6: earlier[3]}
        assert duplicates_recorded(engine, second) == expected
    finally:
        empty_tables(engine)
