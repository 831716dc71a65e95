"""Search latency as the knowledge base grows: p50/p95 of `search` (db.search.nearest, through
the HNSW index, as deployed) against an exact cosine scan of the same table, in the same run.

    .venv/bin/python bench/search.py [--sizes 100000:1536 1000000:128] [--queries 200]

Starts its own embedded PostgreSQL in a temporary directory and stops it. Each SIZE:DIM builds
qa_pair with the deployed schema at that width, fills it with generated unit vectors in
clusters (1,000 centres plus noise: real embeddings cluster, uniform noise is a worst case no
knowledge base looks like) by COPY BINARY without the vector index, then creates the index
exactly as deployed (its definition is read from the database before it is dropped). Loading
1,000,000 x 1,536 floats and building their graph takes most of an hour on 2 cores, so the
1,000,000 case defaults to 128 dimensions: latency grows with the graph's size, and the
1,536-dimension cost per distance is measured at 100,000.

Printed per size: p50 and p95 of search and of the exact scan (SET enable_indexscan = off: a
parallel sequential scan with a top-10 sort), their ratio, and recall@10 of search against the
exact scan on --exact-queries of the queries (the exact scan is slow at 1,000,000).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from pgvector.psycopg import register_vector

from helix_pipelines.db import migrate
from helix_pipelines.db.embedded import EmbeddedPostgres
from helix_pipelines.db.engine import create_app_engine, ensure_database
from helix_pipelines.db.search import nearest

INDEX = "ix_qa_pair_embedding_hnsw"
CHUNK = 50_000
CENTRES = 1_000


def generated(count: int, dim: int, seed: int = 0):
    """Unit vectors around CENTRES random centres, CHUNK at a time (memory stays flat)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, dim)).astype(np.float32)
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        chunk = centres[rng.integers(CENTRES, size=n)] + rng.standard_normal((n, dim)) * 0.6
        yield start, (chunk / np.linalg.norm(chunk, axis=1, keepdims=True)).astype(np.float32)


def load(engine: sa.Engine, count: int, dim: int) -> float:
    """COPY BINARY the generated pairs, then build the index as deployed; seconds taken."""
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE qa_pair, import_job CASCADE"))
        index_sql = conn.scalar(
            sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :i"), {"i": INDEX}
        )
        conn.execute(sa.text(f"DROP INDEX {INDEX}"))
        job = conn.scalar(
            sa.text(
                "INSERT INTO import_job (partition_key, source_name, status) "
                "VALUES ('bench', 'bench', 'completed') RETURNING id"
            )
        )
        raw = conn.connection.driver_connection
        register_vector(raw)
        columns = "import_job_id, source_row, question, answer, content_hash, embedding, "
        copy_sql = f"COPY qa_pair ({columns}embedding_status) FROM STDIN WITH (FORMAT BINARY)"
        with raw.cursor() as cursor, cursor.copy(copy_sql) as copy:
            copy.set_types(["uuid", "int4", "text", "text", "text", "vector", "text"])
            for start, chunk in generated(count, dim):
                for offset, vector in enumerate(chunk):
                    row = start + offset
                    copy.write_row((job, row, f"q{row}", "a", f"h{row}", vector, "completed"))
        print(f"  {count:,} x {dim} loaded in {time.perf_counter() - started:.0f}s", flush=True)
        # The whole graph in memory: a build that spills is many times slower.
        conn.execute(sa.text("SET LOCAL maintenance_work_mem = '4GB'"))
        conn.execute(sa.text(index_sql))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE qa_pair"))
    return time.perf_counter() - started


def exact(engine: sa.Engine, vector: np.ndarray, k: int = 10) -> list[int]:
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL enable_indexscan = off"))
        register_vector(conn.connection.driver_connection)
        return list(
            conn.execute(
                sa.text("SELECT id FROM qa_pair ORDER BY embedding <=> :v LIMIT :k"),
                {"v": vector, "k": k},
            ).scalars()
        )


def timed(fn, queries) -> tuple[list[float], list]:
    seconds, results = [], []
    for query in queries:
        started = time.perf_counter()
        results.append(fn(query))
        seconds.append(time.perf_counter() - started)
    return seconds, results


def measure(engine: sa.Engine, count: int, dim: int, queries: int, exact_queries: int) -> str:
    built = load(engine, count, dim)
    # Queries near stored vectors (cosine about 0.995 to one of them), as a question is near
    # the stored pair it asks about; not copies of them. The first chunk generated again is
    # the first chunk stored.
    rng = np.random.default_rng(1)
    sources = next(generated(count, dim))[1][:queries]
    probes = (sources + rng.normal(0, 0.1 / np.sqrt(dim), sources.shape)).astype(np.float32)
    nearest(engine, probes[0], 10)  # warm the cache the way a live server's is
    search_s, hits = timed(lambda q: [h["id"] for h in nearest(engine, q, 10)], probes)
    exact_s, truth = timed(lambda q: exact(engine, q), probes[:exact_queries])
    recall = np.mean([len(set(h) & set(t)) / 10 for h, t in zip(hits, truth, strict=False)])
    p50, p95 = np.percentile(search_s, [50, 95]) * 1000
    e50, e95 = np.percentile(exact_s, [50, 95]) * 1000
    return (
        f"{count:>10,} {dim:>5} {built:>7.0f}s {p50:>8.1f} {p95:>8.1f} {e50:>9.1f} {e95:>9.1f} "
        f"{p95 / e95:>8.4f} {recall:>9.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["100000:1536", "1000000:128"])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=20)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    lines = []
    with tempfile.TemporaryDirectory(prefix="hxs") as home:
        server = EmbeddedPostgres(Path(home))
        server.acquire()
        try:
            for size in args.sizes:
                count, dim = (int(part) for part in size.split(":"))
                database = f"bench_search_{dim}"
                ensure_database(server.url("postgres"), database)
                engine = create_app_engine(server.url(database))
                migrate.upgrade(engine, dim)
                lines.append(measure(engine, count, dim, args.queries, args.exact_queries))
                engine.dispose()
        finally:
            server.stop()
    print(
        f"\n{'pairs':>10} {'dim':>5} {'load':>8} {'p50 ms':>8} {'p95 ms':>8} {'exact p50':>9} "
        f"{'exact p95':>9} {'p95/exact':>8} {'recall@10':>9}"
    )
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
