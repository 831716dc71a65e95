"""Turn pending rows into embedding requests that respect the API's per-input and per-request
limits (8,192 tokens an input; 2,048 inputs and 300,000 tokens a request)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from helix_pipelines.core.tokens import count_tokens, truncate_to_tokens

API_MAX_ITEMS = 2048
API_MAX_REQUEST_TOKENS = 300_000
API_MAX_INPUT_TOKENS = 8192


@dataclass(frozen=True)
class EmbedItem:
    key: int
    text: str
    tokens: int
    truncated: bool = False


def prepare_items(
    rows: Iterable[tuple[int, str]],
    max_input_tokens: int = API_MAX_INPUT_TOKENS,
    truncate: bool = True,
) -> tuple[list[EmbedItem], list[tuple[int, str]]]:
    """Count tokens per row; returns (items, rejected) with rejected = [(key, reason)].

    Empty or blank texts are rejected (the API refuses them). Over-long texts are cut to
    `max_input_tokens` when `truncate`, else rejected.
    """
    items: list[EmbedItem] = []
    rejected: list[tuple[int, str]] = []
    for key, text in rows:
        if not text or not text.strip():
            rejected.append((key, "empty text"))
            continue
        tokens = count_tokens(text)
        if tokens <= max_input_tokens:
            items.append(EmbedItem(key, text, tokens))
        elif truncate and (item := _truncated_item(key, text, max_input_tokens)):
            items.append(item)
        else:
            rejected.append((key, f"text has {tokens} tokens, over the {max_input_tokens} limit"))
    return items, rejected


def plan_batches(
    items: Sequence[EmbedItem], max_items: int, max_tokens: int = API_MAX_REQUEST_TOKENS
) -> list[list[EmbedItem]]:
    """Greedy, in order: at most min(max_items, 2048) items and max_tokens tokens a batch.

    An item heavier than max_tokens alone still gets a batch of its own rather than being
    dropped (prepare_items keeps items under the per-input limit, far below a request's).
    """
    item_cap = max(1, min(max_items, API_MAX_ITEMS))
    batches: list[list[EmbedItem]] = []
    current: list[EmbedItem] = []
    current_tokens = 0
    for item in items:
        if current and (len(current) >= item_cap or current_tokens + item.tokens > max_tokens):
            batches.append(current)
            current, current_tokens = [], 0
        current.append(item)
        current_tokens += item.tokens
    if current:
        batches.append(current)
    return batches


def _truncated_item(key: int, text: str, max_input_tokens: int) -> EmbedItem | None:
    cut = truncate_to_tokens(text, max_input_tokens)
    if not cut.strip():  # nothing meaningful fits: reject rather than embed whitespace
        return None
    return EmbedItem(key, cut, count_tokens(cut), truncated=True)
