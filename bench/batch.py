"""Batch API vs synchronous embedding of the same backlog, under the same account limits.

    .venv/bin/python bench/batch.py [--pairs 100000] [--dim 256] [--batch-delay-min 30]

Starts its own embedded PostgreSQL in a temporary directory and a fake OpenAI server in this
process, and stops both. The vector index is dropped for both runs: they write the same vectors
the same way (db.embeddings.write_results), and the index's cost is bench/embed.py's subject.

sync (the reference): embed_pending, the pipeline's limiter configured at the server's limits
  (a typical account for text-embedding-3-small: 3,000 requests and 1,000,000 tokens a minute,
  enforced by the server); wall time measured.
batch: submit_batches, then the sensor's cycle (poll every 60 s, collect) until done. The
  server answers a batch `--batch-delay-min` minutes after its creation on its own clock; the
  clock is moved by the poll interval instead of sleeping, so the wall time reported is the
  measured processing time plus the simulated wait.
Both print requests made (to the sync pool and in all), wall time and the cost at list prices:
text-embedding-3-small $0.02 per 1M tokens, $0.01 per 1M through the Batch API (half price).
Ratios are batch / sync.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from embed import reset, texts  # bench/ is on the path when a bench runs as a script

from helix_pipelines.core.circuit_breaker import CircuitBreaker
from helix_pipelines.core.rate_limit import RateLimiter, RateLimits
from helix_pipelines.db import migrate
from helix_pipelines.db.embedded import EmbeddedPostgres
from helix_pipelines.db.engine import create_app_engine, ensure_database
from helix_pipelines.db.state_store import PostgresStateStore
from helix_pipelines.embedding.openai_batch import BatchClient
from helix_pipelines.embedding.openai_provider import OpenAIProvider
from helix_pipelines.pipeline import batch_collection as collection
from helix_pipelines.pipeline import batch_embedding as flow
from helix_pipelines.pipeline.embedding import EmbedOptions, embed_pending
from helix_pipelines_tests.support.fake_openai import running_fake_openai

MODEL = "text-embedding-3-small"
RPM, TPM = 3_000, 1_000_000
SYNC_USD, BATCH_USD = 0.02, 0.01  # per 1M tokens, list prices
POLL_S = 60.0


class ManualClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def load(engine: sa.Engine, count: int) -> None:
    reset(engine, texts(count, "bench"))  # the same knowledge base bench/embed.py builds


def run_sync(engine, fake, dim: int) -> dict:
    fake.reset_stats()
    provider = OpenAIProvider(
        api_key=fake.api_key, base_url=fake.base_url, model=MODEL, dim=dim, timeout_s=60
    )
    store = PostgresStateStore(engine)
    started = time.perf_counter()
    report = embed_pending(
        engine, provider, limiter=RateLimiter(RateLimits(RPM, TPM), store),
        breaker=CircuitBreaker(store), options=EmbedOptions(batch_size=256, max_concurrency=4),
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    provider.close()
    assert report.pending == 0 and report.failed == 0, report
    return {"requests": fake.stats.requests, "sync_pool_requests": fake.stats.requests,
            "wall_s": elapsed, "tokens": fake.stats.tokens,
            "usd": fake.stats.tokens * SYNC_USD / 1e6}  # fmt: skip


def run_batch(engine, fake, clock: ManualClock, dim: int, delay_s: float) -> dict:
    fake.batch.delay_s = delay_s
    client = BatchClient(api_key=fake.api_key, base_url=fake.base_url)
    options = flow.BatchOptions(model=MODEL, dim=dim, usd_per_million_tokens=BATCH_USD)
    calls = fake.batch.stats.calls
    started, waited = time.perf_counter(), 0.0
    submitted = flow.submit_batches(engine, client, options)
    while collection.run_cycle(engine, client, options).collected == [] or _left(engine):
        clock.now += POLL_S  # the poll interval passes on the server's clock, not ours
        waited += POLL_S
    elapsed = time.perf_counter() - started
    client.close()
    tokens = sum(fake.tokens_for(t) for t in _texts(engine))
    return {"requests": fake.batch.stats.calls - calls, "sync_pool_requests": 0,
            "wall_s": elapsed + waited, "processing_s": elapsed, "tokens": tokens,
            "usd": tokens * BATCH_USD / 1e6, "batches": len(submitted.batches)}  # fmt: skip


def _left(engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(
            sa.text("SELECT count(*) FROM qa_pair WHERE embedding_status <> 'completed'")
        )


def _texts(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(sa.text("SELECT question || E'\\n\\n' || answer FROM qa_pair")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch-delay-min", type=float, default=30.0)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    clock = ManualClock()
    with tempfile.TemporaryDirectory(prefix="hxb") as home:
        server = EmbeddedPostgres(Path(home))
        server.acquire()
        try:
            ensure_database(server.url("postgres"), "bench")
            engine = create_app_engine(server.url("bench"))
            migrate.upgrade(engine, args.dim)
            with engine.begin() as conn:
                conn.execute(sa.text("DROP INDEX ix_qa_pair_embedding_hnsw"))
            with running_fake_openai(rpm=RPM, tpm=TPM, clock=clock) as fake:
                fake._rpm, fake._tpm = RPM, TPM
                clock.now = time.time()
                load(engine, args.pairs)
                fake.clock = time.time  # the sync run's limits on the real clock
                sync = run_sync(engine, fake, args.dim)
                fake.clock = clock
                load(engine, args.pairs)
                batch = run_batch(engine, fake, clock, args.dim, args.batch_delay_min * 60)
            engine.dispose()
        finally:
            server.stop()
    delay = f"batch answered after {args.batch_delay_min:g} min, {batch['batches']} batch(es)"
    print(f"\n{args.pairs:,} pairs, dim {args.dim}, limits {RPM:,} RPM / {TPM:,} TPM, {delay}")
    print(f"{'measure':<28} {'batch':>14} {'sync (ref)':>14} {'ratio':>8}")
    measures = [
        ("requests", "HTTP requests, all"), ("sync_pool_requests", "requests on the sync limits"),
        ("wall_s", "wall time, s"), ("usd", "cost at list prices, USD"),
    ]  # fmt: skip
    for key, label in measures:
        ratio = batch[key] / sync[key] if sync[key] else float("nan")
        print(f"{label:<28} {batch[key]:>14,.4f} {sync[key]:>14,.4f} {ratio:>8.3f}")
    print(f"batch processing time (without the wait): {batch['processing_s']:.1f} s")


if __name__ == "__main__":
    main()
