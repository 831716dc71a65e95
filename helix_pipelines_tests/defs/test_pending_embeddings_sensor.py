"""The pending-embeddings sensor: it looks at pairs, not at import statuses; it never starts a
storm of runs against an API that refuses the account or the setup; when half-open it asks for
one run, the probe. Ticks are evaluated with build_sensor_context on an injected clock shared
with the breaker, against the real database and the fake server over HTTP."""

from __future__ import annotations

import pytest
from dagster import SensorResult, SkipReason, build_sensor_context, instance_for_test

from helix_pipelines.core.retry import RetryBudget
from helix_pipelines.defs.resources import DatabaseResource, EmbeddingResource
from helix_pipelines.defs.sensors import embedding_run_requests, pending_embeddings_sensor
from helix_pipelines.embedding.base import ProviderConfigError
from helix_pipelines_tests.support.db_fixtures import TEST_EMBEDDING_DIM
from helix_pipelines_tests.support.embed_driver import (
    Embedder,
    FakeClock,
    insert_job,
    sample_pairs,
    status_counts,
    stored_pairs,
)

DIM = TEST_EMBEDDING_DIM
RETRY = RetryBudget(attempts=3, initial_s=0.01, max_s=0.01, jitter_s=0, deadline_s=60)


@pytest.fixture
def instance():
    with instance_for_test() as dagster_instance:
        yield dagster_instance


def embedding_resource(fake, **overrides) -> EmbeddingResource:
    values = dict(provider="openai", api_key=fake.api_key, base_url=fake.base_url, dim=DIM,
                  max_concurrency=1, batch_size=4)  # fmt: skip
    return EmbeddingResource(**(values | overrides))


class Ticks:
    """Sensor ticks on one clock, carrying the cursor like the daemon; counts run requests."""

    def __init__(self, instance, engine, clock: FakeClock):
        self.instance, self.engine, self.clock = instance, engine, clock
        self.cursor: str | None = None
        self.requested: list[str] = []

    def tick(self, embedding: EmbeddingResource) -> SensorResult | SkipReason:
        context = build_sensor_context(instance=self.instance, cursor=self.cursor)
        result = embedding_run_requests(context, self.engine, embedding.setup(), self.clock)
        if isinstance(result, SensorResult):
            self.cursor = result.cursor or self.cursor
            self.requested += [r.partition_key for r in result.run_requests]
        return result

    def over(self, embedding, seconds: list[float]) -> list[SensorResult | SkipReason]:
        results = []
        for step in seconds:
            self.clock.now_s += step
            results.append(self.tick(embedding))
        return results


@pytest.mark.parametrize("job_status", ["failed", "completed_with_errors", "processing"])
def test_pending_pairs_get_a_run_whatever_their_import_status(
    engine, instance, database_url, tmp_path, fake_openai, job_status
):
    _, key = insert_job(engine, sample_pairs(3), status=job_status)
    resources = {
        "database": DatabaseResource(
            helix_home=str(tmp_path), database_url=database_url, embedding_dim=DIM
        ),
        "embedding": embedding_resource(fake_openai),
    }

    result = pending_embeddings_sensor(build_sensor_context(instance=instance, resources=resources))

    assert [r.partition_key for r in result.run_requests] == [key]


@pytest.mark.parametrize(
    ("refusal", "reason"), [("429_quota", "quota"), ("401", "auth"), ("dimensions", "dimensions")]
)
def test_a_refused_account_or_setup_starts_no_run_storm(
    engine, instance, fake_openai, refusal, reason
):
    jobs = [insert_job(engine, sample_pairs(4, tag=f"{n} ")) for n in range(3)]
    if refusal == "dimensions":
        fake_openai.set_reject_dimensions()
    else:
        fake_openai.set_fault_rates({refusal: 1.0})
    embedding, clock = embedding_resource(fake_openai), FakeClock()
    with pytest.raises(ProviderConfigError):
        Embedder(engine, embedding.setup(), clock).run(jobs[0][0], retry=RETRY)
    ticks = Ticks(instance, engine, clock)

    # Far past the breaker's recovery time, short of the long back-off: nothing starts.
    held = ticks.over(embedding, [0, 30, 30, 60, 600, 1800, 1000])
    assert ticks.requested == []
    assert all(isinstance(r, SkipReason) and f"blocked ({reason})" in r.skip_message for r in held)
    # The long back-off over: one probe, and no second run while it may be on its way.
    ticks.over(embedding, [100, 30, 30])
    assert len(ticks.requested) == 1
    assert fake_openai.stats.requests == 1
    assert {(p.status, p.attempts) for p in stored_pairs(engine)} == {("pending", 0)}


def test_a_changed_setup_probes_at_once_and_then_every_partition_runs(
    engine, instance, fake_openai
):
    jobs = [insert_job(engine, sample_pairs(4, tag=f"{n} ")) for n in range(3)]
    fake_openai.set_reject_dimensions()
    refused, clock = embedding_resource(fake_openai), FakeClock()
    with pytest.raises(ProviderConfigError):
        Embedder(engine, refused.setup(), clock).run(jobs[0][0], retry=RETRY)
    ticks = Ticks(instance, engine, clock)
    assert isinstance(ticks.tick(refused), SkipReason)

    fixed = embedding_resource(fake_openai, send_dimensions=False)
    fake_openai.default_dim = DIM  # the server's native width is the column's
    ticks.over(fixed, [5, 5, 5])
    [probe] = ticks.requested
    Embedder(engine, fixed.setup(), clock).run(jobs[0][0], retry=RETRY)  # the probe run
    ticks.tick(fixed)

    assert sorted(ticks.requested[1:]) == sorted(key for _, key in jobs[1:])
    assert status_counts(engine, jobs[0][0]) == {"completed": 4}


def test_half_open_after_an_outage_requests_one_probe_not_one_run_per_partition(
    engine, instance, fake_openai
):
    jobs = [insert_job(engine, sample_pairs(4, tag=f"{n} ")) for n in range(4)]
    fake_openai.set_fault_rates({"503": 1.0})
    embedding, clock = embedding_resource(fake_openai, breaker_failures=2), FakeClock()
    Embedder(engine, embedding.setup(), clock).run(jobs[0][0], retry=RETRY)
    ticks = Ticks(instance, engine, clock)
    assert isinstance(ticks.tick(embedding), SkipReason)  # open

    fake_openai.set_fault_rates({})
    ticks.over(embedding, [30, 30, 30, 30])  # half-open from the first of these
    assert len(ticks.requested) == 1
    Embedder(engine, embedding.setup(), clock).run(jobs[0][0], retry=RETRY)  # the probe
    ticks.tick(embedding)

    assert sorted(ticks.requested) == sorted(key for _, key in jobs)
