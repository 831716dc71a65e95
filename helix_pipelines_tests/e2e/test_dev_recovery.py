"""Under `helix-pipelines dev`, nobody acts and the work completes anyway:

1. a run worker killed (`kill -9`) in the middle of an import, then another in the middle of an
   embedding;
2. every slot of the run queue held by a killed run (zombies still STARTED in Dagster's
   storage), and new drops still import;
3. the whole `dev` killed with everything in flight; the next `dev` finishes it.

Nothing is stubbed: runs are found dead only through their heartbeats in PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

import psutil
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

DIM = 64  # the embedding step should not be bound by vector-index inserts here
PLAIN = {"bad_every": 10**9, "duplicate_every": 10**9}


def environment(home) -> dict[str, str]:
    env = clean_environment()
    env.update(HELIX_HOME=str(home), HELIX_EMBEDDING_PROVIDER="local",
               HELIX_EMBEDDING_DIM=str(DIM), HELIX_STALE_AFTER_S="20")  # fmt: skip
    return env


def start_dev(home, port) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "helix_pipelines.cli", "dev", "--port", str(port)],
        env=environment(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip


def drop(home, tmp_path, name: str, rows: int, seed: int) -> None:
    written = write_qa_csv(tmp_path / name, rows, seed=seed, **PLAIN).path
    inbox = home / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    os.replace(written, inbox / name)


class Knowledge:
    def __init__(self, home) -> None:
        self.home = home
        self._engine = None

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            url = EmbeddedPostgres(self.home).url("helix")
            self._engine = sa.create_engine(url, poolclass=sa.NullPool)
        return self._engine

    def rows(self, sql: str, **params) -> list:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(sa.text(sql), params))
        except (sa.exc.OperationalError, RuntimeError):
            return []  # the server is restarting

    def job(self, name: str):
        found = self.rows("SELECT * FROM import_job WHERE source_name = :n", n=name)
        return found[0] if found else None

    def embedded(self, name: str) -> tuple[int, int]:
        found = self.rows(
            "SELECT count(*) FILTER (WHERE p.embedding_status = 'completed') AS done, count(*) "
            "FROM qa_pair p JOIN import_job j ON j.id = p.import_job_id WHERE j.source_name = :n",
            n=name,
        )
        return (found[0][0], found[0][1]) if found else (0, 0)

    def worker(self, kind: str, name: str) -> int | None:
        found = self.rows(
            "SELECT h.pid FROM run_heartbeat h JOIN import_job j ON j.partition_key = "
            "h.partition_key WHERE h.kind = :k AND j.source_name = :n",
            k=kind, n=name,
        )  # fmt: skip
        return found[0][0] if found else None

    def all_done(self, name: str, rows: int) -> bool:
        job = self.job(name)
        return bool(job and job.status == "completed" and self.embedded(name) == (rows, rows))


def imported(kb: Knowledge, name: str, rows: int) -> bool:
    job = kb.job(name)
    return bool(job and job.status == "completed" and job.pairs_created == rows)


def kill_tree(dev: subprocess.Popen) -> None:
    """SIGKILL dev and everything it started: dagster dev, daemon, webserver, code server and
    run workers (the embedded server is not theirs: it lives on for whoever comes next)."""
    tree = [psutil.Process(dev.pid), *psutil.Process(dev.pid).children(recursive=True)]
    for process in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(tree, timeout=30)
    dev.wait(timeout=30)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(1500)
def test_killed_workers_zombie_runs_and_a_killed_dev_all_end_in_completed_work(
    tmp_path_factory, tmp_path
):
    home = tmp_path_factory.mktemp("dev-recovery")
    port = free_port()
    dev = start_dev(home, port)
    kb = Knowledge(home)
    try:
        wait_for(lambda: try_graphql(port, "{ version }"), 180, "the webserver")

        # 1. A run worker killed mid-import, then (in the resumed run) mid-embedding.
        drop(home, tmp_path, "first.csv", 30_000, seed=1)
        worker = wait_for(lambda: (j := kb.job("first.csv")) and j.status == "processing"
                          and j.rows_processed >= 5000 and j.owner_pid, 180, "mid-import",
                          0.02)  # fmt: skip
        kill(worker)
        embedder = wait_for(lambda: kb.embedded("first.csv")[0] >= 1000
                            and kb.worker("embed", "first.csv"), 300, "mid-embedding",
                            0.05)  # fmt: skip
        kill(embedder)
        wait_for(lambda: kb.all_done("first.csv", 30_000), 400, "first.csv, untouched", 1.0)

        # 2. Zombie runs in every slot of the run queue (max_concurrent_runs: 4).
        zombies = [zombie_import(home, tmp_path, kb, f"zombie{i}.csv", seed=10 + i)
                   for i in range(4)]  # fmt: skip
        drop(home, tmp_path, "after.csv", 2000, seed=20)
        wait_for(lambda: imported(kb, "after.csv", 2000), 300, "after.csv past the zombies", 1.0)
        for name in zombies:
            wait_for(lambda n=name: imported(kb, n, 5000), 300, f"{name} resumed", 1.0)

        # 3. The whole dev killed mid-import; the next dev finishes everything.
        drop(home, tmp_path, "last.csv", 30_000, seed=30)
        wait_for(lambda: (j := kb.job("last.csv")) and j.rows_processed >= 5000, 180,
                 "last.csv under way", 0.02)  # fmt: skip
        kill_tree(dev)
        dev = start_dev(home, port)
        wait_for(lambda: imported(kb, "last.csv", 30_000), 300, "last.csv after a new dev", 1.0)
        assert kb.rows("SELECT count(*) FROM import_job WHERE status <> 'completed'")[0][0] == 0
        assert kb.rows("SELECT count(*) FROM qa_pair")[0][0] == 30_000 + 2000 + 4 * 5000 + 30_000
        # (Embedding that backlog is the pending sensor's; a killed embedding was proven above.)
    finally:
        if kb._engine is not None:
            kb._engine.dispose()
        with_group_stopped(dev)
    wait_for(lambda: not processes_using(str(home)), 60, "every process to stop")


def zombie_import(home, tmp_path, kb: Knowledge, name: str, seed: int) -> str:
    """A CLI import killed with -9 mid-way: its run stays STARTED in Dagster's storage."""
    path = write_qa_csv(tmp_path / name, 5000, seed=seed, **PLAIN).path
    cli = subprocess.Popen(
        [sys.executable, "-m", "helix_pipelines.cli", "import", str(path), "--no-embed"],
        env=environment(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    wait_for(lambda: (j := kb.job(name)) and j.status == "processing", 180, f"{name} started", 0.02)
    os.killpg(cli.pid, signal.SIGKILL)
    cli.wait(timeout=30)
    return name


def with_group_stopped(dev: subprocess.Popen) -> None:
    if dev.poll() is None:
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=120)
