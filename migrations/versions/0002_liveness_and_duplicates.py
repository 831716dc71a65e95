"""Liveness evidence that outlives a process, rollback that spares other imports' pairs.

- `run_heartbeat`: one row per Dagster run (or CLI run) doing work, kept fresh by a thread of
  the process that runs it, with the host and pid beside the run id. Recovery decides from it
  whether a run is dead, whatever Dagster's run storage says.
- `import_job.owner_host` / `owner_pid`: the process that owns a `processing` or
  `rolling_back` job, shown by `status` and used by recovery.
- `import_job.status` gains `rolling_back`: a rollback holds its job from start to end.
- `import_duplicate`: every row an import skipped as a duplicate, with the pair it matched, so
  rolling back the import that created the pair hands it to a surviving import instead.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OLD_STATUSES = "'pending','processing','completed','completed_with_errors','failed','rolled_back'"
NEW_STATUSES = OLD_STATUSES + ",'rolling_back'"


def upgrade() -> None:
    op.create_table(
        "run_heartbeat",
        sa.Column("run_id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("partition_key", sa.Text),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        # The process's start time (epoch seconds): a reused pid is not the same process.
        sa.Column("pid_started", sa.Float),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text("now()")),
    )  # fmt: skip
    op.add_column("import_job", sa.Column("owner_host", sa.Text))
    op.add_column("import_job", sa.Column("owner_pid", sa.Integer))
    op.drop_constraint("ck_import_job_status", "import_job", type_="check")
    op.create_check_constraint("ck_import_job_status", "import_job", f"status IN ({NEW_STATUSES})")
    op.create_table(
        "import_duplicate",
        sa.Column(
            "import_job_id",
            UUID(as_uuid=True),
            sa.ForeignKey("import_job.id", ondelete="CASCADE", name="fk_import_duplicate_job"),
            nullable=False,
        ),
        sa.Column("source_row", sa.Integer, nullable=False),
        # No foreign key: a pair deleted by a rollback takes its matches with it explicitly.
        sa.Column("qa_pair_id", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("import_job_id", "source_row", name="pk_import_duplicate"),
    )
    op.create_index("ix_import_duplicate_qa_pair", "import_duplicate", ["qa_pair_id"])


def downgrade() -> None:
    op.drop_table("import_duplicate")
    op.execute("UPDATE import_job SET status = 'failed' WHERE status = 'rolling_back'")
    op.drop_constraint("ck_import_job_status", "import_job", type_="check")
    op.create_check_constraint("ck_import_job_status", "import_job", f"status IN ({OLD_STATUSES})")
    op.drop_column("import_job", "owner_pid")
    op.drop_column("import_job", "owner_host")
    op.drop_table("run_heartbeat")
