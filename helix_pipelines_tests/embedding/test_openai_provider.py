"""OpenAIProvider against the fake server over real HTTP: one test per fault class."""

from __future__ import annotations

import time
from email.utils import formatdate

import numpy as np
import pytest

from helix_pipelines.embedding.base import (
    EmbeddingError,
    InvalidInputError,
    ProviderConfigError,
    RateLimitedError,
    TransientEmbeddingError,
)
from helix_pipelines.embedding.openai_provider import (
    OpenAIProvider,
    decode_embeddings,
    parse_duration,
    parse_rate_limit_headers,
    parse_retry_after,
)
from helix_pipelines_tests.support.fake_openai import FakeOpenAI

DIM = 64
TEXTS = ["how do I reset my password?", "where is my order?", "cancel my subscription"]


@pytest.fixture
def provider(fake_openai: FakeOpenAI):
    client = OpenAIProvider(
        api_key=fake_openai.api_key,
        base_url=fake_openai.base_url,
        model="text-embedding-3-small",
        dim=DIM,
        timeout_s=5.0,
    )
    yield client
    client.close()


def expected(texts: list[str]) -> np.ndarray:
    return np.stack([FakeOpenAI.vector_for(text, DIM) for text in texts])


def test_embeds_each_text_into_its_own_row(provider, fake_openai):
    result = provider.embed(TEXTS)

    assert result.vectors.dtype == np.float32
    assert np.array_equal(result.vectors, expected(TEXTS))
    assert result.tokens == sum(FakeOpenAI.tokens_for(text) for text in TEXTS)
    assert result.rate_limit.remaining_requests == 2999
    assert fake_openai.stats.inputs_embedded == 3


def test_out_of_order_items_are_matched_by_index(provider, fake_openai):
    fake_openai.script("shuffle")

    result = provider.embed(TEXTS)

    assert np.array_equal(result.vectors, expected(TEXTS))
    assert fake_openai.stats.by_outcome["shuffle"] == 1


@pytest.mark.parametrize(
    ("fault", "detail"),
    [
        ("short", "2 embeddings for 3 inputs"),
        ("wrong_dim", f"expected {DIM}"),
        ("nan", "non-finite"),
        ("malformed_json", "not JSON"),
    ],
)
def test_bad_responses_are_transient_errors(provider, fake_openai, fault, detail):
    fake_openai.script(fault)

    with pytest.raises(TransientEmbeddingError, match="malformed response") as caught:
        provider.embed(TEXTS)

    assert detail in str(caught.value)
    assert not isinstance(caught.value, RateLimitedError)


@pytest.mark.parametrize(
    ("fault", "retry_after"), [("429_retry_after", 1.0), ("429_retry_after_ms", 0.25)]
)
def test_429_carries_the_retry_hint(provider, fake_openai, fault, retry_after):
    fake_openai.script(fault)

    with pytest.raises(RateLimitedError) as caught:
        provider.embed(TEXTS)

    assert caught.value.status_code == 429
    assert caught.value.retry_after_s == pytest.approx(retry_after)


def test_429_without_headers_has_no_hint(provider, fake_openai):
    fake_openai.script("429_bare")

    with pytest.raises(RateLimitedError) as caught:
        provider.embed(TEXTS)

    assert caught.value.retry_after_s is None


@pytest.mark.parametrize("fault", ["500", "503"])
def test_server_errors_are_transient(provider, fake_openai, fault):
    fake_openai.script(fault)

    with pytest.raises(TransientEmbeddingError) as caught:
        provider.embed(TEXTS)

    assert caught.value.status_code == int(fault)
    assert not isinstance(caught.value, RateLimitedError)


def test_dropped_connection_is_transient(provider, fake_openai):
    fake_openai.script("drop")

    with pytest.raises(TransientEmbeddingError, match="connection error"):
        provider.embed(TEXTS)
    assert np.array_equal(provider.embed(TEXTS).vectors, expected(TEXTS))  # and it recovers


def test_hang_times_out_quickly(fake_openai):
    fake_openai.script("hang")
    client = OpenAIProvider(
        api_key=fake_openai.api_key, base_url=fake_openai.base_url, model="m", dim=DIM,
        timeout_s=0.5,
    )  # fmt: skip
    started = time.monotonic()

    with pytest.raises(TransientEmbeddingError, match="timed out"):
        client.embed(TEXTS)

    assert time.monotonic() - started < 3
    client.close()


def test_poison_input_is_invalid_input_with_the_api_message(provider, fake_openai):
    fake_openai.set_poison("\x00BAD")

    with pytest.raises(InvalidInputError) as caught:
        provider.embed(["fine", "also \x00BAD text"])

    assert caught.value.status_code == 400
    assert "at index 1" in caught.value.message
    assert not isinstance(caught.value, TransientEmbeddingError)


def test_empty_string_is_refused_like_openai(provider):
    with pytest.raises(InvalidInputError):
        provider.embed(["ok", ""])


def test_wrong_key_is_a_config_error_that_never_shows_the_key(fake_openai):
    secret = "sk-proj-Secret123456789"
    client = OpenAIProvider(
        api_key=secret, base_url=fake_openai.base_url, model="m", dim=DIM, timeout_s=5
    )

    with pytest.raises(ProviderConfigError) as caught:
        client.embed(TEXTS)

    assert caught.value.status_code == 401
    assert_no_secret(caught.value, secret)
    assert secret not in repr(client)


def test_unknown_url_is_a_config_error(fake_openai):
    client = OpenAIProvider(
        api_key=fake_openai.api_key, base_url=fake_openai.base_url + "/nope", model="m",
        dim=DIM, timeout_s=5,
    )  # fmt: skip

    with pytest.raises(ProviderConfigError) as caught:
        client.embed(TEXTS)

    assert caught.value.status_code == 404


def test_no_error_ever_shows_the_key(fake_openai):
    secret = fake_openai.api_key = "sk-live-TopSecretValue42"
    client = OpenAIProvider(
        api_key=secret, base_url=fake_openai.base_url, model="m", dim=DIM, timeout_s=0.5
    )
    fake_openai.set_poison("poison")
    fake_openai.script("500", "429_retry_after", "drop", "short", "hang")
    batches = [TEXTS] * 5 + [["poison " + secret]]
    for batch in batches:
        with pytest.raises(EmbeddingError) as caught:
            client.embed(batch)
        assert_no_secret(caught.value, secret)


def assert_no_secret(error: BaseException, secret: str) -> None:
    seen = f"{error} {error!r} {getattr(error, 'message', '')} {error.__cause__!r}"
    assert secret not in seen
    assert secret[-8:] not in seen


def test_decode_rejects_duplicate_and_out_of_range_indices():
    vector = "AAAAAA=="  # two zero floats
    dup = {"data": [{"index": 0, "embedding": vector}, {"index": 0, "embedding": vector}]}
    out = {"data": [{"index": 0, "embedding": vector}, {"index": 2, "embedding": vector}]}

    for body in (dup, out):
        with pytest.raises(TransientEmbeddingError):
            decode_embeddings(body, 2, 2)


def test_decode_accepts_float_lists_from_servers_ignoring_base64():
    body = {"data": [{"index": 1, "embedding": [1.0, 2.0]}, {"index": 0, "embedding": [3, 4]}]}

    assert decode_embeddings(body, 2, 2).tolist() == [[3.0, 4.0], [1.0, 2.0]]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", None])
def test_parse_duration_rejects_nonsense(text):
    assert parse_duration(text) is None


def test_retry_after_ms_wins_and_http_dates_are_understood():
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    now = 1_700_000_000.0
    date = formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=now) == pytest.approx(30.0)
    assert parse_retry_after({"retry-after": "garbage"}) is None


def test_rate_limit_headers():
    info = parse_rate_limit_headers(
        {
            "x-ratelimit-remaining-requests": "59",
            "x-ratelimit-remaining-tokens": "149984",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )

    assert (info.remaining_requests, info.remaining_tokens) == (59, 149984)
    assert (info.reset_requests_s, info.reset_tokens_s) == (1.0, 360.0)
    assert parse_rate_limit_headers({"content-type": "application/json"}) is None


def test_a_server_rejecting_dimensions_gets_one_line_naming_the_setting(fake_openai):
    fake_openai.set_reject_dimensions()
    width = fake_openai.default_dim
    options = dict(api_key=fake_openai.api_key, base_url=fake_openai.base_url, model="m",
                   dim=width, timeout_s=5)  # fmt: skip

    with pytest.raises(ProviderConfigError) as caught:
        OpenAIProvider(**options).embed(TEXTS)
    without = OpenAIProvider(**options, send_dimensions=False).embed(TEXTS)

    assert caught.value.blocker == "dimensions"
    assert "HELIX_EMBED_SEND_DIMENSIONS=false" in caught.value.message
    assert "\n" not in caught.value.message
    assert without.vectors.shape == (len(TEXTS), width)
