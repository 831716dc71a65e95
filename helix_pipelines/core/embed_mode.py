"""Which way a run embeds: the synchronous endpoint, or the OpenAI Batch API.

`batch` costs half and answers within 24 hours from a rate pool of its own; `sync` answers in
seconds. `auto` sends a backlog (more pending pairs than the threshold) to batches and keeps
fresh, small imports synchronous. Only the OpenAI provider has a Batch API: `auto` then falls
back to sync, an explicit `batch` is refused.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

EmbedMode = Literal["auto", "sync", "batch"]
MODES: tuple[str, ...] = ("auto", "sync", "batch")


class BatchModeUnavailable(ValueError):
    """Batch mode asked for where there is no Batch API (the local provider)."""

    transient = False


OPENAI_API_HOST = "api.openai.com"


def has_batch_api(base_url: str | None, declared: bool | None) -> bool:
    """Whether `auto` may send backlogs to the Batch API. OpenAI-compatible servers (vLLM,
    Ollama, gateways) rarely have one: unless the operator says so, only OpenAI's own does."""
    if declared is not None:
        return declared
    return base_url is None or urlsplit(base_url).hostname == OPENAI_API_HOST


def choose_mode(
    mode: str, *, pending: int, threshold: int, batch_capable: bool
) -> Literal["sync", "batch"]:
    if mode not in MODES:
        raise ValueError(f"unknown embedding mode {mode!r}: expected one of {', '.join(MODES)}")
    if mode == "batch":
        if not batch_capable:
            raise BatchModeUnavailable(
                "batch mode needs the openai provider (set OPENAI_API_KEY); "
                "the local provider embeds synchronously"
            )
        return "batch"
    if mode == "auto" and batch_capable and pending > threshold:
        return "batch"
    return "sync"
