"""Preparing items and planning batches within the API's limits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from helix_pipelines.core.batching import EmbedItem, plan_batches, prepare_items
from helix_pipelines.core.tokens import count_tokens


def test_prepare_rejects_empty_texts_and_counts_tokens():
    items, rejected = prepare_items([(1, "hello there"), (2, ""), (3, "   \n"), (4, "bye")])

    assert [item.key for item in items] == [1, 4]
    assert items[0].tokens == count_tokens("hello there")
    assert [key for key, _ in rejected] == [2, 3]
    assert all("empty" in reason for _, reason in rejected)


def test_prepare_truncates_over_long_texts():
    long_text = "support " * 3000

    items, rejected = prepare_items([(7, long_text)], max_input_tokens=500)

    assert rejected == []
    assert items[0].truncated and items[0].tokens <= 500
    assert long_text.startswith(items[0].text)


def test_prepare_rejects_over_long_texts_when_not_truncating():
    items, rejected = prepare_items([(7, "support " * 3000)], max_input_tokens=500, truncate=False)

    assert items == [] and rejected[0][0] == 7 and "over the 500 limit" in rejected[0][1]


def test_batches_split_on_item_count_and_tokens():
    items = [EmbedItem(key, "x", tokens) for key, tokens in enumerate([5, 5, 5, 20, 1])]

    assert [[i.key for i in b] for b in plan_batches(items, max_items=2)] == [[0, 1], [2, 3], [4]]
    by_tokens = plan_batches(items, max_items=10, max_tokens=15)
    assert [[i.key for i in b] for b in by_tokens] == [[0, 1, 2], [3], [4]]


def test_batches_never_exceed_the_api_item_limit():
    items = [EmbedItem(key, "x", 1) for key in range(5000)]

    assert [len(batch) for batch in plan_batches(items, max_items=10_000)] == [2048, 2048, 904]


def test_no_items_no_batches():
    assert plan_batches([], max_items=10) == []


items_strategy = st.lists(st.integers(min_value=1, max_value=500), max_size=300).map(
    lambda tokens: [EmbedItem(key, "t", n) for key, n in enumerate(tokens)]
)


@given(items_strategy, st.integers(min_value=1, max_value=50), st.integers(500, 5000))
def test_every_item_in_exactly_one_batch_in_order_within_limits(items, max_items, max_tokens):
    batches = plan_batches(items, max_items=max_items, max_tokens=max_tokens)

    assert [item for batch in batches for item in batch] == items
    assert all(0 < len(batch) <= max_items for batch in batches)
    assert all(sum(item.tokens for item in batch) <= max_tokens for batch in batches)


@given(items_strategy, st.integers(min_value=1, max_value=50), st.integers(500, 5000))
def test_greedy_batches_are_full(items, max_items, max_tokens):
    batches = plan_batches(items, max_items=max_items, max_tokens=max_tokens)

    for batch, following in zip(batches, batches[1:], strict=False):
        next_item = following[0]
        total = sum(item.tokens for item in batch) + next_item.tokens
        assert len(batch) == max_items or total > max_tokens
