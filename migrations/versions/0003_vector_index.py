"""A cheaper HNSW graph on qa_pair.embedding: m = 8, ef_construction = 32.

With pgvector's defaults (m = 16, ef_construction = 64) every vector written pays for a search
of 64 candidates and links to up to 32 neighbours at level 0; at 1,536 dimensions that cost, not
the pipeline, bounded the embedding write. Measured on the embedded PostgreSQL 18 / pgvector
0.8.5 with 4,514 Bitext pairs embedded by the local provider (README, Performance):

| index on embedding                         | UPDATE rows/s | recall@10, ef_search 40 |
|--------------------------------------------|---------------|-------------------------|
| none                                       | 7,500         | (exact scan)            |
| hnsw m 16, ef_construction 64 (defaults)   | 580           | 0.993                   |
| hnsw m 16, ef_construction 32              | 670           | 0.969                   |
| hnsw m 8, ef_construction 32 (this)        | 1,680         | 0.980                   |
| hnsw over binary_quantize(e)::bit(1536)    | 1,890         | 0.13 even re-ranking 10 x k |

Binary quantization loses the local provider's vectors (signed feature hashing: mostly zeros,
which quantize like negatives), so it is not used; search makes up for the sparser graph with a
larger ef_search (db/search.py). The column stays `vector(HELIX_EMBEDDING_DIM)`.
The price is recall on large, hard sets: 0.89 at ef_search 100 on 200,000 generated clustered
vectors, where the defaults keep 0.999 (README, Performance).

Needs pgvector >= 0.5.0 (HNSW and its build parameters); the upgrade checks and says so.
The index is rebuilt from the stored vectors: on a large knowledge base this takes a while (about
a second per few thousand vectors on 2 cores) and holds a write lock on qa_pair meanwhile.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INDEX = "ix_qa_pair_embedding_hnsw"
MIN_PGVECTOR = (0, 5, 0)
CREATE = "CREATE INDEX {name} ON qa_pair USING hnsw (embedding vector_cosine_ops){params}"
CHEAP_GRAPH = " WITH (m = 8, ef_construction = 32)"


class PgvectorTooOld(RuntimeError):
    transient = False


def _check_pgvector() -> None:
    version = op.get_bind().scalar(
        sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    )
    found = tuple(int(part) for part in (version or "0").split(".")[:3])
    if found < MIN_PGVECTOR:
        raise PgvectorTooOld(
            f"the vector extension is {version or 'not installed'}; Helix needs pgvector "
            f"{'.'.join(map(str, MIN_PGVECTOR))} or later (HNSW): install a newer pgvector on "
            "the server, run ALTER EXTENSION vector UPDATE, then `helix-pipelines db upgrade`"
        )


def _rebuild(params: str) -> None:
    # Built under a new name, then swapped, in the migration's one transaction: CREATE INDEX
    # blocks writes only, so searches keep using the old index while the new one builds.
    # A graph that outgrows maintenance_work_mem builds many times slower (pgvector's notice).
    op.execute("SET LOCAL maintenance_work_mem = '256MB'")
    op.execute(CREATE.format(name=f"{INDEX}_new", params=params))
    op.execute(f"DROP INDEX {INDEX}")
    op.execute(f"ALTER INDEX {INDEX}_new RENAME TO {INDEX}")


def upgrade() -> None:
    _check_pgvector()
    _rebuild(CHEAP_GRAPH)


def downgrade() -> None:
    _rebuild("")
