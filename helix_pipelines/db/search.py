"""Nearest pairs by cosine distance, through the HNSW index."""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from pgvector.psycopg import register_vector
from sqlalchemy.engine import Engine

_NEAREST = sa.text(
    "SELECT q.id, q.question, q.answer, q.category, q.import_job_id, j.partition_key, "
    "q.embedding <=> %(query)s AS distance "
    "FROM qa_pair q JOIN import_job j ON j.id = q.import_job_id "
    "WHERE q.embedding IS NOT NULL "
    "ORDER BY q.embedding <=> %(query)s LIMIT %(k)s"
).text


def nearest(engine: Engine, vector: np.ndarray, k: int = 5) -> list[dict]:
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        register_vector(raw)
        # The ORDER BY on the distance operator with a LIMIT is what lets the planner use the
        # HNSW index; ef_search must be at least k to return k rows.
        with raw.cursor() as cursor:
            cursor.execute(f"SET hnsw.ef_search = {max(40, int(k))}")
            cursor.execute(_NEAREST, {"query": vector.astype(np.float32), "k": k})
            columns = [c.name for c in cursor.description]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
