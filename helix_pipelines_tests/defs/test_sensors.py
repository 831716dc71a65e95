"""The sensors, evaluated with Dagster's test contexts against the real test database."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import (
    DagsterInstance,
    SensorResult,
    build_run_status_sensor_context,
    build_sensor_context,
    job,
    op,
)

from helix_pipelines.db import jobs
from helix_pipelines.defs.interrupts import interrupts_end_the_step
from helix_pipelines.defs.resources import DatabaseResource, ImportSettingsResource
from helix_pipelines.defs.sensors import (
    import_run_failure_sensor,
    inbox_sensor,
    stale_imports_sensor,
)
from helix_pipelines.pipeline.inbox import storage_path
from helix_pipelines.pipeline.intake import intake_file
from helix_pipelines_tests.support.db_fixtures import TEST_EMBEDDING_DIM, subprocess_env

SAFE_KEY = re.compile(r"^[A-Za-z0-9._-]+$")
CSV = "question,answer\nWhat is Helix?,A knowledge base.\nHow to import?,Drop a file.\n"


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path


@pytest.fixture
def inbox(home) -> Path:
    path = home / "inbox"
    path.mkdir()
    return path


@pytest.fixture
def resources(engine, database_url, home, inbox) -> dict:
    return {
        "database": DatabaseResource(
            helix_home=str(home), database_url=database_url, embedding_dim=TEST_EMBEDDING_DIM
        ),
        "import_settings": ImportSettingsResource(
            inbox_dir=str(inbox), files_dir=str(home / "files"), max_attempts=2
        ),
    }


class Inbox:
    """Ticks of the inbox sensor, carrying the cursor from one to the next like the daemon."""

    def __init__(self, instance, resources):
        self.instance, self.resources, self.cursor = instance, resources, None

    def tick(self) -> SensorResult:
        context = build_sensor_context(
            instance=self.instance, resources=self.resources, cursor=self.cursor
        )
        result = inbox_sensor(context)
        self.cursor = result.cursor
        return result

    def two_ticks(self) -> SensorResult:
        assert not self.tick().run_requests
        return self.tick()


@pytest.fixture
def sensor(instance, resources) -> Inbox:
    return Inbox(instance, resources)


def all_jobs(engine) -> list[jobs.Job]:
    return jobs.list_jobs(engine, limit=10_000)


def test_a_file_is_taken_after_two_unchanged_looks(engine, sensor, inbox, home):
    (inbox / "faq.csv").write_text(CSV)
    first = sensor.tick()
    assert not first.run_requests and not all_jobs(engine)
    second = sensor.tick()
    [job] = all_jobs(engine)
    [request] = second.run_requests
    assert request.partition_key == job.partition_key
    [added] = second.dynamic_partitions_requests
    assert added.partition_keys == [job.partition_key]
    assert (job.status, job.source_name) == ("pending", "faq.csv")
    assert Path(job.source_path).read_text() == CSV
    assert Path(job.source_path).is_relative_to(home / "files")
    assert not (inbox / "faq.csv").exists()


def test_a_file_still_growing_is_not_taken(engine, sensor, inbox):
    growing = inbox / "upload.csv"
    growing.write_text(CSV)
    sensor.tick()
    with open(growing, "a") as handle:
        handle.write("One more?,Yes.\n")
    assert not sensor.tick().run_requests
    assert sensor.tick().run_requests
    assert all_jobs(engine)[0].source_name == "upload.csv"


def test_part_and_hidden_files_are_ignored(engine, sensor, inbox):
    (inbox / "big.csv.part").write_text(CSV)
    (inbox / ".hidden.csv").write_text(CSV)
    sensor.tick()
    assert not sensor.tick().run_requests
    assert not all_jobs(engine)
    assert (inbox / "big.csv.part").exists()


def test_the_same_content_dropped_again_starts_no_second_job(engine, sensor, inbox):
    (inbox / "faq.csv").write_text(CSV)
    first = sensor.two_ticks()
    (inbox / "faq again.csv").write_text(CSV)
    second = sensor.two_ticks()
    [job] = all_jobs(engine)
    assert {r.partition_key for r in first.run_requests + second.run_requests} == {
        job.partition_key
    }
    assert not second.dynamic_partitions_requests or not (
        set(second.dynamic_partitions_requests[0].partition_keys) - {job.partition_key}
    )
    assert not (inbox / "faq again.csv").exists()


def test_an_empty_file_is_rejected_with_a_reason(engine, sensor, inbox):
    (inbox / "empty.csv").write_bytes(b"")
    result = sensor.two_ticks()
    assert not result.run_requests and not all_jobs(engine)
    assert (inbox / "rejected" / "empty.csv").exists()
    reason = (inbox / "rejected" / "empty.csv.reason.txt").read_text()
    assert "empty" in reason


AWKWARD_NAMES = ["a b;c,ü.csv", "a...b.csv", "x..y...z,,.csv", "ＦＡＱ.csv", "--.csv"]


@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_awkward_names_get_safe_keys_and_storage(engine, sensor, inbox, home, name):
    (inbox / name).write_text(CSV)
    [request] = sensor.two_ticks().run_requests
    [job] = all_jobs(engine)
    assert job.source_name == name
    assert_safe_key(request.partition_key)
    assert Path(job.source_path).resolve().is_relative_to((home / "files").resolve())


def test_a_path_climbing_name_is_stored_inside_files_dir(engine, tmp_path):
    files = tmp_path / "files"
    stored = storage_path(files, "../../etc/passwd.csv", "ab" * 32)
    assert stored.resolve().is_relative_to(files.resolve())
    assert_safe_key(stored.name)
    dropped = tmp_path / "drop" / "passwd.csv"
    dropped.parent.mkdir()
    dropped.write_text(CSV)
    job, _ = intake_file(engine, dropped, files_dir=files, max_file_bytes=10**6, move=True)
    assert_safe_key(job.partition_key)


def assert_safe_key(key: str) -> None:
    assert SAFE_KEY.match(key), key
    assert "..." not in key and "," not in key


def test_thousands_of_files_cost_bounded_work_per_tick(engine, sensor, inbox, resources):
    limit = resources["import_settings"].inbox_files_per_tick
    for number in range(3000):
        (inbox / f"tiny-{number:05d}.csv").write_text(f"question,answer\nq{number}?,a{number}.\n")
    began = time.monotonic()
    result = sensor.two_ticks()
    elapsed = time.monotonic() - began
    assert len(result.run_requests) == limit
    assert len(all_jobs(engine)) == limit
    assert elapsed < 20, f"two ticks over 3000 files took {elapsed:.1f}s"
    assert len(list(inbox.glob("*.csv"))) == 3000 - limit


# -- stale imports -----------------------------------------------------------------------------


STARTS_AND_DIES = """
import os, sys
from helix_pipelines.db import jobs
from helix_pipelines.db.engine import create_app_engine, with_driver
engine = create_app_engine(with_driver(os.environ["HELIX_DATABASE_URL"], "psycopg"))
jobs.start_job(engine, sys.argv[1], "a-run-that-died", stale_after_s=300)
"""


def test_a_dead_runs_import_goes_back_to_pending_and_is_requested(
    engine, instance, resources, inbox, settings
):
    job = take_one_file(engine, inbox, resources)
    # A real process takes the job and exits: its heartbeat names a process that is gone.
    subprocess.run([sys.executable, "-c", STARTS_AND_DIES, str(job.id)],
                   env=subprocess_env(settings), check=True, timeout=60)  # fmt: skip
    assert jobs.get_job(engine, job.id).status == "processing"
    context = build_sensor_context(instance=instance, resources=resources)
    result = stale_imports_sensor(context)
    assert [r.partition_key for r in result.run_requests] == [job.partition_key]
    recovered = jobs.get_job(engine, job.id)
    assert (recovered.status, recovered.dagster_run_id) == ("pending", None)


def test_a_fresh_processing_import_is_left_alone(engine, instance, resources, inbox):
    job = take_one_file(engine, inbox, resources)
    jobs.start_job(engine, job.id, "a-live-run", stale_after_s=300)
    result = stale_imports_sensor(build_sensor_context(instance=instance, resources=resources))
    assert not result.run_requests
    assert jobs.get_job(engine, job.id).status == "processing"


def take_one_file(engine, inbox, resources) -> jobs.Job:
    path = inbox / "faq.csv"
    path.write_text(CSV)
    settings = resources["import_settings"]
    job, _ = intake_file(
        engine, path, files_dir=Path(settings.files_dir), max_file_bytes=10**6, move=True
    )
    return job


# -- failed import runs ----------------------------------------------------------------------------


@op
def fails_like_an_import():
    raise RuntimeError("the database went away mid-batch")


@job
def failing_job():
    fails_like_an_import()


@op
def interrupted_like_an_import():
    with interrupts_end_the_step("the import"):
        raise KeyboardInterrupt  # where Ctrl-C or SIGTERM strikes the step's code


@job
def interrupted_job():
    interrupted_like_an_import()


def fail_a_run(instance, resources, partition_key: str, failing=failing_job):
    result = failing.execute_in_process(
        instance=instance, raise_on_error=False, tags={"dagster/partition": partition_key}
    )
    context = build_run_status_sensor_context(
        sensor_name=import_run_failure_sensor.name,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
        resources=resources,
    ).for_run_failure()
    import_run_failure_sensor(context)


def test_a_failed_run_is_recorded_then_the_job_fails_after_max_attempts(
    engine, instance, resources, inbox
):
    job = take_one_file(engine, inbox, resources)
    fail_a_run(instance, resources, job.partition_key)
    once = jobs.get_job(engine, job.id)
    assert (once.status, once.attempts) == ("pending", 1)
    assert "the database went away mid-batch" in once.last_error
    fail_a_run(instance, resources, job.partition_key)
    twice = jobs.get_job(engine, job.id)
    assert (twice.status, twice.attempts) == ("failed", 2)
    assert twice.finished_at is not None


def test_an_interrupted_run_is_left_to_recovery_with_no_attempt_spent(
    engine, instance, resources, inbox
):
    """Ctrl-C, SIGTERM or Terminate stopped the run: not a failure of the import. Its job is
    held by nobody once the process ends, and recovery resumes it; max_attempts (2 here) is
    not spent on it."""
    job = take_one_file(engine, inbox, resources)
    for _ in range(3):
        fail_a_run(instance, resources, job.partition_key, failing=interrupted_job)
    after = jobs.get_job(engine, job.id)
    assert (after.status, after.attempts, after.last_error) == (job.status, 0, None)
