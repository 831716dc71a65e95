"""embed_pending against the fake OpenAI server over real HTTP: each fault alone, then all of
them mixed. Every pair ends `completed` with the server's vector of its own text, except the
poisoned ones, which end `failed` with the API's message."""

from __future__ import annotations

import pytest

from helix_pipelines.core.retry import RetryBudget
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


def test_a_pair_past_max_attempts_fails_with_the_last_error(engine, fake_openai):
    job_id, _ = insert_job(engine, sample_pairs(3))
    fake_openai.set_fault_rates({"500": 1.0})
    embedder = make_embedder(engine, fake_openai, max_attempts=2, batch_size=3)
    short_retry = RetryBudget(attempts=2, initial_s=0.01, max_s=0.01, jitter_s=0, deadline_s=60)

    first = embedder.run(job_id, retry=short_retry)
    after_first = stored_pairs(engine, job_id)
    second = embedder.run(job_id, retry=short_retry)

    assert first.pending == 3 and first.stopped_reason
    assert {(p.status, p.attempts) for p in after_first} == {("pending", 1)}
    assert second.failed == 0 and second.pending == 0  # failed by attempts, not by a bad input
    final = stored_pairs(engine, job_id)
    assert {(p.status, p.attempts) for p in final} == {("failed", 2)}
    assert all(p.error.startswith("server error (500)") for p in final)


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
