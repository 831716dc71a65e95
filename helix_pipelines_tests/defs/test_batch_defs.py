"""The Batch API in Dagster: qa_embeddings chooses batch or sync per run, the sensor polls at a
bounded rate and requests a collection, the collection run reports the partition, cancel."""

from __future__ import annotations

import pytest
from dagster import RunRequest, SkipReason, build_sensor_context, instance_for_test, materialize
from prometheus_client import generate_latest

from helix_pipelines import metrics
from helix_pipelines.db import embedding_batches as batches
from helix_pipelines.defs.assets import COVERAGE_CHECK, EMBED_MODE_TAG, qa_embeddings
from helix_pipelines.defs.batches import (
    cancel_embedding_batches,
    collect_embedding_batches,
    embedding_batches_sensor,
)
from helix_pipelines.defs.partitions import import_files
from helix_pipelines.defs.resources import (
    DatabaseResource,
    EmbeddingResource,
    ImportSettingsResource,
)
from helix_pipelines_tests.support.db_fixtures import TEST_EMBEDDING_DIM
from helix_pipelines_tests.support.embed_driver import (
    insert_job,
    mismatched_vectors,
    sample_pairs,
    status_counts,
    stored_pairs,
)

DIM = TEST_EMBEDDING_DIM


@pytest.fixture(scope="module")
def instance():
    with instance_for_test() as dagster_instance:  # one instance for the module: cheaper
        yield dagster_instance


def resources(database_url, home, fake, **embedding) -> dict:
    return {
        "database": DatabaseResource(
            helix_home=str(home), database_url=database_url, embedding_dim=DIM
        ),
        "embedding": EmbeddingResource(
            provider="openai",
            api_key=fake.api_key,
            base_url=fake.base_url,
            dim=DIM,
            batch_threshold=10,
            batch_api=True,  # the in-suite server has one; auto assumes it only of OpenAI's
            **embedding,
        ),  # fmt: skip
        "import_settings": ImportSettingsResource(
            inbox_dir=str(home / "inbox"), files_dir=str(home / "files")
        ),
    }


def materialize_partition(instance, key, res, **kwargs):
    instance.add_dynamic_partitions(import_files.name, [key])
    return materialize([qa_embeddings], partition_key=key, instance=instance, resources=res,
                       **kwargs)  # fmt: skip


def tick(instance, res):
    return embedding_batches_sensor(build_sensor_context(instance=instance, resources=res))


def test_auto_sends_a_backlog_to_batches_and_the_sensor_collects_it(
    engine, database_url, tmp_path, fake_openai, instance
):
    res = resources(database_url, tmp_path, fake_openai, batch_poll_s=3600.0)
    backlog, backlog_key = insert_job(engine, sample_pairs(12, "backlog "))
    fresh, fresh_key = insert_job(engine, sample_pairs(5, "fresh "))
    fake_openai.batch.delay_s = 1e9  # never finishes until told

    big = materialize_partition(instance, backlog_key, res)
    small = materialize_partition(instance, fresh_key, res)

    assert status_counts(engine, backlog) == {"batched": 12}
    assert status_counts(engine, fresh) == {"completed": 5}  # fresh imports stay synchronous
    (event,) = big.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["embed_mode"] == "batch" and metadata["pairs_batched"] == 12
    assert metadata["estimated_cost_usd"] > 0 and metadata["in_batches"] == 12
    coverage = {e.check_name: e for e in big.get_asset_check_evaluations()}[COVERAGE_CHECK]
    assert coverage.metadata["in_batches"].value == 12
    assert small.success and fake_openai.batch.stats.batches_created == 1
    scrape = generate_latest(
        metrics.build_registry(tmp_path, engine, lambda: {"state": "closed"})
    ).decode()
    assert "helix_embedding_batches_in_flight 1.0" in scrape
    assert "helix_embedding_batch_pairs_waiting 12.0" in scrape
    assert "helix_embedding_batch_oldest_age_seconds" in scrape

    assert isinstance(tick(instance, res), SkipReason)  # in progress
    calls = fake_openai.batch.stats.calls
    assert isinstance(tick(instance, res), SkipReason)
    assert fake_openai.batch.stats.calls == calls  # polled at most every batch_poll_s

    fake_openai.batch.delay_s = 0.0
    res = resources(database_url, tmp_path, fake_openai, batch_poll_s=0.0)
    request = tick(instance, res)
    assert isinstance(request, RunRequest)
    run = collect_embedding_batches.execute_in_process(instance=instance, resources=res)

    assert run.success
    pairs = stored_pairs(engine, backlog)
    assert [p.status for p in pairs] == ["completed"] * 12 and mismatched_vectors(pairs, DIM) == []
    reported = instance.get_latest_materialization_event(qa_embeddings.key)
    assert reported.asset_materialization.partition == backlog_key
    reported_metadata = reported.asset_materialization.metadata
    assert reported_metadata["completed"].value == 12
    assert reported_metadata["run_estimated_cost_usd"].value > 0
    assert isinstance(tick(instance, res), SkipReason)


def test_tag_forces_batch_and_cancel_returns_the_pairs(
    engine, database_url, tmp_path, fake_openai, instance
):
    res = resources(database_url, tmp_path, fake_openai, batch_poll_s=0.0)
    job_id, key = insert_job(engine, sample_pairs(3, "tagged "))
    fake_openai.batch.delay_s = 1e9

    materialize_partition(instance, key, res, tags={EMBED_MODE_TAG: "batch"})
    (row,) = batches.list_batches(engine, batches.LIVE_REMOTE)
    cancel = cancel_embedding_batches.execute_in_process(
        instance=instance, resources=res,
        run_config={"ops": {"cancel_embedding_batches_op": {"config": {
            "batch_id": row.remote_batch_id}}}},
    )  # fmt: skip
    assert cancel.success and fake_openai.batch.stats.batches_cancelled == 1
    assert isinstance(tick(instance, res), RunRequest)
    assert collect_embedding_batches.execute_in_process(instance=instance, resources=res).success

    assert status_counts(engine, job_id) == {"pending": 3}
    sync = materialize_partition(
        instance, key, res, run_config={"ops": {"qa_embeddings": {"config": {"mode": "sync"}}}}
    )
    assert sync.success and status_counts(engine, job_id) == {"completed": 3}
