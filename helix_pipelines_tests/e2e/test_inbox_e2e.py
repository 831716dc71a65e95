"""Under `helix-pipelines dev`, a file dropped into $HELIX_HOME/inbox becomes a `completed`
import job without anyone touching anything; stopping dev leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import sqlalchemy as sa

from helix_pipelines.db.embedded import EmbeddedPostgres
from helix_pipelines_tests.support.db_fixtures import clean_environment
from helix_pipelines_tests.support.generate import write_qa_csv
from helix_pipelines_tests.support.processes import (
    free_port,
    processes_using,
    try_graphql,
    wait_for,
)

pytestmark = pytest.mark.slow

ROWS = 500
JOB_QUERY = sa.text(
    "SELECT status, rows_total, pairs_created, duplicates_skipped, row_errors, last_error "
    "FROM import_job WHERE source_name = 'dropped.csv'"
)


def start_dev(home, port) -> subprocess.Popen:
    env = clean_environment()
    env.update(HELIX_HOME=str(home), HELIX_EMBEDDING_PROVIDER="local")
    return subprocess.Popen(
        [sys.executable, "-m", "helix_pipelines.cli", "dev", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def drop(home, tmp_path) -> None:
    """Write beside the inbox, then rename in: the sensor never sees a half-written file."""
    written = write_qa_csv(tmp_path / "dropped.csv", ROWS, seed=9, bad_every=10**9).path
    inbox = home / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    os.replace(written, inbox / "dropped.csv")


def finished_job(engine: sa.Engine):
    with engine.connect() as conn:
        row = conn.execute(JOB_QUERY).first()
    return row if row is not None and row.status not in ("pending", "processing") else None


def test_a_dropped_file_becomes_a_completed_job(tmp_path_factory, tmp_path):
    home = tmp_path_factory.mktemp("inbox-e2e")
    port = free_port()
    dev = start_dev(home, port)
    engine = None
    try:
        wait_for(lambda: try_graphql(port, "{ version }"), 180, "the webserver")
        drop(home, tmp_path)
        engine = sa.create_engine(EmbeddedPostgres(home).url("helix"), poolclass=sa.NullPool)
        job = wait_for(lambda: finished_job(engine), 240, "the dropped file's import", 1.0)
        assert job.status == "completed", job.last_error
        assert job.rows_total == ROWS
        assert job.rows_total == job.pairs_created + job.duplicates_skipped + job.row_errors
        assert not (home / "inbox" / "dropped.csv").exists()
    finally:
        if engine is not None:
            engine.dispose()
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=90)
    wait_for(lambda: not processes_using(str(home)), 30, "every process to stop")
