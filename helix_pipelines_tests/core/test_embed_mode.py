"""Which way a run embeds, and the Batch API's JSONL both ways: pure, no server."""

from __future__ import annotations

import json

import pytest

from helix_pipelines.core.embed_mode import BatchModeUnavailable, choose_mode, has_batch_api
from helix_pipelines.embedding.openai_batch import build_jsonl, parse_results


@pytest.mark.parametrize(
    ("mode", "pending", "capable", "expected"),
    [
        ("auto", 10, True, "sync"),  # a fresh import stays synchronous
        ("auto", 11, True, "batch"),  # a backlog above the threshold goes to batches
        ("auto", 10_000, False, "sync"),  # no Batch API: auto falls back
        ("sync", 10_000, True, "sync"),
        ("batch", 1, True, "batch"),
    ],
)
def test_choose_mode(mode, pending, capable, expected):
    assert choose_mode(mode, pending=pending, threshold=10, batch_capable=capable) == expected


def test_batch_without_a_batch_api_and_unknown_modes_are_refused():
    with pytest.raises(BatchModeUnavailable, match="openai provider"):
        choose_mode("batch", pending=1, threshold=10, batch_capable=False)
    with pytest.raises(ValueError, match="unknown embedding mode 'fast'"):
        choose_mode("fast", pending=1, threshold=10, batch_capable=True)


def test_jsonl_lines_are_embedding_requests_of_one_input():
    content = build_jsonl([("7", "héllo"), ("9", "x")], model="m", dim=8, send_dimensions=True)
    lines = [json.loads(line) for line in content.decode().splitlines()]
    assert lines[0] == {
        "custom_id": "7", "method": "POST", "url": "/v1/embeddings",
        "body": {"model": "m", "input": ["héllo"], "encoding_format": "base64", "dimensions": 8},
    }  # fmt: skip
    assert (
        "dimensions"
        not in json.loads(build_jsonl([("1", "a")], model="m", dim=8, send_dimensions=False))[
            "body"
        ]
    )


def test_results_tell_vectors_refusals_transient_and_not_run_apart():
    lines = [
        {"custom_id": "1", "response": {"status_code": 200, "body": {"data": []}}},
        {"custom_id": "2", "response": {"status_code": 400,
                                        "body": {"error": {"message": "bad input"}}}},
        {"custom_id": "3", "response": {"status_code": 500,
                                        "body": {"error": {"message": "oops"}}}},
        {"custom_id": "4", "response": None,
         "error": {"code": "batch_expired", "message": "not run"}},
    ]  # fmt: skip
    content = "\n".join(json.dumps(line) for line in lines).encode()
    ok, bad, flaky, expired = parse_results(content)
    assert ok.ok and not bad.ok and bad.invalid_input and bad.error == "bad input"
    assert not flaky.invalid_input and flaky.status_code == 500
    assert expired.status_code is None and expired.error == "not run (batch_expired)"


@pytest.mark.parametrize(
    ("base_url", "declared", "expected"),
    [
        (None, None, True),  # the client's default: OpenAI's own API
        ("https://api.openai.com/v1", None, True),
        ("http://127.0.0.1:8000/v1", None, False),  # vLLM, Ollama, a gateway: no Batch API
        ("http://127.0.0.1:8000/v1", True, True),  # unless the operator says it has one
        ("https://api.openai.com/v1", False, False),
    ],
)
def test_auto_assumes_a_batch_api_only_of_openai_unless_told(base_url, declared, expected):
    assert has_batch_api(base_url, declared) is expected
