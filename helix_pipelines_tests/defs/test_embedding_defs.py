"""The Dagster side of embedding: the qa_embeddings asset and its checks, the pending-embeddings
sensor through an outage, and a change of model."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from dagster import (
    AssetCheckSeverity,
    DagsterInstance,
    SensorResult,
    SkipReason,
    build_sensor_context,
    instance_for_test,
    materialize,
)

from helix_pipelines.core.retry import RetryBudget
from helix_pipelines.db import jobs
from helix_pipelines.defs.assets import (
    ACCOUNTING_CHECK,
    COVERAGE_CHECK,
    DIMENSION_CHECK,
    PENDING_AGE_CHECK,
    embedding_checks,
    qa_embeddings,
)
from helix_pipelines.defs.partitions import import_files
from helix_pipelines.defs.resources import (
    DatabaseResource,
    EmbeddingResource,
    ImportSettingsResource,
)
from helix_pipelines.defs.sensors import pending_embeddings_sensor
from helix_pipelines.pipeline import health
from helix_pipelines.pipeline.embedding_setup import BREAKER_NAME
from helix_pipelines_tests.support.db_fixtures import TEST_EMBEDDING_DIM
from helix_pipelines_tests.support.embed_driver import (
    Embedder,
    insert_job,
    mismatched_vectors,
    openai_setup,
    sample_pairs,
    status_counts,
    stored_pairs,
)
from helix_pipelines_tests.support.fake_openai import FakeOpenAI

DIM = TEST_EMBEDDING_DIM
POISON = "POISONED"


@pytest.fixture
def instance():
    with instance_for_test() as dagster_instance:
        yield dagster_instance


def resources(database_url: str, helix_home, fake: FakeOpenAI, **embedding) -> dict:
    return {
        "database": DatabaseResource(
            helix_home=str(helix_home), database_url=database_url, embedding_dim=DIM
        ),
        "embedding": EmbeddingResource(
            provider="openai", api_key=fake.api_key, base_url=fake.base_url, dim=DIM, **embedding
        ),
        "import_settings": ImportSettingsResource(
            inbox_dir=str(helix_home / "inbox"), files_dir=str(helix_home / "files")
        ),
    }


def materialize_embeddings(instance: DagsterInstance, key: str, res: dict):
    if not instance.has_dynamic_partition(import_files.name, key):
        instance.add_dynamic_partitions(import_files.name, [key])
    return materialize([qa_embeddings], partition_key=key, instance=instance, resources=res)


def checks_by_name(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def tick(instance, res):
    return pending_embeddings_sensor(build_sensor_context(instance=instance, resources=res))


def poisoned_pairs(count: int, bad: int) -> list[tuple[str, str]]:
    pairs = sample_pairs(count)
    for row in range(bad):
        pairs[row] = (f"question {row} {POISON}", "answer")
    return pairs


@pytest.mark.parametrize(
    ("bad", "passed", "severity"),
    [(0, True, None), (1, False, AssetCheckSeverity.WARN), (3, False, AssetCheckSeverity.ERROR)],
)
def test_coverage_check_passes_warns_or_errors(
    engine, instance, database_url, tmp_path, fake_openai, bad, passed, severity
):
    job_id, key = insert_job(engine, poisoned_pairs(100, bad))
    fake_openai.set_poison(POISON)
    res = resources(database_url, tmp_path, fake_openai, coverage_error_threshold=0.98)

    result = materialize_embeddings(instance, key, res)

    coverage = checks_by_name(result)[COVERAGE_CHECK]
    assert coverage.passed is passed
    if severity is not None:
        assert coverage.severity == severity
    metadata = {k: v.value for k, v in coverage.metadata.items()}
    assert (metadata["completed"], metadata["failed"], metadata["pending"]) == (100 - bad, bad, 0)
    if bad:
        assert POISON in metadata["commonest_failures"][0]["reason"]
        assert metadata["commonest_failures"][0]["pairs"] == bad
    materialization = result.asset_materializations_for_node("qa_embeddings")[0]
    assert materialization.metadata["embedded"].value == 100 - bad
    assert materialization.metadata["circuit_state"].value == "closed"


def test_dimension_and_accounting_checks(engine, instance, database_url, tmp_path, fake_openai):
    job_id, key = insert_job(engine, sample_pairs(10))
    res = resources(database_url, tmp_path, fake_openai)
    checks = checks_by_name(materialize_embeddings(instance, key, res))
    assert checks[DIMENSION_CHECK].passed and checks[PENDING_AGE_CHECK].passed
    assert ACCOUNTING_CHECK not in checks  # it sits on qa_pairs now
    assert {c.partition for c in checks.values()} == {key}

    wider = EmbeddingResource(provider="openai", api_key="unused", dim=DIM + 1)
    _unbalance_accounting(engine, job_id)
    by_name = {c.check_name: c for c in embedding_checks(engine, job_id, wider)}

    assert not by_name[DIMENSION_CHECK].passed
    assert by_name[DIMENSION_CHECK].metadata["wrong_dimension"].value == 10
    assert not health.accounting(jobs.get_job(engine, job_id)).passed


def test_the_oldest_pending_pair_warns_then_errors(engine):
    job_id, _ = insert_job(engine, sample_pairs(3))
    res = EmbeddingResource(
        provider="openai", api_key="unused", dim=DIM, pending_age_warn_s=60,
        pending_age_error_s=600,
    )  # fmt: skip

    def age_check(seconds_ago: float):
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE qa_pair SET created_at = now() - make_interval(secs => :s) "
                    "WHERE import_job_id = :j"
                ),
                {"s": seconds_ago, "j": job_id},
            )
        return {c.check_name: c for c in embedding_checks(engine, job_id, res)}[PENDING_AGE_CHECK]

    assert age_check(10).passed
    warned = age_check(120)
    assert not warned.passed and warned.severity == AssetCheckSeverity.WARN
    errored = age_check(1200)
    assert not errored.passed and errored.severity == AssetCheckSeverity.ERROR
    assert errored.metadata["oldest_pending_age_s"].value >= 1200


def _unbalance_accounting(engine, job_id: uuid.UUID) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE import_job SET rows_total = rows_total + 1 WHERE id = :id"),
            {"id": job_id},
        )


def test_an_outage_leaves_pairs_pending_and_the_sensor_finishes_the_work(
    engine, instance, database_url, tmp_path, fake_openai
):
    job_id, key = insert_job(engine, sample_pairs(30))
    res = resources(database_url, tmp_path, fake_openai)
    fake_openai.set_fault_rates({"503": 1.0})
    setup = openai_setup(fake_openai.base_url, fake_openai.api_key, DIM, breaker_failures=3)
    retry = RetryBudget(attempts=10, initial_s=0.001, max_s=0.005, jitter_s=0, deadline_s=60)

    outage = Embedder(engine, setup).run(job_id, retry=retry)

    assert outage.circuit_open and "circuit" in outage.stopped_reason
    assert status_counts(engine, job_id) == {"pending": 30}
    assert {p.attempts for p in stored_pairs(engine, job_id)} == {0}  # an outage burns none
    requests_during_outage = fake_openai.stats.requests
    assert requests_during_outage <= 4  # threshold 3 (+1 in flight): no hammering
    assert isinstance(tick(instance, res), SkipReason)

    fake_openai.set_fault_rates({})  # the service is back, but the breaker is still open
    assert isinstance(tick(instance, res), SkipReason)
    _let_recovery_time_pass(engine, seconds=31)
    requested = tick(instance, res)

    assert isinstance(requested, SensorResult)
    assert [r.partition_key for r in requested.run_requests] == [key]
    result = materialize_embeddings(instance, key, res)
    assert result.success
    assert checks_by_name(result)[COVERAGE_CHECK].passed
    assert status_counts(engine, job_id) == {"completed": 30}
    assert mismatched_vectors(stored_pairs(engine, job_id), DIM) == []
    assert isinstance(tick(instance, res), SkipReason)  # nothing left


def _let_recovery_time_pass(engine, seconds: float) -> None:
    """Move the shared breaker's opening into the past, as if `seconds` had gone by."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE pipeline_state SET data = jsonb_set(data, '{opened_at}', "
                "to_jsonb((data->>'opened_at')::float8 - :s)) WHERE name = :name"
            ),
            {"s": seconds, "name": BREAKER_NAME},
        )


def test_a_model_change_re_embeds_through_the_sensor(
    engine, instance, database_url, tmp_path, fake_openai
):
    job_id, key = insert_job(engine, sample_pairs(12))
    model_a = resources(database_url, tmp_path, fake_openai, model="model-a")
    model_b = resources(database_url, tmp_path, fake_openai, model="model-b")
    materialize_embeddings(instance, key, model_a)
    assert isinstance(tick(instance, model_a), SkipReason)

    requested = tick(instance, model_b)

    assert [r.partition_key for r in requested.run_requests] == [key]
    result = materialize_embeddings(instance, key, model_b)
    assert (
        result.asset_materializations_for_node("qa_embeddings")[0]
        .metadata["reset_for_model_change"]
        .value
        == 12
    )
    pairs = stored_pairs(engine, job_id)
    assert {(p.status, p.model) for p in pairs} == {("completed", "model-b")}
    assert mismatched_vectors(pairs, DIM) == []


def test_a_refused_key_fails_the_run_without_retries_and_the_coverage_check_says_why(
    engine, instance, database_url, tmp_path, fake_openai
):
    job_id, key = insert_job(engine, sample_pairs(5))
    res = resources(database_url, tmp_path, fake_openai)
    res["embedding"] = EmbeddingResource(
        provider="openai", api_key="sk-wrong", base_url=fake_openai.base_url, dim=DIM
    )
    instance.add_dynamic_partitions(import_files.name, [key])

    result = materialize(
        [qa_embeddings], partition_key=key, instance=instance, resources=res, raise_on_error=False
    )

    assert not result.success
    assert fake_openai.stats.requests == 1  # no step retry: RetryPolicy would have tried again
    [coverage] = [
        entry.dagster_event.event_specific_data
        for entry in instance.all_logs(result.run_id)
        if entry.dagster_event is not None
        and entry.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
        and entry.dagster_event.event_specific_data.check_name == COVERAGE_CHECK
    ]
    assert not coverage.passed
    assert coverage.metadata["embeddings_blocked"].value.startswith("auth: the key is refused")
    assert coverage.metadata["pending"].value == 5
    assert {p.attempts for p in stored_pairs(engine, job_id)} == {0}


def test_launchpad_retry_failed_and_the_blocked_metric(
    engine, instance, database_url, tmp_path, fake_openai
):
    from prometheus_client import generate_latest

    from helix_pipelines import metrics
    from helix_pipelines.defs.ops import embed_pending_job

    job_id, key = insert_job(engine, poisoned_pairs(6, bad=2))
    fake_openai.set_poison(POISON)
    res = resources(database_url, tmp_path, fake_openai)
    materialize_embeddings(instance, key, res)
    assert status_counts(engine, job_id) == {"completed": 4, "failed": 2}
    fake_openai.set_poison(None)  # say the API now accepts them

    retried = embed_pending_job.execute_in_process(
        run_config={"ops": {"embed_pending_op": {"config": {"import_job": key,
                                                            "retry_failed": True}}}},
        instance=instance, resources=res,
    )  # fmt: skip

    assert retried.success
    assert status_counts(engine, job_id) == {"completed": 6}
    fake_openai.set_fault_rates({"429_quota": 1.0})
    insert_job(engine, sample_pairs(2, tag="more "))
    blocked = embed_pending_job.execute_in_process(instance=instance, resources=res,
                                                   raise_on_error=False)  # fmt: skip
    assert not blocked.success
    breaker = res["embedding"].setup().build_breaker(engine)
    registry = metrics.build_registry(tmp_path, engine, breaker.snapshot)
    scrape = generate_latest(registry).decode()
    assert 'helix_embeddings_blocked{reason="quota"} 1.0' in scrape
    assert 'helix_embeddings_blocked{reason="auth"} 0.0' in scrape
    assert "helix_embeddings_parked 0.0" in scrape
