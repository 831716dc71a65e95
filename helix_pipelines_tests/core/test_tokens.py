"""Offline token counts: never below the real cl100k_base count for natural text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helix_pipelines.core import tokens
from helix_pipelines.core.tokens import count_tokens, estimate_tokens, truncate_to_tokens

# (text, its real cl100k_base count), counted once with an exact BPE implementation.
KNOWN_COUNTS = [
    ("hello world", 2),
    ("tiktoken is great!", 6),
    ("antidisestablishmentarianism", 6),
    ("2 + 2 = 4", 7),
    ("お誕生日おめでとう", 9),
    ("How do I reset my password if I no longer have access to my email account?", 17),
    (
        "I'm sorry to hear that your order #48213 arrived damaged. Please reply with a photo of "
        "the package and we'll ship a replacement within 2-3 business days.",
        36,
    ),
    (
        "def chunked(items, size):\n    for start in range(0, len(items), size):\n"
        "        yield items[start : start + size]\n",
        29,
    ),
    (
        "SELECT id, question FROM qa_pair WHERE embedding_status = 'pending' ORDER BY id "
        "LIMIT 500 FOR UPDATE SKIP LOCKED;",
        26,
    ),
    (
        "const retryAfterMs = Number(headers['retry-after-ms'] ?? 0); // fall back to seconds\n"
        "if (!Number.isFinite(retryAfterMs)) throw new TypeError(`bad header`);",
        40,
    ),
    ("请问如何取消我的订单？我已经付款了，但是想要退款。", 23),
    ("我們的客服團隊會在二十四小時內回覆您的問題。", 29),
    ("注文をキャンセルするにはどうすればよいですか？返金はいつ受け取れますか。", 35),
    ("비밀번호를 재설정하려면 어떻게 해야 하나요? 이메일 주소를 더 이상 사용할 수 없습니다.", 43),
    ("Wie kann ich meine Lieferadresse ändern, nachdem die Bestellung aufgegeben wurde?", 20),
    ("Comment puis-je obtenir un remboursement pour un article endommagé ?", 19),
    ("🙂🚀✨ thanks!!! 🎉", 12),
]


@pytest.mark.parametrize(("text", "real"), KNOWN_COUNTS)
def test_estimate_never_undercounts_known_texts(text, real):
    assert real <= estimate_tokens(text) <= 3 * real + 3


def test_estimate_stays_within_a_useful_factor_for_english_prose():
    text = " ".join(["Please reply with a photo of the package and we will ship it."] * 50)

    assert estimate_tokens(text) <= 2.5 * 14 * 50


def test_counts_without_tiktoken_cache_use_the_estimate(monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # empty cache: no download allowed
    tokens._exact_counter.cache_clear()
    try:
        assert count_tokens("hello world") == estimate_tokens("hello world")
    finally:
        tokens._exact_counter.cache_clear()


def test_empty_text_has_no_tokens():
    assert count_tokens("") == 0


def test_truncate_keeps_short_text_and_cuts_long_text():
    assert truncate_to_tokens("short text", 100) == "short text"
    long_text = "word " * 5000

    cut = truncate_to_tokens(long_text, 1000)

    assert long_text.startswith(cut) and count_tokens(cut) <= 1000
    assert count_tokens(long_text[: len(cut) + 10]) > 1000  # and it is not needlessly short
    assert truncate_to_tokens(long_text, 0) == ""


@given(st.text(max_size=400), st.integers(min_value=0, max_value=120))
def test_truncation_is_a_prefix_within_budget(text, budget):
    cut = truncate_to_tokens(text, budget)

    assert text.startswith(cut)
    assert count_tokens(cut) <= budget


@given(st.text(max_size=300))
def test_never_more_than_one_token_per_byte_plus_slack(text):
    # A sanity bound: the estimate is an upper bound, not a wild one.
    assert estimate_tokens(text) <= len(text.encode("utf-8")) + 1
