"""Every change shows on its partition: after the Launchpad's embed_pending, a run over a range
of partitions (what a backfill starts), `helix-pipelines embed`, `import --no-embed` and a
rollback, the partition's latest materialization and check results, read back through the
Dagster instance, match the database."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    instance_for_test,
    materialize,
    partition_loading_context,
)
from dagster._core.definitions.asset_key import AssetCheckKey
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.definitions.automation_tick_evaluation_context import (
    build_run_requests_with_backfill_policies,
)
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.event_api import PartitionKeyFilter
from dagster._core.storage.event_log.base import AssetRecordsFilter

from helix_pipelines.db import jobs
from helix_pipelines.defs.assets import EMBED_PARTITIONS_PER_RUN, qa_embeddings, qa_pairs
from helix_pipelines.defs.ops import embed_pending_job, rollback_import
from helix_pipelines.defs.partitions import import_files
from helix_pipelines.devserver import REPO_ROOT
from helix_pipelines.pipeline.health import (
    ACCOUNTING_CHECK,
    COVERAGE_CHECK,
    DIMENSION_CHECK,
    PENDING_AGE_CHECK,
)
from helix_pipelines_tests.support.db_fixtures import subprocess_env
from helix_pipelines_tests.support.embed_driver import insert_job, sample_pairs, status_counts
from helix_pipelines_tests.support.generate import write_qa_csv
from helix_pipelines_tests.support.resources import local_resources

EMBEDDINGS = AssetKey("qa_embeddings")
PAIRS = AssetKey("qa_pairs")


@pytest.fixture
def instance():
    with instance_for_test() as dagster_instance:
        yield dagster_instance


@pytest.fixture
def resources(settings, tmp_path) -> dict:
    return local_resources(settings.database_url.get_secret_value(), tmp_path)


def latest_materialization(instance: DagsterInstance, asset: AssetKey, key: str) -> dict:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset, asset_partitions=[key]), limit=1
    ).records
    assert records, f"no materialization of {asset.to_user_string()} for {key}"
    metadata = records[0].asset_materialization.metadata
    return {name: value.value for name, value in metadata.items()}


def latest_check(instance: DagsterInstance, asset: AssetKey, check: str, key: str):
    check_key = AssetCheckKey(asset, check)
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [check_key], partition_filter=PartitionKeyFilter(key=key)
    )
    assert check_key in latest, f"no {check} evaluation for {key}"
    evaluation = latest[check_key].event.dagster_event.event_specific_data
    assert evaluation.partition == key
    return evaluation


def assert_partition_matches_database(instance, engine, job_id, key: str) -> None:
    counts = status_counts(engine, job_id)
    shown = latest_materialization(instance, EMBEDDINGS, key)
    assert shown["completed"] == counts.get("completed", 0) == shown["dagster/row_count"]
    assert shown["pending"] == counts.get("pending", 0)
    assert shown["failed"] == counts.get("failed", 0)
    coverage = latest_check(instance, EMBEDDINGS, COVERAGE_CHECK, key)
    assert coverage.passed is (counts.get("completed", 0) == sum(counts.values()))
    assert coverage.metadata["completed"].value == counts.get("completed", 0)
    assert latest_check(instance, EMBEDDINGS, DIMENSION_CHECK, key).passed
    assert latest_check(instance, EMBEDDINGS, PENDING_AGE_CHECK, key).passed


def test_embed_pending_reports_every_partition_it_touched(engine, instance, resources):
    first_id, first = insert_job(engine, sample_pairs(7))
    second_id, second = insert_job(engine, sample_pairs(3, tag="second "))
    instance.add_dynamic_partitions(import_files.name, [first, second])

    result = embed_pending_job.execute_in_process(instance=instance, resources=resources)

    assert result.success
    for job_id, key, n in ((first_id, first, 7), (second_id, second, 3)):
        assert status_counts(engine, job_id) == {"completed": n}
        assert_partition_matches_database(instance, engine, job_id, key)
        assert latest_materialization(instance, EMBEDDINGS, key)["run_embedded"] == 10


def test_a_run_over_a_range_records_each_partition_as_it_stands(engine, instance, resources):
    made = [insert_job(engine, sample_pairs(n, tag=f"{n} ")) for n in (2, 5, 4)]
    keys = [key for _, key in made]
    instance.add_dynamic_partitions(import_files.name, keys)

    result = materialize(
        [qa_embeddings], instance=instance, resources=resources,
        tags={"dagster/asset_partition_range_start": keys[0],
              "dagster/asset_partition_range_end": keys[-1]},
    )  # fmt: skip

    assert result.success
    for (job_id, key), n in zip(made, (2, 5, 4), strict=True):
        assert status_counts(engine, job_id) == {"completed": n}
        assert_partition_matches_database(instance, engine, job_id, key)
        assert latest_materialization(instance, EMBEDDINGS, key)["embedded"] == n


def test_a_backfill_of_50_partitions_starts_at_most_two_runs(engine, instance):
    keys = [f"backfill-{i:02d}" for i in range(50)]
    instance.add_dynamic_partitions(import_files.name, keys)
    graph = AssetGraph.from_assets([qa_pairs, qa_embeddings])

    with partition_loading_context(dynamic_partitions_store=instance):
        requests = build_run_requests_with_backfill_policies(
            [AssetKeyPartitionKey(EMBEDDINGS, key) for key in keys], graph, instance
        )

    assert qa_embeddings.backfill_policy.max_partitions_per_run == EMBED_PARTITIONS_PER_RUN
    assert len(requests) <= math.ceil(50 / EMBED_PARTITIONS_PER_RUN) == 2
    covered = []
    for request in requests:
        start = request.tags["dagster/asset_partition_range_start"]
        end = request.tags["dagster/asset_partition_range_end"]
        covered += keys[keys.index(start) : keys.index(end) + 1]
    assert covered == keys


def test_a_rollback_shows_on_the_partition_and_its_checks_say_so(engine, instance, resources):
    job_id, key = insert_job(engine, sample_pairs(6))
    instance.add_dynamic_partitions(import_files.name, [key])
    embed_pending_job.execute_in_process(instance=instance, resources=resources)

    result = rollback_import.execute_in_process(
        run_config={"ops": {"rollback_import_op": {"config": {"import_job": key}}}},
        instance=instance, resources=resources,
    )  # fmt: skip

    assert result.success
    assert jobs.get_job(engine, job_id).status == "rolled_back"
    pairs = latest_materialization(instance, PAIRS, key)
    assert pairs["status"] == "rolled_back" and pairs["dagster/row_count"] == 0
    assert pairs["pairs_deleted"] == 6
    embeddings = latest_materialization(instance, EMBEDDINGS, key)
    assert embeddings["status"] == "rolled_back" and embeddings["dagster/row_count"] == 0
    accounting = latest_check(instance, PAIRS, ACCOUNTING_CHECK, key)
    assert not accounting.passed and "rolled back" in accounting.description
    for check in (COVERAGE_CHECK, DIMENSION_CHECK, PENDING_AGE_CHECK):
        evaluation = latest_check(instance, EMBEDDINGS, check, key)
        assert not evaluation.passed and evaluation.metadata["status"].value == "rolled_back"


def _cli(settings, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "helix_pipelines.cli", *args]
    return subprocess.run(
        command, env=subprocess_env(settings, HELIX_EMBEDDING_PROVIDER="local"),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def _cli_instance(settings) -> DagsterInstance:
    home = settings.home / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    return DagsterInstance.from_config(str(home))


@pytest.mark.slow
def test_cli_embed_and_rollback_report_runless_events(engine, settings):
    job_id, key = insert_job(engine, sample_pairs(5))
    with _cli_instance(settings) as instance:
        instance.add_dynamic_partitions(import_files.name, [key])

    done = _cli(settings, "embed", "--json")
    assert done.returncode == 0, done.stderr[-3000:]

    with _cli_instance(settings) as instance:
        assert_partition_matches_database(instance, engine, job_id, key)
        shown = latest_materialization(instance, EMBEDDINGS, key)
        assert shown["reported_by"] == "helix-pipelines embed" and shown["run_embedded"] == 5

    done = _cli(settings, "rollback", key, "--json")
    assert done.returncode == 0, done.stderr[-3000:]

    with _cli_instance(settings) as instance:
        assert latest_materialization(instance, PAIRS, key)["status"] == "rolled_back"
        assert not latest_check(instance, PAIRS, ACCOUNTING_CHECK, key).passed
        assert not latest_check(instance, EMBEDDINGS, COVERAGE_CHECK, key).passed


@pytest.mark.slow
def test_import_no_embed_shows_accounting_and_the_rejected_rows(engine, settings, tmp_path):
    generated = write_qa_csv(tmp_path / "faq.csv", 300, seed=3)

    done = _cli(settings, "import", str(generated.path), "--no-embed", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    [job] = jobs.list_jobs(engine)
    stored = jobs.row_errors_of(engine, job.id)
    assert len(stored) == generated.bad_rows > 0

    with _cli_instance(settings) as instance:
        accounting = latest_check(instance, PAIRS, ACCOUNTING_CHECK, job.partition_key)
        assert accounting.passed and accounting.metadata["row_errors"].value == len(stored)
        shown = latest_materialization(instance, PAIRS, job.partition_key)
    assert shown["dagster/row_count"] == job.pairs_created
    assert shown["source_sha256"] == job.source_sha256
    assert [c.name for c in shown["dagster/column_schema"].columns][:3] == [
        "question", "answer", "category",
    ]  # fmt: skip
    table = shown["first_row_errors"]
    rows = [(r.data["source_row"], r.data["error_code"]) for r in table.records]
    assert rows == [(e["source_row"], e["error_code"]) for e in stored]

    export = tmp_path / "errors.csv"
    done = _cli(settings, "status", job.partition_key, "--errors-csv", str(export))
    assert done.returncode == 0, done.stderr[-3000:]
    import pandas as pd

    exported = pd.read_csv(export)
    assert list(exported.columns) == ["source_row", "error_code", "message", "raw_excerpt"]
    assert exported["source_row"].tolist() == [e["source_row"] for e in stored]


def test_a_launchpad_column_mapping_and_keep_duplicates_reach_the_import(
    engine, instance, resources, tmp_path
):
    from helix_pipelines.pipeline.intake import intake_file

    source = tmp_path / "odd headers.csv"
    source.write_text("Frage,Antwort,Notiz\nWie?,So.,x\nWo?,Da.,y\nWie?,So.,z\n", "utf-8")
    job, _ = intake_file(engine, source, files_dir=tmp_path / "files", max_file_bytes=10**6,
                         move=False)  # fmt: skip
    instance.add_dynamic_partitions(import_files.name, [job.partition_key])
    config = {"column_mapping": {"question": "Frage", "answer": "Antwort"},
              "keep_duplicates": True}  # fmt: skip

    result = materialize(
        [qa_pairs], partition_key=job.partition_key, instance=instance, resources=resources,
        run_config={"ops": {"qa_pairs": {"config": config}}},
    )  # fmt: skip

    assert result.success
    done = jobs.get_job(engine, job.id)
    assert (done.pairs_created, done.duplicates_skipped, done.row_errors) == (3, 0, 0)
    assert done.options == config  # a retried or resumed run reads the file the same way
    shown = latest_materialization(instance, PAIRS, job.partition_key)
    schema = {c.name: c.description for c in shown["dagster/column_schema"].columns}
    assert schema == {"Frage": "qa_pair.question", "Antwort": "qa_pair.answer", "Notiz": "ignored"}
    assert latest_check(instance, PAIRS, ACCOUNTING_CHECK, job.partition_key).passed


def test_a_run_that_stopped_early_records_what_it_did_then_fails(
    engine, instance, database_url, tmp_path, fake_openai
):
    from helix_pipelines_tests.defs.test_embedding_defs import resources as openai_resources

    job_id, key = insert_job(engine, sample_pairs(8))
    instance.add_dynamic_partitions(import_files.name, [key])
    fake_openai.set_fault_rates({"503": 1.0})
    res = openai_resources(database_url, tmp_path, fake_openai, breaker_failures=2)

    result = materialize(
        [qa_embeddings], partition_key=key, instance=instance, resources=res,
        raise_on_error=False,
    )  # fmt: skip

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "stopped early" in failure.step_failure_data.user_failure_data.description
    assert fake_openai.stats.requests <= 3  # no step retry on top of the open circuit
    shown = latest_materialization(instance, EMBEDDINGS, key)
    assert shown["stopped_early"] is True and "circuit" in shown["stopped_reason"]
    assert shown["pending"] == 8 == status_counts(engine, job_id)["pending"]
    assert not latest_check(instance, EMBEDDINGS, COVERAGE_CHECK, key).passed
