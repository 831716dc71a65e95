"""embed_pending reports its progress: pairs done of those pending at the start, and why it
waits while the limiter holds it back."""

from __future__ import annotations

from helix_pipelines.pipeline.embedding import embed_pending
from helix_pipelines_tests.support.db_fixtures import TEST_EMBEDDING_DIM
from helix_pipelines_tests.support.embed_driver import (
    Embedder,
    FakeClock,
    insert_job,
    openai_setup,
    sample_pairs,
)


def test_progress_counts_up_and_names_the_rate_limit_wait(engine, fake_openai):
    job_id, _ = insert_job(engine, sample_pairs(6))
    setup = openai_setup(
        fake_openai.base_url, fake_openai.api_key, TEST_EMBEDDING_DIM,
        rpm=2, batch_size=1, max_concurrency=1,
    )  # fmt: skip
    clock = FakeClock()
    driver = Embedder(engine, setup, clock)
    seen = []
    provider = setup.build_provider()
    try:
        report = embed_pending(
            engine, provider, limiter=driver.limiter(), breaker=driver.breaker(),
            options=setup.options(), job_id=job_id, sleep=clock.sleep, on_progress=seen.append,
        )  # fmt: skip
    finally:
        provider.close()

    assert report.embedded == 6
    assert {p.total for p in seen} == {6}
    assert seen[0].embedded == 0 and seen[-1].embedded == 6 and seen[-1].waiting is None
    assert [p.embedded for p in seen] == sorted(p.embedded for p in seen)
    assert "rate limit" in {p.waiting for p in seen}
