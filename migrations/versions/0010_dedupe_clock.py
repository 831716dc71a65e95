"""`dedupe_clock`: one row whose `tick` every change to the set of pair contents advances in
its own transaction (pairs copied, deleted, or given other content). An import that dedupes
looks a batch's content hashes up before the batch's turn to commit, while the batch before it
is still being copied (db.dedupe); under the dedupe lock, the tick tells whether anything but
its own batches changed the contents since that lookup's snapshot.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dedupe_clock",
        sa.Column("id", sa.SmallInteger, primary_key=True, server_default="1"),
        sa.Column("tick", sa.BigInteger, nullable=False, server_default="0"),
        sa.CheckConstraint("id = 1", name="ck_dedupe_clock_one_row"),
    )
    op.execute("INSERT INTO dedupe_clock DEFAULT VALUES")


def downgrade() -> None:
    op.drop_table("dedupe_clock")
