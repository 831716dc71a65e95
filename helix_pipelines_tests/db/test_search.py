"""Search finds the pair asked for through the HNSW index, and agrees with an exact scan."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from pgvector.psycopg import register_vector

from helix_pipelines.db import search
from helix_pipelines.db.search import nearest
from helix_pipelines.embedding.base import embedding_text
from helix_pipelines.embedding.local_provider import LocalProvider
from helix_pipelines_tests.support.db_fixtures import TEST_EMBEDDING_DIM
from helix_pipelines_tests.support.embed_driver import insert_job

TOPICS = ["order", "refund", "invoice", "password", "delivery", "account", "coupon", "address"]


def _pairs() -> list[tuple[str, str]]:
    return [
        (f"How do I change the {topic} number {n}?", f"Open settings, then {topic} {n}.")
        for topic in TOPICS
        for n in range(40)
    ]


def _embed_all(engine: sa.Engine, provider: LocalProvider) -> None:
    with engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT id, question, answer FROM qa_pair")).all()
        vectors = provider.embed([embedding_text(q, a) for _, q, a in rows]).vectors
        register_vector(conn.connection.driver_connection)
        conn.execute(
            sa.text(
                "UPDATE qa_pair SET embedding = :v, embedding_status = 'completed' WHERE id = :i"
            ),
            [{"i": row.id, "v": vector} for row, vector in zip(rows, vectors, strict=True)],
        )


def test_search_returns_the_right_pair_first_and_matches_an_exact_scan(engine):
    provider = LocalProvider(dim=TEST_EMBEDDING_DIM)
    insert_job(engine, _pairs())
    _embed_all(engine, provider)

    query = provider.embed(["how do I change the refund number 17"]).vectors[0]
    hits = nearest(engine, query, k=10)

    assert hits[0]["question"] == "How do I change the refund number 17?"
    with engine.connect() as conn:
        register_vector(conn.connection.driver_connection)
        exact = conn.execute(
            sa.text("SELECT id FROM qa_pair ORDER BY embedding <=> :v LIMIT 10"), {"v": query}
        ).scalars()
        assert [h["id"] for h in hits] == list(exact)
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)


def test_search_walks_the_hnsw_index(engine):
    insert_job(engine, _pairs())
    _embed_all(engine, LocalProvider(dim=TEST_EMBEDDING_DIM))
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE qa_pair"))
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))  # 320 rows: a scan is cheaper
        raw = conn.connection.driver_connection
        register_vector(raw)
        with raw.cursor() as cursor:
            # The query search runs, filters for retired and hidden pairs included.
            query = {"query": np.ones(TEST_EMBEDDING_DIM, dtype=np.float32), "k": 5}
            cursor.execute("EXPLAIN " + search._NEAREST, query)
            plan = [row[0] for row in cursor.fetchall()]
        assert "ix_qa_pair_embedding_hnsw" in "\n".join(plan)
