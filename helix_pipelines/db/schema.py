"""The tables as SQLAlchemy Core objects, for queries. Alembic migrations own the DDL."""

from __future__ import annotations

import sqlalchemy as sa
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import JSONB, UUID

JOB_STATUSES = (
    "pending",
    "processing",
    "completed",
    "completed_with_errors",
    "failed",
    "rolling_back",
    "rolled_back",
)
FINISHED_JOB_STATUSES = ("completed", "completed_with_errors", "failed", "rolled_back")
EMBEDDING_STATUSES = ("pending", "batched", "completed", "failed")

metadata = sa.MetaData()

import_job = sa.Table(
    "import_job",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("partition_key", sa.Text, nullable=False, unique=True),
    sa.Column("source_name", sa.Text, nullable=False),
    sa.Column("source_path", sa.Text),
    sa.Column("source_sha256", sa.Text),
    sa.Column("format", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("rows_total", sa.Integer, nullable=False),
    sa.Column("rows_processed", sa.Integer, nullable=False),
    sa.Column("pairs_created", sa.Integer, nullable=False),
    sa.Column("duplicates_skipped", sa.Integer, nullable=False),
    sa.Column("row_errors", sa.Integer, nullable=False),
    sa.Column("checkpoint_data", JSONB),
    sa.Column("options", JSONB, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("dagster_run_id", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("owner_host", sa.Text),
    sa.Column("owner_pid", sa.Integer),
    sa.Column("source_key", sa.Text),
    sa.Column("source_version", sa.Integer),
)
# Job statuses whose pairs are the knowledge base (a source version counts once it completed).
PUBLISHED_JOB_STATUSES = ("completed", "completed_with_errors")


def qa_pair_table(dim: int | None = None) -> sa.Table:
    """`qa_pair`; the vector column's width is the schema's, checked at start-up."""
    return sa.Table(
        "qa_pair",
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("import_job_id", UUID(as_uuid=True), nullable=False),
        sa.Column("source_row", sa.Integer, nullable=False),
        sa.Column("question", sa.Text, nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("category", sa.Text),
        sa.Column("content_hash", sa.Text, nullable=False),
        sa.Column("question_key", UUID(as_uuid=True)),  # core.normalize.question_key
        sa.Column("embedding", Vector(dim)),
        sa.Column("embedding_status", sa.Text, nullable=False),
        sa.Column("embedding_model", sa.Text),
        sa.Column("embedding_attempts", sa.Integer, nullable=False),
        sa.Column("embedding_error", sa.Text),
        sa.Column("embedding_truncated", sa.Boolean, nullable=False),
        sa.Column("embedded_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True)),
        extend_existing=True,
    )


qa_pair = qa_pair_table()

import_row_error = sa.Table(
    "import_row_error",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("import_job_id", UUID(as_uuid=True), nullable=False),
    sa.Column("source_row", sa.Integer, nullable=False),
    sa.Column("error_code", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("raw_excerpt", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# Shared state of the rate limiter and the circuit breaker: one JSON document per name, updated
# under a row lock so every process of the deployment sees the same limits.
pipeline_state = sa.Table(
    "pipeline_state",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("data", JSONB, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

# Liveness evidence: one row per run doing work, kept fresh by the process running it.
run_heartbeat = sa.Table(
    "run_heartbeat",
    metadata,
    sa.Column("run_id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("partition_key", sa.Text),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("pid_started", sa.Float),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
)

# Rows an import skipped as duplicates, each with the pair it matched.
import_duplicate = sa.Table(
    "import_duplicate",
    metadata,
    sa.Column("import_job_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("source_row", sa.Integer, primary_key=True),
    sa.Column("qa_pair_id", sa.BigInteger, nullable=False),
)

# One row: advanced by every change to the set of pair contents (db.dedupe).
dedupe_clock = sa.Table(
    "dedupe_clock",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True, server_default="1"),
    sa.Column("tick", sa.BigInteger, nullable=False, server_default="0"),
    sa.CheckConstraint("id = 1", name="ck_dedupe_clock_one_row"),
)

# What each source version changed in pairs it did not create, with the values before: the
# undo log of a version (db.sources).
qa_pair_change = sa.Table(
    "qa_pair_change",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("import_job_id", UUID(as_uuid=True), nullable=False),
    sa.Column("qa_pair_id", sa.BigInteger, nullable=False),
    sa.Column("change", sa.Text, nullable=False),  # updated | retired | revived | handed
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# Batches submitted to the OpenAI Batch API (pipeline.batch_embedding) and the pairs they carry.
embedding_batch = sa.Table(
    "embedding_batch",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("import_job_id", UUID(as_uuid=True)),
    sa.Column("input_file_id", sa.Text),
    sa.Column("remote_batch_id", sa.Text),
    sa.Column("output_file_id", sa.Text),
    sa.Column("error_file_id", sa.Text),
    sa.Column("request_count", sa.Integer, nullable=False),
    sa.Column("completed_count", sa.Integer, nullable=False),
    sa.Column("failed_count", sa.Integer, nullable=False),
    sa.Column("token_estimate", sa.BigInteger, nullable=False),
    sa.Column("tokens_used", sa.BigInteger),
    sa.Column("errors", JSONB),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("submitted_at", sa.DateTime(timezone=True)),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("collected_at", sa.DateTime(timezone=True)),
    sa.Column("polled_at", sa.DateTime(timezone=True)),
)

embedding_batch_pair = sa.Table(
    "embedding_batch_pair",
    metadata,
    sa.Column("batch_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("qa_pair_id", sa.BigInteger, primary_key=True),
    sa.Column("text_hash", sa.Text, nullable=False),
    sa.Column("truncated", sa.Boolean, nullable=False),
    sa.Column("outcome", sa.Text),
)

# Every stored copy of an upload, whatever the store (pipeline.file_store): retention and
# rollback find here what can go. `removed_at` is set once the copy is deleted.
stored_file = sa.Table(
    "stored_file",
    metadata,
    sa.Column("location", sa.Text, primary_key=True),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("removed_at", sa.DateTime(timezone=True)),
)

# The bytes of uploads kept in the database (HELIX_FILE_STORE=postgres), in chunks written and
# read one at a time, so no process ever holds a whole file.
stored_file_chunk = sa.Table(
    "stored_file_chunk",
    metadata,
    sa.Column(
        "location",
        sa.Text,
        sa.ForeignKey("stored_file.location", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
