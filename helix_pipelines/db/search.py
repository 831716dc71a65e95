"""Nearest pairs by cosine distance, through the HNSW index on qa_pair.embedding.

The index is a sparse graph (m = 8, ef_construction = 32: migrations/versions/0003) because it
makes every vector written cheaper; the search makes up for it by exploring more candidates
(ef_search), which costs a fraction of a millisecond per query. recall@10 against an exact
scan is printed by bench/embed.py.
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from pgvector.psycopg import register_vector
from sqlalchemy.engine import Engine

from helix_pipelines.db.sources import HIDDEN_JOBS

MIN_EF_SEARCH = 100  # 0.98+ recall@10 on the Bitext pairs with the m = 8 graph
MAX_EF_SEARCH = 1000  # pgvector's limit
ITERATIVE_SCAN_SINCE = (0, 8)

# The inner query alone touches qa_pair: ORDER BY the distance operator with a LIMIT, which is
# what lets the planner walk the HNSW index; the join then only decorates k rows. Retired pairs
# and those of source versions not (or no longer) in place are filtered during the index walk;
# pgvector's iterative scan keeps walking until k rows pass the filter.
_NEAREST = sa.text(
    "SELECT q.id, q.question, q.answer, q.category, q.import_job_id, j.partition_key, "
    "q.distance FROM ("
    "  SELECT id, question, answer, category, import_job_id, embedding <=> %(query)s AS distance"
    "  FROM qa_pair WHERE embedding IS NOT NULL AND retired_at IS NULL"
    f"  AND import_job_id <> ALL({HIDDEN_JOBS})"
    "  ORDER BY embedding <=> %(query)s LIMIT %(k)s"
    ") q JOIN import_job j ON j.id = q.import_job_id ORDER BY q.distance"
).text


def nearest(engine: Engine, vector: np.ndarray, k: int = 5) -> list[dict]:
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        register_vector(raw)
        with raw.cursor() as cursor:
            # LOCAL: the setting ends with this transaction, not with the pooled connection.
            # ef_search must be at least k to return k rows.
            ef_search = min(MAX_EF_SEARCH, max(MIN_EF_SEARCH, 2 * int(k)))
            cursor.execute(f"SET LOCAL hnsw.ef_search = {ef_search}")
            if _has_iterative_scan(cursor):
                cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            cursor.execute(_NEAREST, {"query": vector.astype(np.float32), "k": k})
            columns = [c.name for c in cursor.description]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def _has_iterative_scan(cursor) -> bool:
    """pgvector 0.8 and later: filtered searches keep walking the index. (Asked of the
    extension's version: before its library is loaded in a session its settings are unknown.)"""
    cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    row = cursor.fetchone()
    version = tuple(int(part) for part in (row[0] if row else "0").split(".")[:2])
    return version >= ITERATIVE_SCAN_SINCE
