"""Embedding through the OpenAI Batch API: `embedding_batch`, its pairs, and the `batched` state.

`embedding_batch` holds one row per batch, written before each remote call (intent first), so a
process killed between building the file and storing the results leaves enough to adopt what
reached the server instead of paying for it twice. `embedding_batch_pair` links a batch to the
pairs it carries, with the hash of the text sent (a pair whose text changed since submission is
not given the stale vector) and the outcome once collected. A pair inside a live batch has
`embedding_status = 'batched'`: no synchronous run claims it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OLD_STATUSES = "'pending', 'completed', 'failed'"
NEW_STATUSES = "'pending', 'batched', 'completed', 'failed'"
BATCH_STATES = (
    "'building', 'uploading', 'creating', 'validating', 'in_progress', 'finalizing', "
    "'cancelling', 'completed', 'expired', 'failed', 'cancelled', 'collected'"
)


def _now():
    return sa.text("now()")


def upgrade() -> None:
    op.drop_constraint("ck_qa_pair_embedding_status", "qa_pair", type_="check")
    op.create_check_constraint(
        "ck_qa_pair_embedding_status", "qa_pair", f"embedding_status IN ({NEW_STATUSES})"
    )
    op.create_table(
        "embedding_batch",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("import_job_id", UUID(as_uuid=True)),
        sa.Column("input_file_id", sa.Text),
        sa.Column("remote_batch_id", sa.Text, unique=True),
        sa.Column("output_file_id", sa.Text),
        sa.Column("error_file_id", sa.Text),
        sa.Column("request_count", sa.Integer, nullable=False),
        sa.Column("completed_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("token_estimate", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("tokens_used", sa.BigInteger),
        sa.Column("errors", JSONB),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
        sa.Column("submitted_at", sa.DateTime(timezone=True)),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("collected_at", sa.DateTime(timezone=True)),
        sa.Column("polled_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(f"state IN ({BATCH_STATES})", name="ck_embedding_batch_state"),
    )
    op.create_index("ix_embedding_batch_state", "embedding_batch", ["state"])
    op.create_table(
        "embedding_batch_pair",
        sa.Column(
            "batch_id",
            UUID(as_uuid=True),
            sa.ForeignKey("embedding_batch.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "qa_pair_id",
            sa.BigInteger,
            sa.ForeignKey("qa_pair.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("text_hash", sa.Text, nullable=False),
        sa.Column("truncated", sa.Boolean, nullable=False, server_default=sa.false()),
        # NULL while the batch is live; then completed, failed, retry or returned.
        sa.Column("outcome", sa.Text),
    )
    op.create_index("ix_embedding_batch_pair_pair", "embedding_batch_pair", ["qa_pair_id"])


def downgrade() -> None:
    op.execute("UPDATE qa_pair SET embedding_status = 'pending' WHERE embedding_status = 'batched'")
    op.drop_table("embedding_batch_pair")
    op.drop_table("embedding_batch")
    op.drop_constraint("ck_qa_pair_embedding_status", "qa_pair", type_="check")
    op.create_check_constraint(
        "ck_qa_pair_embedding_status", "qa_pair", f"embedding_status IN ({OLD_STATUSES})"
    )
