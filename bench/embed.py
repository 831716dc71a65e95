"""Embedding throughput: (a) under enforced rate limits, (b) raw, against the bare openai client.

    .venv/bin/python bench/embed.py [--dim 256] [--windows 2] [--raw-inputs 8000] [--bitext CSV]

Starts its own embedded PostgreSQL in a temporary directory and a fake OpenAI server in this
process, and stops both.

(a) The server adds 50 ms a request and enforces 300 requests and 2,000,000 tokens a minute; the
    pipeline is configured at 0.97 of both. The workload is `windows` full windows of the
    configured request budget plus one batch, so the run ends just after the limiter's window
    has rolled over `windows` times: inputs of the full windows / elapsed time is the sustained
    rate. Ceiling: min(RPM x batch, TPM / tokens per input) with the server's limits.
(b) No limits, no latency: embed_pending end to end (claim, API call, decode, database write)
    in embeddings/s, against the bare client's rate (embeddings.create with its default
    encoding, vectors materialised as a numpy array) on the same texts, batch size and server;
    measured with the schema as deployed, then with the vector index dropped.
    Then the same at 1,536 dimensions with the local provider on the Bitext pairs (--bitext),
    so neither the API nor a narrow vector hides the index's cost: vectors/s as deployed (target
    600), without the vector index, their ratio, and recall@10 of `search` (db.search.nearest)
    against an exact cosine scan of the stored vectors (target 0.95).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openai
import pandas as pd
import sqlalchemy as sa

from helix_pipelines.core.circuit_breaker import CircuitBreaker
from helix_pipelines.core.rate_limit import RateLimiter, RateLimits
from helix_pipelines.db import migrate
from helix_pipelines.db.embedded import EmbeddedPostgres
from helix_pipelines.db.engine import create_app_engine, ensure_database
from helix_pipelines.db.search import nearest
from helix_pipelines.db.state_store import PostgresStateStore
from helix_pipelines.embedding.base import embedding_text
from helix_pipelines.embedding.local_provider import LocalProvider
from helix_pipelines.embedding.openai_provider import OpenAIProvider
from helix_pipelines.pipeline.embedding import EmbedOptions, embed_pending
from helix_pipelines_tests.support.fake_openai import FakeOpenAI, running_fake_openai

MODEL = "text-embedding-3-small"
# A ceiling (300 x 32 = 9,600 inputs a minute) under what the database sustains with the HNSW
# index in place, so (a) measures the limiter against the schema as deployed.
SERVER_RPM, SERVER_TPM, CONFIGURED_SHARE = 300, 2_000_000, 0.97
LIMITED_BATCH, LIMITED_CONCURRENCY, LATENCY_S = 32, 4, 0.05
RAW_BATCH, RAW_CONCURRENCY = 256, 4
UNLIMITED = {"rpm": 10**9, "tpm": 10**12}
LOCAL_DIM = 1536  # the default model's width: the write the issue measures
BITEXT = Path("/work/shared/data/bitext_customer_support_train.csv")


@dataclass
class Row:
    measure: str
    value: float
    reference: float
    unit: str
    target: float

    @property
    def ratio(self) -> float:
        return self.value / self.reference

    def line(self) -> str:
        verdict = "ok" if self.ratio >= self.target else "MISSED"
        return (
            f"{self.measure:<34} {self.value:>12,.0f} {self.reference:>12,.0f} {self.unit:<11} "
            f"{self.ratio:>6.3f} >= {self.target:.2f} {verdict}"
        )


def texts(count: int, tag: str) -> list[tuple[str, str]]:
    return [
        (f"{tag} question {i}: where is order {i * 7919}?", f"answer {i}.") for i in range(count)
    ]


def reset(engine: sa.Engine, pairs: list[tuple[str, str]]) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE qa_pair, import_job, pipeline_state CASCADE"))
        job = conn.scalar(
            sa.text(
                "INSERT INTO import_job (partition_key, source_name, status) "
                "VALUES ('bench', 'bench', 'completed') RETURNING id"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO qa_pair (import_job_id, source_row, question, answer, content_hash) "
                "SELECT :job, r, q, a, md5(q || a) "
                "FROM unnest(CAST(:qs AS text[]), CAST(:as AS text[])) "
                "WITH ORDINALITY AS t(q, a, r)"
            ),
            {"job": job, "qs": [q for q, _ in pairs], "as": [a for _, a in pairs]},
        )


def run_pipeline(engine, fake: FakeOpenAI, dim: int, rpm: int, tpm: int, options: EmbedOptions):
    provider = OpenAIProvider(
        api_key=fake.api_key, base_url=fake.base_url, model=MODEL, dim=dim, timeout_s=30
    )
    return run_provider(engine, provider, rpm, tpm, options)


def run_provider(engine, provider, rpm: int, tpm: int, options: EmbedOptions):
    store = PostgresStateStore(engine)
    try:
        started = time.perf_counter()
        report = embed_pending(
            engine, provider, limiter=RateLimiter(RateLimits(rpm, tpm), store),
            breaker=CircuitBreaker(store), options=options,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
    finally:
        provider.close()
    assert report.pending == 0 and report.failed == 0, report
    return report, elapsed


def limited(engine, dim: int, windows: int) -> Row:
    rpm, tpm = int(SERVER_RPM * CONFIGURED_SHARE), int(SERVER_TPM * CONFIGURED_SHARE)
    measured = windows * rpm * LIMITED_BATCH
    pairs = texts(measured + LIMITED_BATCH, "limited")
    reset(engine, pairs)
    tokens_per_input = np.mean([FakeOpenAI.tokens_for(embedding_text(q, a)) for q, a in pairs])
    ceiling = min(SERVER_RPM * LIMITED_BATCH, SERVER_TPM / tokens_per_input)
    options = EmbedOptions(batch_size=LIMITED_BATCH, max_concurrency=LIMITED_CONCURRENCY)
    with running_fake_openai(
        default_dim=dim, latency_s=LATENCY_S, rpm=SERVER_RPM, tpm=SERVER_TPM
    ) as fake:
        _, elapsed = run_pipeline(engine, fake, dim, rpm, tpm, options)
        violations = fake.stats.violations
    print(f"(a) {len(pairs)} inputs in {elapsed:.1f}s, server violations: {violations}")
    assert violations == 0, f"{violations} requests over the server's limit"
    return Row("(a) inputs/min under limits", measured / elapsed * 60, ceiling, "vs ceiling", 0.9)


def bare_client_rate(fake: FakeOpenAI, dim: int, pairs: list[tuple[str, str]]) -> float:
    client = openai.OpenAI(api_key=fake.api_key, base_url=fake.base_url, max_retries=0)
    inputs = [embedding_text(q, a) for q, a in pairs]
    started = time.perf_counter()
    for start in range(0, len(inputs), RAW_BATCH):
        response = client.embeddings.create(
            input=inputs[start : start + RAW_BATCH], model=MODEL, dimensions=dim
        )
        vectors = np.asarray([item.embedding for item in response.data], dtype=np.float32)
        assert vectors.shape[1] == dim
    rate = len(inputs) / (time.perf_counter() - started)
    client.close()
    return rate


def raw(engine, dim: int, count: int, label: str) -> Row:
    pairs = texts(count, "raw")
    options = EmbedOptions(batch_size=RAW_BATCH, max_concurrency=RAW_CONCURRENCY)
    with running_fake_openai(default_dim=dim, **UNLIMITED) as fake:
        bare_client_rate(fake, dim, pairs)  # warm the server's vector cache and connections
        bare = bare_client_rate(fake, dim, pairs)
        reset(engine, pairs)
        _, elapsed = run_pipeline(engine, fake, dim, UNLIMITED["rpm"], UNLIMITED["tpm"], options)
    print(f"(b) {count} inputs end to end in {elapsed:.2f}s; bare client {bare:,.0f}/s")
    return Row(label, count / elapsed, bare, "vs bare", 0.5)


def fake_section(engine, dim: int, count: int) -> list[Row]:
    rows = [raw(engine, dim, count, "(b) end to end, as deployed")]
    # The HNSW insert, not the pipeline, bounds the first figure; without the index the same
    # run times the pipeline itself.
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_qa_pair_embedding_hnsw"))
    rows.append(raw(engine, dim, count, "(b) end to end, no HNSW index"))
    return rows


def bitext_pairs(path: Path) -> list[tuple[str, str]]:
    frame = pd.read_csv(path, usecols=["instruction", "response"])
    return list(zip(frame["instruction"], frame["response"], strict=True))


def local_writes(engine, pairs: list[tuple[str, str]], label: str) -> tuple[float, float]:
    """(b) with the local provider, so the API is not the bound: vectors/s end to end, and the
    provider's own rate on the same texts."""
    provider = LocalProvider(dim=LOCAL_DIM)
    started = time.perf_counter()
    provider.embed([embedding_text(q, a) for q, a in pairs])
    bare = len(pairs) / (time.perf_counter() - started)
    reset(engine, pairs)
    options = EmbedOptions(batch_size=RAW_BATCH, max_concurrency=RAW_CONCURRENCY)
    _, elapsed = run_provider(engine, provider, UNLIMITED["rpm"], UNLIMITED["tpm"], options)
    print(f"(b) local {LOCAL_DIM} dims, {label}: {len(pairs)} vectors in {elapsed:.2f}s")
    return len(pairs) / elapsed, bare


def search_recall(engine, pairs: list[tuple[str, str]], queries: int = 200) -> float:
    """recall@10 of `search` (db.search.nearest, through the index) against an exact cosine
    scan of the same vectors. A hit tied with the exact 10th distance counts: the Bitext set
    holds near-identical questions whose order among equals is arbitrary."""
    provider = LocalProvider(dim=LOCAL_DIM)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, embedding::real[] FROM qa_pair ORDER BY id")).all()
    ids = [r[0] for r in rows]
    matrix = np.asarray([r[1] for r in rows], dtype=np.float32)
    picked = np.random.default_rng(7).choice(len(pairs), size=queries, replace=False)
    vectors = provider.embed([pairs[i][0] for i in picked]).vectors
    found = 0
    for vector in vectors:
        similarity = matrix @ vector
        tenth = np.sort(similarity)[-10]
        by_id = dict(zip(ids, similarity, strict=True))
        found += sum(by_id[hit["id"]] >= tenth - 1e-6 for hit in nearest(engine, vector, k=10))
    return found / (10 * queries)


def local_section(server: EmbeddedPostgres, bitext: Path) -> list[Row]:
    ensure_database(server.url("postgres"), "bench_local")
    engine = create_app_engine(server.url("bench_local"))
    migrate.upgrade(engine, LOCAL_DIM)
    pairs = bitext_pairs(bitext)
    deployed, bare = local_writes(engine, pairs, "as deployed")
    recall = search_recall(engine, pairs)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_qa_pair_embedding_hnsw"))
    bare_table, _ = local_writes(engine, pairs, "no vector index")
    engine.dispose()
    return [
        Row("(b) local 1536d, as deployed", deployed, bare, "vs provider", 0.0),
        Row("(b) local 1536d, vectors/s target", deployed, 600, "vs 600/s", 1.0),
        Row("(b) local 1536d, no vector index", bare_table, bare, "vs provider", 0.0),
        Row("(b) deployed vs no vector index", deployed, bare_table, "ratio", 0.0),
        Row("search recall@10 x1000 vs exact", recall * 1000, 1000, "Bitext", 0.95),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--windows", type=int, default=2, help="limiter windows to measure (a)")
    parser.add_argument("--raw-inputs", type=int, default=8000, help="inputs for (b), <= 8192")
    parser.add_argument("--skip-limited", action="store_true")
    parser.add_argument("--skip-fake", action="store_true", help="only the local 1,536-dim (b)")
    parser.add_argument("--bitext", type=Path, default=BITEXT, help="pairs for the local (b)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    with tempfile.TemporaryDirectory(prefix="hxb") as home:
        server = EmbeddedPostgres(Path(home))
        server.acquire()
        try:
            ensure_database(server.url("postgres"), "bench")
            engine = create_app_engine(server.url("bench"))
            migrate.upgrade(engine, args.dim)
            rows = [] if args.skip_limited else [limited(engine, args.dim, args.windows)]
            if not args.skip_fake:
                rows += fake_section(engine, args.dim, args.raw_inputs)
            engine.dispose()
            if args.bitext.exists():
                rows += local_section(server, args.bitext)
            else:
                print(f"(b) local: {args.bitext} not found, skipped (--bitext PATH)")
        finally:
            server.stop()
    print(f"\ndim {args.dim}")
    print(f"{'measure':<34} {'achieved':>12} {'reference':>12} {'':<11} {'ratio':>6}")
    for row in rows:
        print(row.line())


if __name__ == "__main__":
    main()
