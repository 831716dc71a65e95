"""A batch's contents looked up before its turn to commit (db.dedupe): what changed the
contents since the lookup is made up for, whoever changed them, so no pair is copied twice
and none is skipped against a pair that is gone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from helix_pipelines.core.adaptive import AdaptiveBatchSize
from helix_pipelines.core.normalize import content_hash
from helix_pipelines.core.parsing import Pair
from helix_pipelines.db import jobs
from helix_pipelines.db.batches import Batch, commit_batch
from helix_pipelines.db.dedupe import OwnBatches, look_up_early
from helix_pipelines.pipeline.importing import ImportOptions, import_file
from helix_pipelines_tests.db.test_duplicates_recorded import pair
from helix_pipelines_tests.pipeline.import_checks import (
    assert_accounting,
    duplicates_recorded,
    empty_tables,
    ids_by_source_row,
    register,
    started_job,
)


def batch(first: int, *texts: str) -> Batch:
    pairs = [pair(first + i, text) for i, text in enumerate(texts)]
    return Batch(pairs, [], first, first + len(texts) - 1)


def looked_up(engine, b: Batch) -> Batch:
    return replace(b, early=look_up_early(engine, b.pairs.content_hashes, timeout_s=60))


def commit(engine, job, b: Batch, own: OwnBatches | None = None):
    job_id, run_id = job
    return commit_batch(engine, job_id, run_id, b, keep_duplicates=False,
                        statement_timeout_s=60, own=own)  # fmt: skip


@pytest.fixture
def clean(engine):
    yield engine
    empty_tables(engine)


def test_a_lookup_made_while_the_batch_before_was_in_flight_counts_its_contents(clean):
    engine = clean
    job, own = started_job(engine, "one.csv"), OwnBatches()
    first = batch(1, "a", "b")
    second = looked_up(engine, batch(3, "b", "c", "a"))  # before the first batch committed
    assert second.early.earliest == {}
    commit(engine, job, first, own)
    outcome = commit(engine, job, second, own)
    assert (outcome.pairs_created, outcome.duplicates_skipped) == (1, 2)
    ids = ids_by_source_row(engine, job[0])
    assert sorted(ids) == [1, 2, 4]
    assert duplicates_recorded(engine, job[0]) == {3: ids[2], 5: ids[1]}


def test_another_import_committing_since_the_lookup_is_looked_up_again(clean):
    engine = clean
    job, own = started_job(engine, "mine.csv"), OwnBatches()
    mine = looked_up(engine, batch(1, "x", "y"))
    other = started_job(engine, "other.csv")
    commit(engine, other, batch(1, "y"))  # after the lookup, before this batch's turn
    outcome = commit(engine, job, mine, own)
    assert (outcome.pairs_created, outcome.duplicates_skipped) == (1, 1)
    assert duplicates_recorded(engine, job[0]) == {2: ids_by_source_row(engine, other[0])[1]}


def test_a_pair_deleted_since_the_lookup_is_not_skipped_against(clean):
    engine = clean
    other = started_job(engine, "other.csv")
    commit(engine, other, batch(1, "z"))
    job, own = started_job(engine, "mine.csv"), OwnBatches()
    mine = looked_up(engine, batch(1, "z", "w"))
    assert set(mine.early.earliest) == {pair(1, "z").content_hash}
    jobs.rollback_job(engine, other[0], run_id=other[1])  # deletes z's only pair
    outcome = commit(engine, job, mine, own)
    assert (outcome.pairs_created, outcome.duplicates_skipped) == (2, 0)
    assert duplicates_recorded(engine, job[0]) == {}


def test_own_batches_account_for_the_ticks_they_made_and_no_others():
    own = OwnBatches(keep=2)
    own.add(5, ["h5"])
    own.add(6, ["h6"])
    assert own.since(6, 6) == frozenset()
    assert own.since(4, 6) == {"h5", "h6"}
    assert own.since(3, 6) is None  # tick 4: someone else's
    assert own.since(6, 7) is None
    own.add(8, ["h8"])  # only the last two are kept
    assert own.since(4, 6) is None


def test_a_version_swap_and_its_rollback_each_make_a_lookup_before_them_stale(clean, tmp_path):
    from helix_pipelines_tests.pipeline.test_source_sync import (
        import_version,
        register_version,
        rows,
        write,
    )

    engine = clean
    import_version(engine, write(tmp_path / "v1.csv", rows(2)))
    old = content_pair(1, "Question 1?", "Answer 1.")
    new = content_pair(2, "Question 1?", "Answer 1, corrected.")
    job = started_job(engine, "other.csv")
    lookups = []

    def look_up_after_each_batch(point: str) -> None:
        if point == "committed":  # the last time: after v2's rows, before its swap
            lookups[:] = [looked_up(engine, Batch([old], [], 1, 1))]

    v2 = register_version(engine, write(tmp_path / "v2.csv", rows(2, changed=range(1, 2))))
    import_file(engine, v2.id, run_id="run-v2", hook=look_up_after_each_batch)
    assert lookups[0].early.earliest  # v1's pair still held the old answer then
    # The swap gave v1's pair the corrected answer: the old content is nowhere now.
    assert commit(engine, job, lookups[0], OwnBatches()).pairs_created == 1
    before_undo = looked_up(engine, Batch([new], [], 2, 2))
    assert before_undo.early.earliest  # the swapped pair holds the corrected answer
    jobs.rollback_job(engine, v2.id)  # puts the answer back
    assert commit(engine, job, before_undo, OwnBatches()).pairs_created == 1


def content_pair(row: int, question: str, answer: str) -> Pair:
    return Pair(row, question, answer, None, content_hash(question, answer))


def test_two_imports_of_the_same_contents_at_once_store_each_content_once(clean, tmp_path):
    """The same contents in the same order, so each import's batches commit between the
    other's lookups of them and their turns: the lookups go stale and are made again under the
    lock, and no content is stored twice."""
    from helix_pipelines_tests.pipeline.test_source_sync import rows, write

    engine = clean
    files = [
        write(tmp_path / "a.csv", rows(3000)),
        write(tmp_path / "b.csv", rows(3000) + [("b?", "b.")]),
    ]
    small = ImportOptions(batch_size=AdaptiveBatchSize(initial=100, minimum=1, fixed=True))
    imports = [register(engine, path) for path in files]
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda job: import_file(engine, job.id, run_id=f"run-{job.id}",
                                                     options=small).job, imports))  # fmt: skip
    for job in done:
        assert_accounting(job)
    assert sum(job.pairs_created for job in done) == 3001
    assert sum(job.duplicates_skipped for job in done) == 3000
    with engine.connect() as conn:
        pairs, contents = conn.exec_driver_sql(
            "SELECT count(*), count(DISTINCT content_hash) FROM qa_pair"
        ).one()
        dangling = conn.exec_driver_sql(
            "SELECT count(*) FROM import_duplicate d LEFT JOIN qa_pair p ON p.id = d.qa_pair_id "
            "WHERE p.id IS NULL"
        ).scalar()
    assert (pairs, contents, dangling) == (3001, 3001, 0)
