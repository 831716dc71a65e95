"""`kill -9` of a real `helix-pipelines import` process group, recovered the way an operator
would: `recover --stale-after 0 --resume` alone, or simply the same `import` again. Nothing is
stubbed: the killed run is still STARTED in Dagster's storage, and only its heartbeat in
PostgreSQL (a process that is gone) tells recovery that it is dead."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from helix_pipelines.core.adaptive import AdaptiveBatchSize
from helix_pipelines.db import jobs
from helix_pipelines.db.embedded import EmbeddedPostgres
from helix_pipelines.pipeline.importing import ImportOptions
from helix_pipelines_tests.pipeline.import_checks import (
    assert_accounting,
    clean_import,
    error_rows,
    ids_by_source_row,
    pair_rows,
    source_rows_repeated,
)
from helix_pipelines_tests.support.db_fixtures import (
    TEST_EMBEDDING_DIM,
    clean_environment,
    subprocess_env,
)
from helix_pipelines_tests.support.fake_openai import running_fake_openai
from helix_pipelines_tests.support.generate import write_qa_csv
from helix_pipelines_tests.support.processes import kill_all, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROWS = 200_000


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    return write_qa_csv(tmp_path_factory.mktemp("cli-crash") / "big.csv", ROWS, seed=11)


@pytest.fixture(scope="module")
def reference(session_engine, big_file):
    options = ImportOptions(batch_size=AdaptiveBatchSize(initial=5000, maximum=10_000))
    return clean_import(session_engine, big_file.path, options)


def cli(settings, *args: str, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "helix_pipelines.cli", *args]
    return subprocess.Popen(
        command,
        env=subprocess_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def import_killed_at(settings, engine, path, fraction: float) -> jobs.Job:
    return killed_at(settings, engine, fraction, "import", str(path), "--no-embed")


def killed_at(settings, engine, fraction: float, *command: str) -> jobs.Job:
    """Start a CLI command in its own process group; SIGKILL the whole group once the job has
    committed `fraction` of the file's rows."""
    process = cli(settings, *command, "--json", start_new_session=True)
    target = int(ROWS * fraction)

    def progressed():
        assert process.poll() is None, "the import ended before it could be killed"
        listing = jobs.list_jobs(engine)
        return listing and listing[0].rows_processed >= target and listing[0]

    job = wait_for(progressed, timeout=240, what=f"{fraction:.0%} of the import", interval=0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    killed = jobs.get_job(engine, job.id)
    assert killed.status == "processing" and 0 < killed.rows_processed < ROWS
    return killed


def runs_with_status(settings, status: DagsterRunStatus) -> list[str]:
    os.environ["DAGSTER_HOME"] = str(settings.home / "dagster")
    with DagsterInstance.get() as instance:
        return [
            r.dagster_run.run_id for r in instance.get_run_records(RunsFilter(statuses=[status]))
        ]


def assert_like_clean(engine, job_id, reference, kept_ids) -> None:
    pairs, errors, clean = reference
    final = jobs.get_job(engine, job_id)
    assert final.status == clean.status == "completed_with_errors"
    assert (final.rows_total, final.pairs_created, final.duplicates_skipped, final.row_errors) == (
        clean.rows_total, clean.pairs_created, clean.duplicates_skipped, clean.row_errors,
    )  # fmt: skip
    assert_accounting(final)
    assert source_rows_repeated(engine, job_id) == []
    assert pair_rows(engine, job_id) == pairs
    assert error_rows(engine, job_id) == errors
    assert kept_ids.items() <= ids_by_source_row(engine, job_id).items()
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM import_job")) == 1


def test_killed_three_times_and_recovered_by_import_and_by_recover(
    engine, settings, big_file, reference
):
    """Killed at 15%; `import` again, killed at 50%; `recover --resume`, killed at 85%;
    `recover --stale-after 0 --resume` alone finishes the job."""
    killed = import_killed_at(settings, engine, big_file.path, 0.15)
    kept = ids_by_source_row(engine, killed.id)
    assert killed.dagster_run_id in runs_with_status(settings, DagsterRunStatus.STARTED)

    again = killed_at(settings, engine, 0.50, "import", str(big_file.path), "--no-embed")
    assert (again.id, again.dagster_run_id != killed.dagster_run_id) == (killed.id, True)
    assert kept.items() <= ids_by_source_row(engine, killed.id).items()
    kept = ids_by_source_row(engine, killed.id)

    last = killed_at(settings, engine, 0.85, "recover", "--stale-after", "0", "--resume")
    assert kept.items() <= ids_by_source_row(engine, killed.id).items()
    kept = ids_by_source_row(engine, killed.id)
    assert len(runs_with_status(settings, DagsterRunStatus.STARTED)) == 1

    code, out, err = finish(cli(settings, "recover", "--stale-after", "0", "--resume", "--json"))
    assert code == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["dead_runs"] == [last.dagster_run_id]
    assert result["recovered"] == [killed.partition_key]
    assert [s["status"] for s in result["resumed"]] == ["completed_with_errors"]
    assert_like_clean(engine, killed.id, reference, kept)
    # Dagster agrees: every killed run is failed, nothing is left in flight.
    failed = set(runs_with_status(settings, DagsterRunStatus.FAILURE))
    assert {killed.dagster_run_id, again.dagster_run_id, last.dagster_run_id} <= failed
    assert runs_with_status(settings, DagsterRunStatus.STARTED) == []


def test_importing_the_same_file_again_finishes_a_killed_import(
    engine, settings, big_file, reference
):
    killed = import_killed_at(settings, engine, big_file.path, 0.50)
    kept = ids_by_source_row(engine, killed.id)
    # `status` tells the operator at once: the run's process is gone (its heartbeat is fresh).
    code, out, err = finish(cli(settings, "status", "--json"))
    assert code == 0, err[-3000:]
    [listed] = json.loads(out)
    assert (listed["status"], listed["progress"]["run"]) == ("processing", "gone")
    assert listed["progress"]["time_left_s"] is None and 0 < listed["progress"]["percent"] < 100
    code, out, err = finish(cli(settings, "status"))
    assert code == 0 and "its run is gone: recovery resumes it" in out, out + err[-3000:]

    code, out, err = finish(cli(settings, "import", str(big_file.path), "--no-embed", "--json"))
    assert code == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["import_job_id"], summary["status"]) == (
        str(killed.id),
        "completed_with_errors",
    )
    assert_like_clean(engine, killed.id, reference, kept)
    assert runs_with_status(settings, DagsterRunStatus.STARTED) == []


def test_an_import_carries_on_through_a_killed_embedded_server(tmp_path, big_file, reference):
    """kill -9 of every process of the embedded PostgreSQL a third of the way through a CLI
    import (no HELIX_DATABASE_URL): the import starts the server again (crash recovery), reads
    on from its checkpoint past the batches the crash took with it, and ends like a clean
    import, with no operator step."""
    home = tmp_path / "home"
    env = clean_environment() | {
        "HELIX_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "HELIX_EMBEDDING_DIM": str(TEST_EMBEDDING_DIM),
    }
    command = [sys.executable, "-m", "helix_pipelines.cli", "import", str(big_file.path)]
    process = subprocess.Popen(
        [*command, "--no-embed", "--json"], env=env, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    server = EmbeddedPostgres(home)
    wait_for(server.is_running, timeout=120, what="the embedded server")
    engine = sa.create_engine(server.url(), poolclass=sa.NullPool)

    def a_third_in():
        assert process.poll() is None, "the import ended before the server could be killed"
        try:
            with engine.connect() as conn:
                done = conn.scalar(sa.text("SELECT max(rows_processed) FROM import_job"))
        except sa.exc.DBAPIError:
            return False  # the import has not made its database or tables yet
        return (done or 0) >= ROWS // 3

    wait_for(a_third_in, timeout=240, what="a third of the import", interval=0.05)
    killed = kill_all(server.server_pids())
    code, out, err = finish(process)
    assert code == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "completed_with_errors"
    server.acquire()  # the import's server stops once it is gone: this test holds it
    try:
        assert server.server_pids()[0] not in killed
        engine = sa.create_engine(server.url(), poolclass=sa.NullPool)
        assert_like_clean(engine, summary["import_job_id"], reference, {})
        engine.dispose()
    finally:
        server.stop()


def _default_sigint() -> None:
    """As at a terminal: a runner that started the suite in the background ignores SIGINT, and
    its children would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_events(settings, run_id: str) -> list[str]:
    os.environ["DAGSTER_HOME"] = str(settings.home / "dagster")
    with DagsterInstance.get() as instance:
        return [e.dagster_event.event_type_value for e in instance.all_logs(run_id)
                if e.dagster_event]  # fmt: skip


def interrupt(process: subprocess.Popen) -> tuple[int, str, str]:
    """Ctrl-C: SIGINT to the command's process, as a terminal sends it."""
    os.kill(process.pid, signal.SIGINT)
    return finish(process, timeout=120)


def test_ctrl_c_stops_an_import_and_the_same_import_resumes_it(
    engine, settings, big_file, reference
):
    """Ctrl-C of `import` a third of the way in: the command stops there (exit 130). Dagster
    retries a step that an interrupt stopped when it has a RetryPolicy, so the import went on
    to the end of the file. The job waits for the same command, with no attempt spent and no
    error noted."""
    process = cli(settings, "import", str(big_file.path), "--no-embed", "--json",
                  start_new_session=True, preexec_fn=_default_sigint)  # fmt: skip

    def a_third_in():
        assert process.poll() is None, "the import ended before Ctrl-C"
        listing = jobs.list_jobs(engine)
        return listing and listing[0].rows_processed >= ROWS // 3 and listing[0]

    job = wait_for(a_third_in, timeout=240, what="a third of the import", interval=0.05)
    code, out, err = interrupt(process)
    assert code == 130, err[-3000:]
    assert "interrupted; `helix-pipelines import" in err and "resumes the import" in err
    stopped = jobs.get_job(engine, job.id)
    assert json.loads(out.strip().splitlines()[-1])["status"] == stopped.status == "processing"
    assert 0 < stopped.rows_processed < ROWS
    assert (stopped.attempts, stopped.last_error) == (job.attempts, None)
    events = run_events(settings, stopped.dagster_run_id)
    assert "STEP_FAILURE" in events and "STEP_UP_FOR_RETRY" not in events
    code, out, err = finish(cli(settings, "status"))
    assert code == 0 and "no run holds it: recovery resumes it" in out, out + err[-3000:]
    kept = ids_by_source_row(engine, job.id)

    code, out, err = finish(cli(settings, "import", str(big_file.path), "--no-embed", "--json"))
    assert code == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["import_job_id"] == str(job.id)
    assert_like_clean(engine, job.id, reference, kept)
    assert runs_with_status(settings, DagsterRunStatus.STARTED) == []


def test_ctrl_c_stops_embedding_and_leaves_every_pair_pending_for_embed(engine, settings, tmp_path):
    """Ctrl-C of `import` while its embedding requests are in flight (the API takes a second
    to answer each): exit 130 without a step retry, no pair failed or half-claimed, and
    `embed` finishes them."""
    path = write_qa_csv(tmp_path / "small.csv", 600, seed=5, bad_every=10**9).path
    with running_fake_openai(default_dim=settings.embedding_dim) as fake:
        fake.set_latency(1.0)
        env = subprocess_env(
            settings, OPENAI_API_KEY=fake.api_key, OPENAI_BASE_URL=fake.base_url,
            HELIX_EMBEDDING_PROVIDER="openai",
        )  # fmt: skip
        process = subprocess.Popen(
            [sys.executable, "-m", "helix_pipelines.cli", "import", str(path), "--json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, preexec_fn=_default_sigint,
        )  # fmt: skip

        def requests_in_flight():
            assert process.poll() is None, "the import ended before Ctrl-C"
            return fake.stats.in_flight > 0

        wait_for(requests_in_flight, timeout=240, what="embedding requests", interval=0.02)
        code, out, err = interrupt(process)
        assert code == 130, err[-3000:]
        assert "`helix-pipelines embed` embeds its pending pairs" in err
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["status"] == "completed"
        embeddings = summary["embeddings"]
        assert (embeddings["failed"], embeddings["pending"] > 0) == (0, True)
        assert embeddings["completed"] + embeddings["pending"] == summary["pairs_created"]
        with engine.connect() as conn:
            states = dict(conn.execute(sa.text(
                "SELECT embedding_status, count(*) FROM qa_pair GROUP BY 1")).all())  # fmt: skip
        assert states.keys() <= {"pending", "completed"}
        job = jobs.get_job(engine, uuid.UUID(summary["import_job_id"]))
        assert "STEP_UP_FOR_RETRY" not in run_events(settings, job.dagster_run_id)

        fake.set_latency(0.0)
        code, out, err = finish(subprocess.Popen(
            [sys.executable, "-m", "helix_pipelines.cli", "embed", "--json"], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
        assert code == 0, err[-3000:]
    with engine.connect() as conn:
        states = dict(conn.execute(sa.text(
            "SELECT embedding_status, count(*) FROM qa_pair GROUP BY 1")).all())  # fmt: skip
    assert states == {"completed": summary["pairs_created"]}
