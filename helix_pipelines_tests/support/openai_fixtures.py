"""pytest plugin: a fake OpenAI embeddings server per test (registered by the root conftest)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helix_pipelines_tests.support.fake_openai import FakeOpenAI, running_fake_openai

__all__ = ["fake_openai", "running_fake_openai"]


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A started server (`.base_url`, `.api_key`, `.script(...)`, `.stats`), stopped afterwards."""
    with running_fake_openai() as server:
        yield server
