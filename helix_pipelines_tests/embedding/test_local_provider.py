"""The offline provider: deterministic, normalised, fast enough, and finds pairs again."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helix_pipelines.embedding import build_provider
from helix_pipelines.embedding.base import EmbeddingProvider, ProviderConfigError, embedding_text
from helix_pipelines.embedding.local_provider import LocalProvider
from helix_pipelines.embedding.openai_provider import OpenAIProvider

REPO_ROOT = Path(__file__).resolve().parents[2]
BITEXT = REPO_ROOT.parent / "shared" / "data" / "bitext_customer_support_train.csv"


def test_vectors_are_unit_float32_of_the_requested_dimension():
    result = LocalProvider(dim=256).embed(["Where is my parcel?", "注文をキャンセル", "?!"])

    assert result.vectors.shape == (3, 256) and result.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


def test_same_text_same_vector_across_processes():
    text = "How do I change my shipping address?\n\nGo to Settings."
    here = LocalProvider(dim=64).embed([text]).vectors[0]
    code = (
        "from helix_pipelines.embedding.local_provider import LocalProvider;"
        f"print(LocalProvider(dim=64).embed([{text!r}]).vectors[0].tobytes().hex())"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()

    assert here.tobytes().hex() == there  # no dependence on PYTHONHASHSEED


def test_normalisation_makes_case_and_width_irrelevant():
    provider = LocalProvider(dim=128)
    plain, shouted = provider.embed(["refund my order", "ＲＥＦＵＮＤ MY ORDER"]).vectors

    assert np.allclose(plain, shouted)


def test_related_texts_are_closer_than_unrelated_ones():
    provider = LocalProvider(dim=512)
    query, near, far = provider.embed(
        ["cancel my order", "how can I cancel an order?", "update the billing address"]
    ).vectors

    assert query @ near > query @ far


def test_whitespace_only_text_gives_a_zero_vector():
    assert not LocalProvider(dim=32).embed(["   "]).vectors.any()


@pytest.mark.skipif(not BITEXT.exists(), reason="shared data not beside the repository")
def test_finds_each_pair_by_its_question():
    with BITEXT.open(newline="", encoding="utf-8") as handle:
        rows = [(row["instruction"], row["response"]) for row in csv.DictReader(handle)]
    provider = LocalProvider(dim=1536)
    pairs = provider.embed([embedding_text(q, a) for q, a in rows]).vectors
    queries = provider.embed([q for q, _ in rows]).vectors

    best = (queries @ pairs.T).argmax(axis=1)
    found = np.mean([rows[hit][0] == rows[i][0] for i, hit in enumerate(best)])

    assert len(rows) == 4514
    assert found >= 0.95


def test_build_provider_picks_the_right_one():
    local = build_provider(
        provider="local", model="x", dim=32, api_key=None, base_url=None, timeout_s=1
    )
    remote = build_provider(
        provider="openai", model="m", dim=32, api_key="sk-x", base_url="http://127.0.0.1:9/v1",
        timeout_s=1,
    )  # fmt: skip

    assert isinstance(local, LocalProvider) and isinstance(local, EmbeddingProvider)
    assert isinstance(remote, OpenAIProvider) and (remote.model, remote.dim) == ("m", 32)
    remote.close()


@pytest.mark.parametrize(("kind", "key"), [("openai", None), ("cohere", "k")])
def test_build_provider_refuses_bad_settings(kind, key):
    with pytest.raises(ProviderConfigError):
        build_provider(provider=kind, model="m", dim=8, api_key=key, base_url=None, timeout_s=1)
