"""Sources: an import can be a new version of a source that it then replaces.

- `import_job.source_key` / `source_version`: the source an import is a version of, and which
  version (1, 2, ...). Unique together.
- `qa_pair.retired_at`: set on a pair that a later version of its source no longer holds.
  Search, embedding and the coverage checks ignore retired pairs; they stay for audit and undo.
- `qa_pair_change`: what each version changed in pairs it did not create (an answer updated in
  place, a pair retired or brought back, or handed to another import that also holds it), with
  the values before, so that rolling the version
  back restores the previous one exactly (answers, embeddings, retirements).

Imports made before this revision become versions of the source their file name names (the
default rule, core.sources.source_key_for), numbered by creation: the next re-export of a file
imported earlier then replaces it instead of landing beside it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections import Counter

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import UUID

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("import_job", sa.Column("source_key", sa.Text))
    op.add_column("import_job", sa.Column("source_version", sa.Integer))
    op.create_index(
        "ux_import_job_source_version",
        "import_job",
        ["source_key", "source_version"],
        unique=True,
        postgresql_where=sa.text("source_key IS NOT NULL"),
    )
    op.add_column("qa_pair", sa.Column("retired_at", sa.DateTime(timezone=True)))
    op.create_table(
        "qa_pair_change",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "import_job_id",
            UUID(as_uuid=True),
            sa.ForeignKey("import_job.id", ondelete="CASCADE", name="fk_qa_pair_change_job"),
            nullable=False,
        ),
        sa.Column("qa_pair_id", sa.BigInteger, nullable=False),
        sa.Column("change", sa.Text, nullable=False),
        sa.Column("old_import_job_id", UUID(as_uuid=True)),
        sa.Column("old_source_row", sa.Integer),
        sa.Column("old_question", sa.Text),
        sa.Column("old_answer", sa.Text),
        sa.Column("old_category", sa.Text),
        sa.Column("old_content_hash", sa.Text),
        # Unconstrained width: the history keeps whatever the pair had.
        sa.Column("old_embedding", Vector()),
        sa.Column("old_embedding_status", sa.Text),
        sa.Column("old_embedding_model", sa.Text),
        sa.Column("old_embedding_attempts", sa.Integer),
        sa.Column("old_embedding_error", sa.Text),
        sa.Column("old_embedding_truncated", sa.Boolean),
        sa.Column("old_embedded_at", sa.DateTime(timezone=True)),
        sa.Column("old_retired_at", sa.DateTime(timezone=True)),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.CheckConstraint(
            "change IN ('updated', 'retired', 'revived', 'handed')", name="ck_qa_pair_change_change"
        ),
    )
    op.create_index("ix_qa_pair_change_job", "qa_pair_change", ["import_job_id"])
    _name_existing_sources()


def _name_existing_sources() -> None:
    from helix_pipelines.core.sources import source_key_for

    bind = op.get_bind()
    jobs = bind.execute(
        sa.text("SELECT id, source_name FROM import_job ORDER BY created_at, id")
    ).all()
    versions: Counter = Counter()
    updates = []
    for job_id, name in jobs:
        key = source_key_for(name)
        versions[key] += 1
        updates.append({"id": job_id, "key": key, "version": versions[key]})
    if updates:
        bind.execute(
            sa.text("UPDATE import_job SET source_key = :key, source_version = :version "
                    "WHERE id = :id"),
            updates,
        )  # fmt: skip


def downgrade() -> None:
    op.drop_table("qa_pair_change")
    op.drop_column("qa_pair", "retired_at")
    op.drop_index("ux_import_job_source_version", table_name="import_job")
    op.drop_column("import_job", "source_version")
    op.drop_column("import_job", "source_key")
