"""Rollback never takes another import's pair, never races a run, and finishes after a kill.

A={X}; B={X,Y} skips X as a duplicate of A's pair. Rolling back A must leave X in the knowledge
base under B (the earliest surviving import that held it), with both jobs' accounting true."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from helix_pipelines.db import jobs
from helix_pipelines.pipeline.importing import import_file
from helix_pipelines.pipeline.recovery import RecoveryPolicy, recover
from helix_pipelines_tests.pipeline.import_checks import assert_accounting, register
from helix_pipelines_tests.support.db_fixtures import subprocess_env
from helix_pipelines_tests.support.generate import write_qa_csv
from helix_pipelines_tests.support.processes import wait_for

X = ("How do I reset my password?", "Use the link on the sign-in page.")
Y = ("Where is my order?", "Open Orders and follow the tracking link.")
Z = ("Can I get a refund?", "Within 14 days of payment.")


def write(path: Path, *rows: tuple[str, str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("question", "answer"))
        writer.writerows(rows)
    return path


def imported(engine, path: Path) -> jobs.Job:
    job = register(engine, path)
    return import_file(engine, job.id, run_id=f"run-{path.stem}").job


def pairs_of(engine, job_id) -> dict[str, tuple[int, int]]:
    """question -> (pair id, source_row) of the pairs a job holds."""
    sql = "SELECT question, id, source_row FROM qa_pair WHERE import_job_id = :j"
    with engine.connect() as conn:
        return {r.question: (r.id, r.source_row) for r in conn.execute(sa.text(sql), {"j": job_id})}


def test_rollback_hands_a_shared_pair_to_the_import_that_also_held_it(engine, tmp_path):
    a = imported(engine, write(tmp_path / "a.csv", X))
    b = imported(engine, write(tmp_path / "b.csv", Z, X, Y))
    c = imported(engine, write(tmp_path / "c.csv", X))
    x_id = pairs_of(engine, a.id)[X[0]][0]
    assert (b.pairs_created, b.duplicates_skipped) == (2, 1)
    with engine.begin() as conn:  # X is embedded: the hand-over keeps its vector
        conn.execute(sa.text("UPDATE qa_pair SET embedding_status = 'failed' WHERE id = :i"),
                     {"i": x_id})  # fmt: skip

    result = jobs.rollback_job(engine, a.id)

    assert (result.job.status, result.pairs_deleted, result.pairs_handed_over) == (
        "rolled_back", 0, 1,
    )  # fmt: skip
    # X moved to B, the earliest surviving import that held it, at B's row of X; same pair.
    assert pairs_of(engine, b.id)[X[0]] == (x_id, 2)
    assert X[0] not in pairs_of(engine, c.id)
    b_now, c_now = jobs.get_job(engine, b.id), jobs.get_job(engine, c.id)
    assert (b_now.pairs_created, b_now.duplicates_skipped) == (3, 0)
    assert (c_now.pairs_created, c_now.duplicates_skipped) == (0, 1)
    for job in (jobs.get_job(engine, a.id), b_now, c_now):
        assert_accounting(job)
    with engine.connect() as conn:
        status = conn.scalar(sa.text("SELECT embedding_status FROM qa_pair WHERE id = :i"),
                             {"i": x_id})  # fmt: skip
    assert status == "failed"

    # Rolling back B in turn hands X on to C; B's own pairs go.
    result = jobs.rollback_job(engine, b.id)
    assert (result.pairs_deleted, result.pairs_handed_over) == (2, 1)
    assert pairs_of(engine, c.id) == {X[0]: (x_id, 1)}
    assert_accounting(jobs.get_job(engine, c.id))
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM qa_pair")) == 1
        assert conn.scalar(sa.text("SELECT count(*) FROM import_duplicate")) == 0


def test_duplicates_within_one_file_go_with_their_pair(engine, tmp_path):
    a = imported(engine, write(tmp_path / "a.csv", X, X, Y))
    assert (a.pairs_created, a.duplicates_skipped) == (2, 1)
    result = jobs.rollback_job(engine, a.id)
    assert (result.pairs_deleted, result.pairs_handed_over) == (2, 0)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM qa_pair")) == 0
        assert conn.scalar(sa.text("SELECT count(*) FROM import_duplicate")) == 0


def test_an_import_of_a_job_being_rolled_back_refuses(engine, tmp_path):
    a = imported(engine, write(tmp_path / "a.csv", X, Y))
    jobs.begin_rollback(engine, a.id, "rollback-held", stale_after_s=300)
    with pytest.raises(jobs.JobRolledBack, match="is being rolled back"):
        import_file(engine, a.id, run_id="late-run")
    # This process holds the rollback and lives: another rollback refuses too.
    with pytest.raises(jobs.JobBusy, match="is being rolled back by run rollback-held"):
        jobs.rollback_job(engine, a.id)


@pytest.mark.slow
def test_a_rollback_refuses_while_a_live_process_imports_the_job(engine, settings, tmp_path):
    job = register(engine, write_qa_csv(tmp_path / "big.csv", 60_000, seed=3).path)
    importer = subprocess.Popen(
        [sys.executable, "-m", "helix_pipelines_tests.support.import_driver", str(job.id),
         "--run-id", "live-import", "--batch-size", "1000"],
        env=subprocess_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_for(lambda: jobs.get_job(engine, job.id).rows_processed > 0, 120, "the import to start")
    with pytest.raises(jobs.JobBusy, match="is being processed by run live-import"):
        jobs.rollback_job(engine, job.id)
    assert importer.wait(timeout=300) == 0
    result = jobs.rollback_job(engine, job.id)
    assert result.job.status == "rolled_back"
    assert pairs_of(engine, job.id) == {}


ROLLBACK_CHILD = """
import os, sys
from helix_pipelines.db import jobs
from helix_pipelines.db.engine import create_app_engine, with_driver
engine = create_app_engine(with_driver(os.environ["HELIX_DATABASE_URL"], "psycopg"))
jobs.rollback_job(engine, sys.argv[1], batch_size=50)
"""


@pytest.mark.slow
def test_a_rollback_killed_half_way_is_finished_by_recover(engine, settings, tmp_path):
    plain = {"bad_every": 10**9, "duplicate_every": 10**9}
    a = imported(engine, write_qa_csv(tmp_path / "a.csv", 8000, seed=6, **plain).path)
    # C's 200 rows are A's first 200: C skips them all as duplicates of A's pairs.
    c = imported(engine, write_qa_csv(tmp_path / "c.csv", 200, seed=6, **plain).path)
    assert (a.pairs_created, c.pairs_created, c.duplicates_skipped) == (8000, 0, 200)
    before = len(pairs_of(engine, a.id))
    child = subprocess.Popen([sys.executable, "-c", ROLLBACK_CHILD, str(a.id)],
                             env=subprocess_env(settings), start_new_session=True)  # fmt: skip

    def half_way():
        assert child.poll() is None, "the rollback ended before it could be killed"
        return 0 < len(pairs_of(engine, a.id)) < before

    wait_for(half_way, 120, "the rollback to be half-way", interval=0.01)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert jobs.get_job(engine, a.id).status == "rolling_back"
    with pytest.raises(jobs.JobRolledBack):
        import_file(engine, a.id, run_id="late-run")

    report = recover(engine, policy=RecoveryPolicy(stale_after_s=300))

    assert [j.id for j in report.rollbacks_finished] == [a.id]
    assert jobs.get_job(engine, a.id).status == "rolled_back"
    assert pairs_of(engine, a.id) == {}
    c_now = jobs.get_job(engine, c.id)
    assert (c_now.pairs_created, c_now.duplicates_skipped, len(pairs_of(engine, c.id))) == (
        200, 0, 200,
    )  # fmt: skip
    assert_accounting(c_now)
