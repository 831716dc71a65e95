"""The initial schema: import jobs, pairs with their embeddings, row errors, shared state.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import context, op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JOB_STATUSES = "'pending','processing','completed','completed_with_errors','failed','rolled_back'"
EMBEDDING_STATUSES = "'pending','completed','failed'"


def _embedding_dim() -> int:
    """The vector width is fixed when the schema is first created (HELIX_EMBEDDING_DIM)."""
    config = context.config
    dim = config.attributes.get("embedding_dim") or context.get_x_argument(as_dictionary=True).get(
        "dim"
    )
    if dim is None:
        from helix_pipelines.settings import load_settings

        dim = load_settings().embedding_dim
    return int(dim)


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "import_job",
        sa.Column(
            "id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")
        ),
        sa.Column("partition_key", sa.Text, nullable=False),
        sa.Column("source_name", sa.Text, nullable=False),
        sa.Column("source_path", sa.Text),
        sa.Column("source_sha256", sa.Text),
        sa.Column("format", sa.Text),
        sa.Column("status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("rows_total", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rows_processed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("pairs_created", sa.Integer, nullable=False, server_default="0"),
        sa.Column("duplicates_skipped", sa.Integer, nullable=False, server_default="0"),
        sa.Column("row_errors", sa.Integer, nullable=False, server_default="0"),
        sa.Column("checkpoint_data", JSONB),
        sa.Column("options", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("dagster_run_id", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("partition_key", name="uq_import_job_partition_key"),
        sa.CheckConstraint(f"status IN ({JOB_STATUSES})", name="ck_import_job_status"),
        sa.CheckConstraint(
            "rows_total >= 0 AND rows_processed >= 0 AND pairs_created >= 0"
            " AND duplicates_skipped >= 0 AND row_errors >= 0 AND attempts >= 0",
            name="ck_import_job_counts_non_negative",
        ),
    )
    op.create_index("ix_import_job_status", "import_job", ["status"])
    op.create_index("ix_import_job_source_sha256", "import_job", ["source_sha256"])

    op.create_table(
        "qa_pair",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column(
            "import_job_id",
            UUID(as_uuid=True),
            sa.ForeignKey("import_job.id", ondelete="CASCADE", name="fk_qa_pair_import_job"),
            nullable=False,
        ),
        sa.Column("source_row", sa.Integer, nullable=False),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("category", sa.Text),
        sa.Column("content_hash", sa.Text, nullable=False),
        # The width comes from the configuration when the schema is first created.
        sa.Column("embedding", Vector(_embedding_dim())),
        sa.Column("embedding_status", sa.Text, nullable=False, server_default="pending"),
        sa.Column("embedding_model", sa.Text),
        sa.Column("embedding_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("embedding_error", sa.Text),
        sa.Column("embedding_truncated", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("embedded_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.UniqueConstraint("import_job_id", "source_row", name="uq_qa_pair_job_row"),
        sa.CheckConstraint(
            f"embedding_status IN ({EMBEDDING_STATUSES})", name="ck_qa_pair_embedding_status"
        ),
        sa.CheckConstraint(
            "embedding_status <> 'completed' OR embedding IS NOT NULL",
            name="ck_qa_pair_completed_has_embedding",
        ),
    )
    op.create_index("ix_qa_pair_import_job_id", "qa_pair", ["import_job_id"])
    op.create_index("ix_qa_pair_content_hash", "qa_pair", ["content_hash"])
    op.create_index(
        "ix_qa_pair_embedding_todo",
        "qa_pair",
        ["import_job_id", "id"],
        postgresql_where=sa.text("embedding_status <> 'completed'"),
    )
    op.execute(
        "CREATE INDEX ix_qa_pair_embedding_hnsw ON qa_pair USING hnsw (embedding vector_cosine_ops)"
    )

    op.create_table(
        "import_row_error",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column(
            "import_job_id",
            UUID(as_uuid=True),
            sa.ForeignKey(
                "import_job.id", ondelete="CASCADE", name="fk_import_row_error_import_job"
            ),
            nullable=False,
        ),
        sa.Column("source_row", sa.Integer, nullable=False),
        sa.Column("error_code", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("raw_excerpt", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.UniqueConstraint("import_job_id", "source_row", name="uq_import_row_error_job_row"),
        sa.CheckConstraint("char_length(raw_excerpt) <= 500", name="ck_import_row_error_excerpt"),
    )

    op.create_table(
        "pipeline_state",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("data", JSONB, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    )


def downgrade() -> None:
    op.drop_table("pipeline_state")
    op.drop_table("import_row_error")
    op.drop_table("qa_pair")
    op.drop_table("import_job")
    # The vector extension stays: other schemas in the database may use it.
