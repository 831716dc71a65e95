"""Errors go where they are handled, and a file that breaks part-way keeps its pairs:

- an unreadable file fails its step once (no RetryPolicy retry), the run-failure sensor fails
  the import at once, and recovery never requests it again;
- a JSON file damaged after 5,000 records keeps them (the damage is one row error) and the
  pending-embeddings sensor gets them embedded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    Definitions,
    build_run_status_sensor_context,
    build_sensor_context,
    in_process_executor,
)

from helix_pipelines.db import jobs
from helix_pipelines.defs.assets import qa_embeddings, qa_pairs
from helix_pipelines.defs.jobs import embed_job, import_job
from helix_pipelines.defs.partitions import import_files
from helix_pipelines.defs.sensors import (
    import_run_failure_sensor,
    pending_embeddings_sensor,
    stale_imports_sensor,
)
from helix_pipelines.pipeline.intake import intake_file
from helix_pipelines_tests.support.resources import local_resources

pytestmark = pytest.mark.slow


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def resources(engine, database_url, tmp_path) -> dict:
    return local_resources(database_url, tmp_path, max_attempts=3)


def take(engine, resources, path: Path, instance) -> jobs.Job:
    job, _ = intake_file(engine, path, files_dir=Path(resources["import_settings"].files_dir),
                         max_file_bytes=10**9, move=False)  # fmt: skip
    instance.add_dynamic_partitions(import_files.name, [job.partition_key])
    return job


def run(job_def, instance, resources, partition_key, *assets):
    defs = Definitions(assets=[qa_pairs, qa_embeddings], jobs=[import_job, embed_job],
                       resources=resources, executor=in_process_executor)  # fmt: skip
    return defs.resolve_job_def(job_def.name).execute_in_process(
        instance=instance, partition_key=partition_key, raise_on_error=False,
        asset_selection=[AssetKey(a) for a in assets] or None,
    )  # fmt: skip


def test_an_unreadable_file_fails_once_and_is_never_requested_again(
    engine, instance, resources, tmp_path
):
    junk = tmp_path / "junk.csv"
    junk.write_bytes(bytes(range(256)) * 64)
    job = take(engine, resources, junk, instance)

    result = run(import_job, instance, resources, job.partition_key, "qa_pairs")

    assert not result.success
    retries = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
    assert retries == []
    context = build_run_status_sensor_context(
        sensor_name=import_run_failure_sensor.name, dagster_instance=instance,
        dagster_run=result.dagster_run, dagster_event=result.get_run_failure_event(),
        resources=resources,
    ).for_run_failure()  # fmt: skip
    import_run_failure_sensor(context)
    failed = jobs.get_job(engine, job.id)
    assert failed.status == "failed"
    assert "junk.csv" in failed.last_error
    assert not stale_imports_sensor(
        build_sensor_context(instance=instance, resources=resources)
    ).run_requests


def damaged_json(path: Path, good: int) -> Path:
    """An array of `good` records, then bytes no JSON reader can get past."""
    records = [{"question": f"How do I fix problem {i}?", "answer": f"Restart step {i}."}
               for i in range(good)]  # fmt: skip
    text = json.dumps(records)[:-1] + ', {"question": "cut here", "answer": \x00\x01 ]]]'
    path.write_text(text)
    return path


def test_a_json_file_damaged_after_5000_records_keeps_them_and_they_are_embedded(
    engine, instance, resources, tmp_path
):
    job = take(engine, resources, damaged_json(tmp_path / "damaged.json", 5000), instance)

    imported = run(import_job, instance, resources, job.partition_key, "qa_pairs")

    assert imported.success
    done = jobs.get_job(engine, job.id)
    assert (done.status, done.pairs_created, done.row_errors, done.rows_total) == (
        "completed_with_errors", 5000, 1, 5001,
    )  # fmt: skip
    [damage] = jobs.row_errors_of(engine, job.id)
    assert (damage["source_row"], damage["error_code"]) == (5001, "file_damaged")
    assert "reading stopped after 5000 records" in damage["message"]

    requests = pending_embeddings_sensor(build_sensor_context(instance=instance,
                                                              resources=resources))  # fmt: skip
    assert [r.partition_key for r in requests.run_requests] == [job.partition_key]
    embedded = run(embed_job, instance, resources, job.partition_key)
    assert embedded.success
    assert jobs.embedding_counts(engine, job.id) == {"completed": 5000, "failed": 0, "pending": 0}
