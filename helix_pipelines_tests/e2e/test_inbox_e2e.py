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


def hostile_entries(home, tmp_path):
    """A file name that is not UTF-8, a symlink to a file outside the inbox, a FIFO."""
    inbox = home / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside.csv"
    outside.write_text("question,answer\nWhat is the outside secret?,Never read me.\n")
    (inbox / "link-outside.csv").symlink_to(outside)
    os.mkfifo(inbox / "pipe.csv")
    legacy = os.path.join(os.fsencode(tmp_path), b"caf\xe9-legacy.csv")
    with open(legacy, "w") as handle:
        handle.write("question,answer\nq one?,a one\nq two?,a two\nq three?,a three\n")
    os.replace(legacy, os.path.join(os.fsencode(inbox), b"caf\xe9-legacy.csv"))
    return ["What is the outside secret?"]


def legacy_job(engine: sa.Engine):
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT status, pairs_created, last_error FROM import_job "
                "WHERE source_name LIKE '%legacy%' AND status NOT IN ('pending', 'processing')"
            )
        ).first()
    return row


def rejected_names(home) -> set[str]:
    rejected = home / "inbox" / "rejected"
    if not rejected.exists():
        return set()
    names = {p.name for p in rejected.iterdir() if not p.name.endswith(".reason.txt")}
    return names if {"link-outside.csv", "pipe.csv"} <= names else set()


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
        outside = hostile_entries(home, tmp_path)
        drop(home, tmp_path)
        engine = sa.create_engine(EmbeddedPostgres(home).url("helix"), poolclass=sa.NullPool)
        job = wait_for(lambda: finished_job(engine), 240, "the dropped file's import", 1.0)
        assert job.status == "completed", job.last_error
        assert job.rows_total == ROWS
        assert job.rows_total == job.pairs_created + job.duplicates_skipped + job.row_errors
        assert not (home / "inbox" / "dropped.csv").exists()
        # The hostile entries before it blocked nothing, and none of them was followed or read.
        legacy = wait_for(lambda: legacy_job(engine), 120, "the file with a non-UTF-8 name", 1.0)
        assert (legacy.status, legacy.pairs_created) == ("completed", 3), legacy.last_error
        rejected = wait_for(lambda: rejected_names(home), 60, "the hostile entries rejected")
        assert {"link-outside.csv", "pipe.csv"} <= rejected
        with engine.connect() as conn:
            jobs_made = conn.scalar(sa.text("SELECT count(*) FROM import_job"))
            read_outside = conn.scalar(
                sa.text("SELECT count(*) FROM qa_pair WHERE question = ANY(:q)"),
                {"q": outside},
            )
        assert (jobs_made, read_outside) == (2, 0)
    finally:
        if engine is not None:
            engine.dispose()
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=90)
    wait_for(lambda: not processes_using(str(home)), 30, "every process to stop")
