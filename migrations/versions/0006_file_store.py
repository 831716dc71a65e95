"""The upload store's registry (`stored_file`) and the chunks of uploads kept in PostgreSQL.

Every stored copy (local directory, PostgreSQL or an fsspec URL) gets a `stored_file` row, so
retention and rollback can find copies no longer needed; with HELIX_FILE_STORE=postgres the
bytes live in `stored_file_chunk`, 1 MiB a row. Copies stored before this revision have no row
and are left alone.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_file",
        sa.Column("location", sa.Text, primary_key=True),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column(
            "stored_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("removed_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "stored_file_chunk",
        sa.Column(
            "location",
            sa.Text,
            sa.ForeignKey("stored_file.location", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    # Retention looks up the jobs that still need a copy by its location.
    op.create_index("ix_import_job_source_path", "import_job", ["source_path"])


def downgrade() -> None:
    op.drop_index("ix_import_job_source_path", table_name="import_job")
    op.drop_table("stored_file_chunk")
    op.drop_table("stored_file")
