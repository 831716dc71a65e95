"""How fast embeddings come back, by way of decoding: the bare openai client vs OpenAIProvider.

Two measures, 2,048 inputs x 1,536 dimensions:
- end to end: against the fake server in its own process (so its JSON encoding doesn't share our
  GIL), no added latency;
- decode only: the same response bodies served from memory by an in-process mock transport, so
  only the client's parsing and decoding are timed.

    .venv/bin/python bench/decode_probe.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import httpx2
import numpy as np
import openai

from helix_pipelines.embedding.openai_provider import OpenAIProvider
from helix_pipelines_tests.support.fake_openai import API_KEY, FakeOpenAI

N_INPUTS, DIM, MODEL = 2048, 1536, "text-embedding-3-small"
TEXTS = [f"question {i}: where is my order number {i * 7919}?" for i in range(N_INPUTS)]


def bare_default(client: openai.OpenAI) -> np.ndarray:
    response = client.embeddings.create(input=TEXTS, model=MODEL, dimensions=DIM)
    return np.asarray([item.embedding for item in response.data], dtype=np.float32)


def bare_float(client: openai.OpenAI) -> np.ndarray:
    response = client.embeddings.create(
        input=TEXTS, model=MODEL, dimensions=DIM, encoding_format="float"
    )
    return np.asarray([item.embedding for item in response.data], dtype=np.float32)


def provider_path(provider: OpenAIProvider) -> np.ndarray:
    return provider.embed(TEXTS).vectors


def rate(call: Callable[[], np.ndarray], repeats: int) -> tuple[float, float]:
    """Median embeddings/s and seconds per call, after one warm-up call that is checked."""
    vectors = call()
    assert vectors.shape == (N_INPUTS, DIM)
    assert np.array_equal(vectors[5], FakeOpenAI.vector_for(TEXTS[5], DIM))
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    return N_INPUTS / median, median


def end_to_end(repeats: int) -> dict[str, tuple[float, float]]:
    server = subprocess.Popen(
        [sys.executable, "-m", "helix_pipelines_tests.support.fake_openai", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = re.search(r"http://\S+/v1", server.stdout.readline()).group(0)
        return measure_all(lambda: {"base_url": url}, repeats)
    finally:
        server.terminate()
        server.communicate(timeout=10)


def decode_only(repeats: int) -> dict[str, tuple[float, float]]:
    bodies = {encoding: _body(encoding) for encoding in ("base64", "float")}  # built untimed

    def respond(request: httpx2.Request) -> httpx2.Response:
        encoding = json.loads(request.content).get("encoding_format", "float")
        return httpx2.Response(
            200, content=bodies[encoding], headers={"content-type": "application/json"}
        )

    def options() -> dict:
        transport = httpx2.MockTransport(respond)
        return {"base_url": "http://mock/v1", "http_client": httpx2.Client(transport=transport)}

    return measure_all(options, repeats)


def measure_all(options: Callable[[], dict], repeats: int) -> dict[str, tuple[float, float]]:
    client = openai.OpenAI(api_key=API_KEY, max_retries=0, timeout=120, **options())
    provider = OpenAIProvider(api_key=API_KEY, base_url=None, model=MODEL, dim=DIM, timeout_s=120)
    provider._client = client  # a bench-only poke: the same transport as the bare client
    return {
        "bare client, default (base64 asked, decoded to lists)": rate(
            lambda: bare_default(client), repeats
        ),
        "bare client, encoding_format=float": rate(
            lambda: bare_float(client), max(1, repeats // 2)
        ),
        "OpenAIProvider (base64 + numpy.frombuffer)": rate(
            lambda: provider_path(provider), repeats
        ),
    }


def _body(encoding: str) -> bytes:
    items = []
    for index, text in enumerate(TEXTS):
        vector = FakeOpenAI.vector_for(text, DIM)
        if encoding == "float":
            embedding = vector.tolist()
        else:
            embedding = base64.b64encode(vector.tobytes()).decode()
        items.append({"object": "embedding", "index": index, "embedding": embedding})
    usage = {"prompt_tokens": N_INPUTS, "total_tokens": N_INPUTS}
    return json.dumps({"object": "list", "data": items, "model": MODEL, "usage": usage}).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    for title, measure in (("decode only", decode_only), ("end to end", end_to_end)):
        print(f"== {title}: {N_INPUTS} inputs x {DIM} dims, median of {repeats}")
        for name, (per_s, seconds) in measure(repeats).items():
            print(f"  {name:55} {per_s:9,.0f} embeddings/s  ({seconds * 1000:7.1f} ms/request)")


if __name__ == "__main__":
    main()
