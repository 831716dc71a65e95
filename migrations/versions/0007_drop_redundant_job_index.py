"""Drop `ix_qa_pair_import_job_id`: `uq_qa_pair_job_row` (import_job_id, source_row) begins with
the same column and serves every lookup by import, so the second index only cost writes (about a
tenth of an import's COPY time into qa_pair, bench/import.py).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_qa_pair_import_job_id")


def downgrade() -> None:
    op.create_index("ix_qa_pair_import_job_id", "qa_pair", ["import_job_id"])
