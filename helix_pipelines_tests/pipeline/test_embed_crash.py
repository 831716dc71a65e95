"""Kill -9 an embedding process mid-chunk, twice, then run again: its claimed pairs were only
locked, never marked, so nothing is stuck, nothing is embedded twice, and every vector belongs
to its own row."""

from __future__ import annotations

import signal
import subprocess
import sys

from helix_pipelines_tests.support.db_fixtures import TEST_EMBEDDING_DIM, subprocess_env
from helix_pipelines_tests.support.embed_driver import (
    Embedder,
    insert_job,
    mismatched_vectors,
    openai_setup,
    sample_pairs,
    status_counts,
    stored_pairs,
)
from helix_pipelines_tests.support.fake_openai import running_fake_openai
from helix_pipelines_tests.support.processes import wait_for

DIM = TEST_EMBEDDING_DIM
TOTAL = 240


def start_driver(settings, fake) -> subprocess.Popen:
    env = subprocess_env(settings, OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY=fake.api_key)
    command = [sys.executable, "-m", "helix_pipelines_tests.support.embed_driver"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE)


def kill_once_completed_reach(engine, child: subprocess.Popen, count: int) -> None:
    wait_for(
        lambda: status_counts(engine).get("completed", 0) >= count or child.poll() is not None,
        timeout=60, what=f"{count} completed pairs", interval=0.05,
    )  # fmt: skip
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL  # killed, not finished


def test_kill_minus_nine_mid_chunk_then_run_again(engine, settings):
    job_id, _ = insert_job(engine, sample_pairs(TOTAL))
    with running_fake_openai(default_dim=DIM, latency_s=0.2) as fake:
        for completed_before_kill in (40, 120):
            kill_once_completed_reach(engine, start_driver(settings, fake), completed_before_kill)
            assert 0 < status_counts(engine).get("pending", 0) < TOTAL
        killed_requests = fake.stats.requests
        fake.set_latency(0.0)
        report = Embedder(engine, openai_setup(fake.base_url, fake.api_key, DIM)).run(job_id)

    pairs = stored_pairs(engine, job_id)
    assert status_counts(engine, job_id) == {"completed": TOTAL}
    assert report.pending == 0 and report.embedded < TOTAL - 40
    assert mismatched_vectors(pairs, DIM) == []
    assert {p.attempts for p in pairs} == {1}  # a killed chunk counted no attempt
    assert killed_requests > 0
