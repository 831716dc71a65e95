"""Read-only questions the asset checks and reports ask of the stored pairs themselves."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine


@dataclass(frozen=True)
class VectorHealth:
    """What the stored vectors say, not the status column: `completed` pairs without a vector
    or with one of another width, and how long the oldest pending pair has waited."""

    completed: int
    completed_without_vector: int
    wrong_dimension: int
    pending: int
    oldest_pending_age_s: float | None


def vector_health(engine: Engine, job_id: uuid.UUID, dim: int) -> VectorHealth:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT count(*) FILTER (WHERE embedding_status = 'completed') AS completed, "
                "count(*) FILTER (WHERE embedding_status = 'completed' AND embedding IS NULL) "
                "AS without_vector, "
                "count(*) FILTER (WHERE embedding IS NOT NULL AND vector_dims(embedding) <> :dim) "
                "AS wrong_dimension, "
                "count(*) FILTER (WHERE embedding_status = 'pending') AS pending, "
                "extract(epoch FROM now() - min(created_at) "
                "FILTER (WHERE embedding_status = 'pending')) AS oldest_pending_age_s "
                "FROM qa_pair WHERE import_job_id = :job AND retired_at IS NULL"
            ),
            {"job": job_id, "dim": dim},
        ).one()
    age = row.oldest_pending_age_s
    return VectorHealth(
        completed=row.completed,
        completed_without_vector=row.without_vector,
        wrong_dimension=row.wrong_dimension,
        pending=row.pending,
        oldest_pending_age_s=None if age is None else float(age),
    )


def embedding_fingerprints(engine: Engine) -> dict[str, tuple]:
    """{partition key: a fingerprint of its pairs' embedding state} over every import. Every
    write of an embedding run changes it (statuses move, attempts count up, a re-queue resets
    them): taken before and after a run that spans imports, the difference names the partitions
    the run touched."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT j.partition_key, "
                "count(*) FILTER (WHERE q.embedding_status = 'pending'), "
                "count(*) FILTER (WHERE q.embedding_status = 'completed'), "
                "count(*) FILTER (WHERE q.embedding_status = 'failed'), "
                "sum(q.embedding_attempts), max(q.embedded_at) "
                "FROM qa_pair q JOIN import_job j ON j.id = q.import_job_id GROUP BY 1"
            )
        ).all()
    return {row[0]: tuple(row[1:]) for row in rows}
