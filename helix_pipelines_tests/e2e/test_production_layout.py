"""The production layout on the embedded server: Dagster's own storage in PostgreSQL (a database
of its own), and the gRPC code server, the webserver and the daemon as separate processes.
A file dropped in the inbox is imported through it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from helix_pipelines.db.embedded import EmbeddedPostgres
from helix_pipelines.db.engine import ensure_database
from helix_pipelines_tests.support.db_fixtures import clean_environment
from helix_pipelines_tests.support.processes import free_port, try_graphql, wait_for

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def test_separate_processes_with_postgres_storage(tmp_path_factory):
    home = tmp_path_factory.mktemp("prod")
    server = EmbeddedPostgres(home)
    server.acquire()
    processes: list[subprocess.Popen] = []
    try:
        ensure_database(server.url("postgres"), "dagster")
        dagster_home = home / "dagster"
        dagster_home.mkdir()
        shutil.copyfile(REPO / "deploy" / "dagster.postgres.yaml", dagster_home / "dagster.yaml")
        grpc_port, web_port = free_port(), free_port()
        workspace = home / "workspace.yaml"
        workspace.write_text(
            (REPO / "deploy" / "workspace.grpc.yaml").read_text().replace("4266", str(grpc_port))
        )
        env = clean_environment()
        env.update(
            HELIX_HOME=str(home),
            HELIX_EMBEDDING_DIM="256",
            DAGSTER_HOME=str(dagster_home),
            DAGSTER_PG_URL=server.url("dagster", driver="psycopg2"),
        )
        bin_dir = Path(sys.executable).parent
        # Migrations first, as a deployment step of their own.
        subprocess.run([str(bin_dir / "helix-pipelines"), "db", "upgrade"], env=env, check=True,
                       capture_output=True, timeout=120)  # fmt: skip
        processes.append(_start([str(bin_dir / "dagster"), "code-server", "start", "-m",
                                 "helix_pipelines.definitions", "-h", "127.0.0.1",
                                 "-p", str(grpc_port)], env, home / "code.log"))  # fmt: skip
        processes.append(_start([str(bin_dir / "dagster-webserver"), "-w", str(workspace),
                                 "-h", "127.0.0.1", "-p", str(web_port)], env,
                                home / "web.log"))  # fmt: skip
        processes.append(_start([str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)],
                                env, home / "daemon.log"))  # fmt: skip

        wait_for(lambda: try_graphql(web_port, "{ assetNodes { id } }"), 180, "the webserver")
        inbox = home / "inbox"
        inbox.mkdir(exist_ok=True)
        part = inbox / "faq.csv.part"
        part.write_text("question,answer\nWhat is Helix?,A knowledge base.\nWho runs it?,Ops.\n")
        part.rename(inbox / "faq.csv")

        app_engine = sa.create_engine(server.url("helix"))
        status = wait_for(lambda: _job_status(app_engine), 240, "the import to complete")
        assert status == ("completed", 2)
        # The run (import and embedding) is recorded in Dagster's storage in PostgreSQL.
        dagster_engine = sa.create_engine(server.url("dagster"))
        wait_for(lambda: _successful_runs(dagster_engine), 180, "the run to succeed")
        # The run's counters reach this host's metrics directory, which `helix-pipelines
        # metrics` serves: the code server (and the runs it launches) set it up themselves.
        assert _counter(home / "metrics", "helix_import_batches_total") > 0
        app_engine.dispose()
        dagster_engine.dispose()
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        server.stop()


def _counter(directory: Path, name: str) -> float:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return sum(s.value for f in registry.collect() for s in f.samples if s.name == name)


def _successful_runs(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT count(*) FROM runs WHERE status = 'SUCCESS'"))


def _job_status(engine) -> tuple[str, int] | None:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT status, pairs_created FROM import_job WHERE source_name = 'faq.csv'")
        ).first()
    if row is None or row.status not in ("completed", "completed_with_errors", "failed"):
        return None
    return (row.status, row.pairs_created)
