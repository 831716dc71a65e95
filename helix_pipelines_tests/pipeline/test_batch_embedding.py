"""Embedding through the Batch API, against the fake server's files and batches endpoints over
real HTTP and the real embedded PostgreSQL; the server's clock is moved by hand (no sleeps)."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from pgvector.psycopg import register_vector

from helix_pipelines.db import embedding_batches as batches
from helix_pipelines.db import embeddings as store
from helix_pipelines.embedding.base import embedding_text
from helix_pipelines.embedding.openai_batch import BatchClient
from helix_pipelines.pipeline import batch_collection as collection
from helix_pipelines.pipeline import batch_embedding as flow
from helix_pipelines_tests.support.db_fixtures import TEST_EMBEDDING_DIM, truncate_all
from helix_pipelines_tests.support.embed_driver import (
    MODEL,
    insert_job,
    mismatched_vectors,
    sample_pairs,
    status_counts,
    stored_pairs,
)
from helix_pipelines_tests.support.fake_openai import FakeOpenAI, running_fake_openai

DIM = TEST_EMBEDDING_DIM


class ManualClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def server(clock):
    with running_fake_openai(clock=clock, default_dim=DIM) as fake:
        fake.batch.delay_s = 3600.0  # an hour on the server's clock
        yield fake


@pytest.fixture
def client(server):
    client = BatchClient(api_key=server.api_key, base_url=server.base_url)
    yield client
    client.close()


@pytest.fixture
def no_vector_index(engine):
    """Without the HNSW index for the test: writing 20,000 vectors through the graph costs a
    minute on 2 shared cores (STACK.md, where the time goes) and is not what is tested here."""
    index = "ix_qa_pair_embedding_hnsw"
    with engine.begin() as conn:
        definition = conn.scalar(sa.text("SELECT pg_get_indexdef(to_regclass(:i))"), {"i": index})
        conn.execute(sa.text(f"DROP INDEX {index}"))
    yield
    truncate_all(engine)  # the index is rebuilt over an empty table: instant
    with engine.begin() as conn:
        conn.execute(sa.text(definition))


def vectors_match_server(engine, dim: int) -> tuple[int, int]:
    """(completed pairs, those whose vector is the fake server's vector of their own text),
    read as binary vectors: the text form would take seconds at this size."""
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        register_vector(raw)
        rows = raw.execute(
            "SELECT question, answer, embedding FROM qa_pair WHERE embedding_status = 'completed'"
        ).fetchall()
    stored = np.stack([row[2].to_numpy() for row in rows])
    expected = np.stack([FakeOpenAI.vector_for(embedding_text(q, a), dim) for q, a, _ in rows])
    return len(rows), int(np.isclose(stored, expected, atol=1e-6).all(axis=1).sum())


def options(**overrides) -> flow.BatchOptions:
    return flow.BatchOptions(model=MODEL, dim=DIM, **overrides)


def settle_all(engine, client, clock, opts) -> collection.CycleReport:
    clock.now += 7200
    return collection.run_cycle(engine, client, opts)


@pytest.mark.timeout(240)
def test_twenty_thousand_pairs_through_batches(engine, no_vector_index, server, client, clock):
    job_id, _ = insert_job(engine, sample_pairs(20_000))
    opts = options(max_pairs=8_000)

    report = flow.submit_batches(engine, client, opts, job_id=job_id)

    assert len(report.batches) == 3 and report.pairs == 20_000
    assert server.batch.stats.batches_created == 3
    assert status_counts(engine, job_id) == {"batched": 20_000}
    with engine.begin() as conn:  # no synchronous run can claim a batched pair
        assert store.claim_pending(conn, None, 10) == []
    assert report.estimated_cost_usd == pytest.approx(report.token_estimate * 0.01 / 1e6)

    assert collection.run_cycle(engine, client, opts).collected == []  # still in progress
    assert {b.state for b in batches.list_batches(engine)} == {"in_progress"}

    cycle = settle_all(engine, client, clock, opts)

    assert sum(c.embedded for c in cycle.collected) == 20_000
    assert status_counts(engine, job_id) == {"completed": 20_000}
    assert vectors_match_server(engine, DIM) == (20_000, 20_000)
    with engine.connect() as conn:
        assert conn.execute(
            sa.text("SELECT DISTINCT embedding_attempts, embedding_model FROM qa_pair")
        ).all() == [(1, MODEL)]
    assert server.batch.stats.batches_created == 3
    assert {b.state for b in batches.list_batches(engine)} == {"collected"}


def test_error_file_invalid_alone_transient_retried_changed_text_returned(
    engine, server, client, clock
):
    job_id, _ = insert_job(engine, sample_pairs(6) + [("bad POISON q", "a"), ("flaky q", "a")])
    server.batch.poison, server.batch.transient = "POISON", "flaky"
    opts = options()
    flow.submit_batches(engine, client, opts, job_id=job_id)
    with engine.begin() as conn:  # an operator edits a pair while its batch runs
        conn.execute(sa.text("UPDATE qa_pair SET answer = 'new answer' WHERE source_row = 1"))

    cycle = settle_all(engine, client, clock, opts)

    (collected,) = cycle.collected
    assert (collected.embedded, collected.failed, collected.retried, collected.returned) == (
        5, 1, 1, 1,
    )  # fmt: skip
    by_question = {p.question: p for p in stored_pairs(engine, job_id)}
    bad, flaky = by_question["bad POISON q"], by_question["flaky q"]
    assert bad.status == "failed" and "POISON" in bad.error
    assert (
        flaky.status == "pending" and flaky.attempts == 1 and "server had an error" in flaky.error
    )
    changed = next(p for p in by_question.values() if p.answer == "new answer")
    assert changed.status == "pending" and changed.vector is None and changed.attempts == 0
    assert mismatched_vectors(by_question.values(), DIM) == []

    again = collection.collect_batch(engine, client, collected.batch_id, opts)  # idempotent
    assert again.skipped and status_counts(engine, job_id) == {
        "completed": 5, "failed": 1, "pending": 2,
    }  # fmt: skip


def test_expiry_keeps_the_finished_half_and_the_rest_finishes_later(engine, server, client, clock):
    job_id, _ = insert_job(engine, sample_pairs(40))
    server.batch.script("expire:0.5")
    opts = options()
    flow.submit_batches(engine, client, opts, job_id=job_id)

    (collected,) = settle_all(engine, client, clock, opts).collected

    assert collected.state == "expired" and (collected.embedded, collected.returned) == (20, 20)
    first = {p.id: p for p in stored_pairs(engine, job_id) if p.status == "completed"}
    assert len(first) == 20
    returned = [p for p in stored_pairs(engine, job_id) if p.status == "pending"]
    assert len(returned) == 20 and {p.attempts for p in returned} == {0}

    again = flow.submit_batches(engine, client, opts, job_id=job_id)
    settle_all(engine, client, clock, opts)

    assert again.pairs == 20 and server.batch.stats.batches_created == 2
    pairs = stored_pairs(engine, job_id)
    assert {p.status for p in pairs} == {"completed"} and mismatched_vectors(pairs, DIM) == []
    assert {p.attempts for p in pairs} == {1}  # the kept half was not embedded again
    assert all(first[p.id].vector.tolist() == p.vector.tolist() for p in pairs if p.id in first)


def test_failed_batch_counts_an_attempt_with_the_reason(engine, server, client, clock):
    job_id, _ = insert_job(engine, sample_pairs(5))
    server.batch.script("fail")
    opts = options()
    flow.submit_batches(engine, client, opts, job_id=job_id)

    (collected,) = collection.run_cycle(engine, client, opts).collected

    assert collected.state == "failed" and collected.retried == 5
    pairs = stored_pairs(engine, job_id)
    assert {(p.status, p.attempts) for p in pairs} == {("pending", 1)}
    assert all("Simulated validation failure" in p.error for p in pairs)


def test_a_refused_create_is_collected_as_a_failed_batch(engine, server, client, clock):
    job_id, _ = insert_job(engine, sample_pairs(4))
    server.batch.script("refuse")
    opts = options()
    flow.submit_batches(engine, client, opts, job_id=job_id)

    (collected,) = collection.run_cycle(engine, client, opts).collected

    assert collected.state == "failed" and server.batch.stats.batches_created == 0
    pairs = stored_pairs(engine, job_id)
    assert {(p.status, p.attempts) for p in pairs} == {("pending", 1)}
    assert all("Simulated refusal" in p.error for p in pairs)


def test_operator_cancel_returns_the_pairs(engine, server, client, clock):
    job_id, _ = insert_job(engine, sample_pairs(10))
    opts = options()
    report = flow.submit_batches(engine, client, opts, job_id=job_id)

    assert flow.cancel_batches(engine, client) == report.batches
    (collected,) = collection.run_cycle(engine, client, opts).collected

    assert collected.state == "cancelled" and collected.returned == 10
    assert server.batch.stats.batches_cancelled == 1
    assert status_counts(engine, job_id) == {"pending": 10}
    summary = batches.summary(engine)
    assert (summary.in_flight, summary.pairs_waiting) == (0, 0)
