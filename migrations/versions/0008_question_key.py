"""`qa_pair.question_key`: a pair's identity within its source (core.normalize.question_key,
16 bytes of SHA-256 as a uuid), written by the import with the pair, so that the swap to a new
source version is planned in SQL instead of loading every question of the source into Python
(db.sources). `qa_pair_change.old_question_key` lets a rollback restore it with the question.

Nullable and not backfilled: pairs written before this revision, or by other tools, get their
key computed during the swap that needs it. A backfill would rewrite every row of qa_pair, and
each rewritten row with a vector is a new entry in the HNSW index.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("qa_pair", sa.Column("question_key", UUID(as_uuid=True)))
    op.add_column("qa_pair_change", sa.Column("old_question_key", UUID(as_uuid=True)))


def downgrade() -> None:
    op.drop_column("qa_pair_change", "old_question_key")
    op.drop_column("qa_pair", "question_key")
