"""The fake server itself: OpenAI-compatible for the bare client, limits, faults, stats."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import openai
import pytest

from helix_pipelines_tests.support.fake_openai import FakeOpenAI, running_fake_openai


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bare_client(server: FakeOpenAI, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(api_key=server.api_key, base_url=server.base_url, max_retries=0, **kwargs)


def test_vector_for_is_deterministic_unit_float32():
    first, again = FakeOpenAI.vector_for("hello", 32), FakeOpenAI.vector_for("hello", 32)

    assert first.dtype == np.float32 and first.shape == (32,)
    assert np.array_equal(first, again)
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-6)
    assert not np.array_equal(first, FakeOpenAI.vector_for("hello!", 32))


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_the_bare_openai_client_reads_its_answers(fake_openai, encoding):
    client = bare_client(fake_openai)

    response = client.embeddings.create(
        input=["a", "b"], model="text-embedding-3-small", dimensions=16, encoding_format=encoding
    )

    assert response.usage.total_tokens == 2
    if encoding == "float":
        assert np.allclose(response.data[1].embedding, FakeOpenAI.vector_for("b", 16))
    else:
        assert isinstance(response.data[1].embedding, str)  # left for us to decode


def test_single_string_input_and_default_dimension(fake_openai):
    response = bare_client(fake_openai).embeddings.create(input="solo", model="m")

    assert len(response.data) == 1 and len(response.data[0].embedding) == 1536


def test_rpm_limit_over_a_sliding_window_counts_violations():
    clock = FakeClock()
    with running_fake_openai(rpm=2, clock=clock) as server:
        client = bare_client(server)
        for _ in range(2):
            client.embeddings.create(input=["x"], model="m", dimensions=8)
        with pytest.raises(openai.RateLimitError) as caught:
            client.embeddings.create(input=["x"], model="m", dimensions=8)
        clock.now += 60.0  # the window slides past both requests
        client.embeddings.create(input=["x"], model="m", dimensions=8)

    assert server.stats.violations == 1
    assert server.stats.by_outcome == {"ok": 3, "rate_limited": 1}
    assert caught.value.response.headers["retry-after-ms"] == "60000"


def test_tpm_limit(fake_openai):
    clock = FakeClock()
    fake_openai.clock = clock
    fake_openai.set_limits(tpm=10)
    client = bare_client(fake_openai)
    client.embeddings.create(input=["x" * 32], model="m", dimensions=8)  # 8 tokens

    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(input=["x" * 12], model="m", dimensions=8)  # 3 more: over
    client.embeddings.create(input=["x" * 8], model="m", dimensions=8)  # 2 more: fits

    assert fake_openai.stats.violations == 1
    assert fake_openai.stats.tokens == 10


def test_fault_rates_are_reproducible_with_a_seed(fake_openai):
    def outcomes() -> list[str]:
        fake_openai.reset_stats()
        fake_openai.set_fault_rates({"500": 0.3, "short": 0.2}, seed=7)
        client = bare_client(fake_openai)
        for _ in range(20):
            with contextlib.suppress(openai.InternalServerError):
                client.embeddings.with_raw_response.create(input=["x"], model="m", dimensions=8)
        return [str(status) for _, _, _, status in fake_openai.stats.log]

    first = outcomes()
    assert first == outcomes()
    assert "500" in first and "200" in first


def test_script_runs_in_order_then_behaves(fake_openai):
    fake_openai.script("503", "ok", "500")
    client = bare_client(fake_openai)
    statuses = []
    for _ in range(4):
        try:
            client.embeddings.create(input=["x"], model="m", dimensions=8)
            statuses.append(200)
        except openai.APIStatusError as error:
            statuses.append(error.status_code)

    assert statuses == [503, 200, 500, 200]


def test_unknown_fault_names_are_refused(fake_openai):
    with pytest.raises(ValueError, match="unknown faults"):
        fake_openai.script("explode")


def test_counts_requests_in_flight(fake_openai):
    fake_openai.set_latency(0.3)
    start = threading.Barrier(3)

    def call() -> None:
        start.wait()
        bare_client(fake_openai).embeddings.create(input=["x"], model="m", dimensions=8)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert fake_openai.stats.max_in_flight == 3
    assert fake_openai.stats.in_flight == 0


def test_runs_standalone_from_the_command_line():
    process = subprocess.Popen(
        [sys.executable, "-m", "helix_pipelines_tests.support.fake_openai", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = re.search(r"http://\S+/v1", process.stdout.readline()).group(0)
        client = openai.OpenAI(api_key="sk-test", base_url=url, max_retries=0)
        assert len(client.embeddings.create(input=["x"], model="m").data) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        summary = process.communicate(timeout=10)[0]
    assert process.returncode == 0
    assert '"requests": 1' in summary
