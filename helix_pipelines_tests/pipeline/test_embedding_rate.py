"""Three imports embedding at once share the deployment-wide limiter in PostgreSQL: the server,
enforcing R requests per minute, never sees one request over its limit.

The limiter and the server run on one clock going 5 times faster than real time, so the 60 s
windows pass in twelve real seconds. The scaled clock also scales the time a request spends
between the limiter's grant and the server's count: on a loaded machine (two test workers) a
0.2 s stall is a simulated second, so the limiter keeps two requests of headroom, as a
deployment would keep some below its real limit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from helix_pipelines_tests.support.db_fixtures import TEST_EMBEDDING_DIM
from helix_pipelines_tests.support.embed_driver import (
    Embedder,
    ScaledClock,
    insert_job,
    mismatched_vectors,
    openai_setup,
    sample_pairs,
    status_counts,
    stored_pairs,
)
from helix_pipelines_tests.support.fake_openai import running_fake_openai

DIM = TEST_EMBEDDING_DIM
SERVER_RPM = 40
PAIRS_PER_JOB = 26  # 78 one-input requests: more than one window's worth


def test_three_runs_at_once_never_exceed_the_servers_rpm(engine):
    clock = ScaledClock(speed=5)
    jobs = [insert_job(engine, sample_pairs(PAIRS_PER_JOB, tag=f"job{n} "))[0] for n in range(3)]
    with running_fake_openai(default_dim=DIM, clock=clock) as fake:
        fake.set_limits(rpm=SERVER_RPM)
        setup = openai_setup(
            fake.base_url, fake.api_key, DIM, rpm=SERVER_RPM - 2, batch_size=1, max_concurrency=2
        )
        started = clock()
        with ThreadPoolExecutor(3) as pool:
            reports = list(pool.map(lambda job: Embedder(engine, setup, clock).run(job), jobs))
        elapsed = clock() - started
        stats = fake.stats

    assert stats.violations == 0
    assert stats.by_outcome["ok"] == 3 * PAIRS_PER_JOB
    assert elapsed >= 60.0  # the limit really held the runs back
    assert [r.pending for r in reports] == [0, 0, 0]
    assert status_counts(engine) == {"completed": 3 * PAIRS_PER_JOB}
    assert mismatched_vectors(stored_pairs(engine), DIM) == []
