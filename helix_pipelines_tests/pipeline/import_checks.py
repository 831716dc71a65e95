"""What the import tests compare: a job's rows, its row errors, its accounting."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import sqlalchemy as sa

from helix_pipelines.db import jobs

PAIR_FIELDS = "source_row, question, answer, category, content_hash"


def started_job(engine: sa.Engine, name: str) -> tuple[uuid.UUID, str]:
    """A registered job for a file called `name`, taken by a fresh run: (job id, run id)."""
    sha = hashlib.sha256(name.encode()).hexdigest()
    job, _ = jobs.register_job(engine, source_name=name, source_path=f"/{name}", sha256=sha)
    run_id = "run-" + uuid.uuid4().hex
    jobs.start_job(engine, job.id, run_id, stale_after_s=300)
    return job.id, run_id


def pair_rows(engine: sa.Engine, job_id: uuid.UUID) -> set[tuple]:
    sql = f"SELECT {PAIR_FIELDS} FROM qa_pair WHERE import_job_id = :j"
    with engine.connect() as conn:
        return {tuple(r) for r in conn.execute(sa.text(sql), {"j": job_id})}


def error_rows(engine: sa.Engine, job_id: uuid.UUID) -> set[tuple]:
    sql = "SELECT source_row, error_code, message FROM import_row_error WHERE import_job_id = :j"
    with engine.connect() as conn:
        return {tuple(r) for r in conn.execute(sa.text(sql), {"j": job_id})}


def ids_by_source_row(engine: sa.Engine, job_id: uuid.UUID) -> dict[int, int]:
    sql = "SELECT source_row, id FROM qa_pair WHERE import_job_id = :j"
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(sql), {"j": job_id}).all())


def duplicates_recorded(engine: sa.Engine, job_id: uuid.UUID) -> dict[int, int]:
    """Each skipped row of the job with the pair it was recorded against."""
    sql = "SELECT source_row, qa_pair_id FROM import_duplicate WHERE import_job_id = :j"
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(sql), {"j": job_id}).all())


def source_rows_repeated(engine: sa.Engine, job_id: uuid.UUID) -> list[int]:
    sql = (
        "SELECT source_row FROM (SELECT source_row FROM qa_pair WHERE import_job_id = :j "
        "UNION ALL SELECT source_row FROM import_row_error WHERE import_job_id = :j) r "
        "GROUP BY source_row HAVING count(*) > 1"
    )
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), {"j": job_id}).scalars())


def assert_accounting(job: jobs.Job) -> None:
    assert job.rows_total == job.pairs_created + job.duplicates_skipped + job.row_errors, job


def register(engine: sa.Engine, path: Path, **options) -> jobs.Job:
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    job, created = jobs.register_job(
        engine, source_name=path.name, source_path=str(path), sha256=sha, options=options
    )
    assert created
    return job


def clean_import(engine: sa.Engine, path: Path, options) -> tuple[set, set, jobs.Job]:
    """Import `path` undisturbed, capture its rows, then remove the job (pairs are deduplicated
    across the knowledge base, so a second import of the same file must start from empty)."""
    from helix_pipelines.pipeline.importing import import_file

    empty_tables(engine)
    job = register(engine, path)
    report = import_file(engine, job.id, run_id="clean", options=options)
    captured = pair_rows(engine, job.id), error_rows(engine, job.id), report.job
    empty_tables(engine)
    return captured


def empty_tables(engine: sa.Engine) -> None:
    from helix_pipelines_tests.support.db_fixtures import truncate_all

    truncate_all(engine)
