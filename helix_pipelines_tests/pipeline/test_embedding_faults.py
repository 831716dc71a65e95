"""embed_pending against the fake OpenAI server over real HTTP: each fault alone, then all of
them mixed. Every pair ends `completed` with the server's vector of its own text, except the
poisoned ones, which end `failed` with the API's message."""

from __future__ import annotations

import pytest

from helix_pipelines.core.retry import RetryBudget
from helix_pipelines.db.embeddings import PARKED_PREFIX
from helix_pipelines.embedding.base import ProviderConfigError
from helix_pipelines_tests.support.db_fixtures import TEST_EMBEDDING_DIM
from helix_pipelines_tests.support.embed_driver import (
    Embedder,
    FakeClock,
    insert_job,
    mismatched_vectors,
    openai_setup,
    sample_pairs,
    status_counts,
    stored_pairs,
)
from helix_pipelines_tests.support.fake_openai import FakeOpenAI

DIM = TEST_EMBEDDING_DIM
FAST_RETRY = RetryBudget(attempts=8, initial_s=0.01, max_s=0.05, jitter_s=0.01, deadline_s=600)
POISON = "POISONED"
TRANSIENT_FAULTS = [
    "429_retry_after", "429_retry_after_ms", "429_bare", "500", "503", "hang", "drop",
    "malformed_json", "short", "wrong_dim", "nan",
]  # fmt: skip


def make_embedder(engine, fake: FakeOpenAI, **overrides) -> Embedder:
    setup = openai_setup(fake.base_url, fake.api_key, DIM, **overrides)
    return Embedder(engine, setup, FakeClock())


def assert_all_completed_with_their_own_vectors(engine, job_id, total):
    pairs = stored_pairs(engine, job_id)
    assert status_counts(engine, job_id) == {"completed": total}
    assert mismatched_vectors(pairs, DIM) == []
    assert {p.model for p in pairs} == {"text-embedding-3-small"}


@pytest.mark.parametrize("fault", TRANSIENT_FAULTS)
def test_one_fault_is_retried_and_every_pair_gets_its_own_vector(engine, fake_openai, fault):
    job_id, _ = insert_job(engine, sample_pairs(20))
    fake_openai.script(fault, fault)
    embedder = make_embedder(engine, fake_openai, timeout_s=0.5)

    report = embedder.run(job_id, retry=FAST_RETRY)

    assert_all_completed_with_their_own_vectors(engine, job_id, 20)
    assert report.embedded == 20 and report.failed == 0 and report.pending == 0
    assert report.retries == 2
    assert all(p.attempts == 1 for p in stored_pairs(engine, job_id))


@pytest.mark.parametrize(
    ("fault", "at_least_s"), [("429_retry_after", 1.0), ("429_retry_after_ms", 0.25)]
)
def test_retry_after_is_honoured(engine, fake_openai, fault, at_least_s):
    job_id, _ = insert_job(engine, sample_pairs(4))
    fake_openai.script(fault)
    embedder = make_embedder(engine, fake_openai, max_concurrency=1)

    report = embedder.run(job_id, retry=FAST_RETRY)

    assert report.rate_limited == 1 and report.embedded == 4
    assert sum(embedder.clock.slept) >= at_least_s


def test_items_out_of_index_order_are_matched_by_index(engine, fake_openai):
    job_id, _ = insert_job(engine, sample_pairs(16))
    fake_openai.set_fault_rates({"shuffle": 1.0})

    report = make_embedder(engine, fake_openai).run(job_id, retry=FAST_RETRY)

    assert report.retries == 0
    assert_all_completed_with_their_own_vectors(engine, job_id, 16)


def test_a_poisoned_input_fails_alone_with_the_api_message(engine, fake_openai):
    pairs = sample_pairs(20)
    pairs[13] = (f"question with {POISON} inside", "answer")
    job_id, _ = insert_job(engine, pairs)
    fake_openai.set_poison(POISON)

    report = make_embedder(engine, fake_openai).run(job_id, retry=FAST_RETRY)

    stored = stored_pairs(engine, job_id)
    failed = [p for p in stored if p.status == "failed"]
    assert [p.question for p in failed] == [pairs[13][0]]
    assert failed[0].error == f"Invalid value for 'input' at index 0: contains '{POISON}'."
    assert failed[0].vector is None and failed[0].attempts == 1
    assert status_counts(engine, job_id) == {"completed": 19, "failed": 1}
    assert mismatched_vectors(stored, DIM) == []
    assert (report.embedded, report.failed, report.pending) == (19, 1, 0)


def test_a_pair_past_max_attempts_is_parked_with_the_last_error(engine, fake_openai):
    job_id, _ = insert_job(engine, sample_pairs(3))
    fake_openai.set_fault_rates({"500": 1.0})
    embedder = make_embedder(engine, fake_openai, max_attempts=2, batch_size=3)
    short_retry = RetryBudget(attempts=2, initial_s=0.01, max_s=0.01, jitter_s=0, deadline_s=60)

    first = embedder.run(job_id, retry=short_retry)
    after_first = stored_pairs(engine, job_id)
    second = embedder.run(job_id, retry=short_retry)

    assert first.pending == 3 and first.stopped_reason
    assert {(p.status, p.attempts) for p in after_first} == {("pending", 1)}
    assert second.parked == 3 and second.pending == 0  # by attempts, not by a bad input
    final = stored_pairs(engine, job_id)
    assert {(p.status, p.attempts) for p in final} == {("failed", 2)}
    assert all(p.error.startswith(PARKED_PREFIX + "server error (500)") for p in final)


def test_all_faults_mixed_at_a_quarter_of_requests(engine, fake_openai):
    pairs = sample_pairs(400)
    poisoned_rows = {17, 150, 333}
    for row in poisoned_rows:
        pairs[row] = (f"question {row} {POISON}", "bad")
    job_id, _ = insert_job(engine, pairs)
    faults = TRANSIENT_FAULTS + ["shuffle"]
    fake_openai.set_fault_rates({fault: 0.25 / len(faults) for fault in faults}, seed=7)
    fake_openai.set_poison(POISON)
    embedder = make_embedder(engine, fake_openai, timeout_s=0.5, batch_size=16,
                             max_concurrency=4)  # fmt: skip

    report = embedder.run(job_id, retry=RetryBudget(attempts=12, initial_s=0.01, max_s=0.05,
                                                      jitter_s=0.01, deadline_s=600))  # fmt: skip

    stored = stored_pairs(engine, job_id)
    failed = {p.question for p in stored if p.status == "failed"}
    assert failed == {pairs[row][0] for row in poisoned_rows}
    assert all(POISON in p.error for p in stored if p.status == "failed")
    assert status_counts(engine, job_id) == {"completed": 397, "failed": 3}
    assert mismatched_vectors(stored, DIM) == []
    assert report.retries > 0
    assert len(set(fake_openai.stats.by_outcome) & set(faults)) >= 8


def test_a_limiter_wait_past_the_deadline_leaves_pairs_pending_without_an_attempt(
    engine, fake_openai
):
    job_id, _ = insert_job(engine, sample_pairs(6))
    embedder = make_embedder(engine, fake_openai)
    embedder.limiter().pause_for(3600)  # e.g. another run was told retry-after: 1 h

    report = embedder.run(job_id, retry=FAST_RETRY, batch_deadline_s=5.0)

    assert report.pending == 6 and "rate limit" in report.stopped_reason
    assert {(p.status, p.attempts) for p in stored_pairs(engine, job_id)} == {("pending", 0)}
    assert fake_openai.stats.requests == 0


SHORT_RETRY = RetryBudget(attempts=2, initial_s=0.01, max_s=0.01, jitter_s=0, deadline_s=60)


def test_429s_for_longer_than_every_attempt_then_healthy_cost_no_pair(engine, fake_openai):
    job_id, _ = insert_job(engine, sample_pairs(6))
    fake_openai.set_fault_rates({"429_bare": 1.0})
    embedder = make_embedder(engine, fake_openai, max_attempts=2, batch_size=6)
    for _ in range(2):
        embedder.run(job_id, retry=SHORT_RETRY)
    parked = stored_pairs(engine, job_id)
    assert {p.status for p in parked} == {"failed"}
    assert all(p.error.startswith(PARKED_PREFIX + "rate limited (429)") for p in parked)

    fake_openai.set_fault_rates({})  # healthy again, but nothing has shown it yet
    assert embedder.run(job_id, retry=FAST_RETRY).released == 0
    embedder.clock.now_s += embedder.setup.parked_retry_s
    report = embedder.run(job_id, retry=FAST_RETRY)

    assert (report.released, report.embedded) == (6, 6)
    assert_all_completed_with_their_own_vectors(engine, job_id, 6)


def test_parked_pairs_return_as_soon_as_the_circuit_recovers(engine, fake_openai):
    """Job A's pairs are parked by 503s and then the circuit opens; as soon as the circuit lets
    a probe through again, A's pairs are pending again, with fresh attempts."""
    job_a, _ = insert_job(engine, sample_pairs(4, tag="a "))
    job_b, _ = insert_job(engine, sample_pairs(4, tag="b "))
    fake_openai.set_fault_rates({"503": 1.0})
    embedder = make_embedder(engine, fake_openai, max_attempts=2, batch_size=4,
                             max_concurrency=1, breaker_failures=4)  # fmt: skip
    embedder.run(job_a, retry=SHORT_RETRY)
    embedder.run(job_a, retry=SHORT_RETRY)  # the 4th failure parks A and opens the circuit
    assert status_counts(engine, job_a) == {"failed": 4}
    assert embedder.breaker().snapshot()["state"] == "open"

    fake_openai.set_fault_rates({})
    embedder.clock.now_s += embedder.setup.breaker_recovery_s
    recovering = embedder.run(job_b, retry=FAST_RETRY)

    assert recovering.embedded == 4 and recovering.released == 4
    assert status_counts(engine, job_a) == {"pending": 4}
    assert {p.attempts for p in stored_pairs(engine, job_a)} == {0}


@pytest.mark.parametrize(
    ("refusal", "reason", "says"),
    [
        ("429_quota", "quota", "out of quota"),
        ("401", "auth", "OPENAI_API_KEY"),
        ("404_model", "model", "HELIX_EMBEDDING_MODEL"),
        ("dimensions", "dimensions", "HELIX_EMBED_SEND_DIMENSIONS=false"),
    ],
)
def test_a_refusal_of_the_account_or_setup_spends_no_attempt_and_blocks_the_circuit(
    engine, fake_openai, refusal, reason, says
):
    job_id, _ = insert_job(engine, sample_pairs(12))
    if refusal == "dimensions":
        fake_openai.set_reject_dimensions()
    else:
        fake_openai.set_fault_rates({refusal: 1.0})
    embedder = make_embedder(engine, fake_openai, max_concurrency=1, batch_size=4)

    with pytest.raises(ProviderConfigError) as caught:
        embedder.run(job_id, retry=FAST_RETRY)

    assert says in caught.value.message and fake_openai.api_key not in caught.value.message
    assert fake_openai.stats.requests == 1  # not retried, and the run stopped
    assert {(p.status, p.attempts) for p in stored_pairs(engine, job_id)} == {("pending", 0)}
    circuit = embedder.breaker().snapshot()
    assert circuit["state"] == "open" and circuit["blocked"]["reason"] == reason
    embedder.clock.now_s += 10 * embedder.setup.breaker_recovery_s
    assert embedder.breaker().snapshot()["blocked"]["reason"] == reason  # still held back
