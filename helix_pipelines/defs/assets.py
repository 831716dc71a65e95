"""The partitioned assets: thin wrappers over the plain functions in helix_pipelines.pipeline."""

import contextlib

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Backoff,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
)

from helix_pipelines import metrics
from helix_pipelines.core.errors import is_transient
from helix_pipelines.db import jobs
from helix_pipelines.db.embeddings import coverage
from helix_pipelines.defs.partitions import import_files
from helix_pipelines.defs.progress import EmbedProgressLog, ImportProgressLog
from helix_pipelines.defs.resources import (
    DatabaseResource,
    EmbeddingResource,
    ImportSettingsResource,
)
from helix_pipelines.defs.runs import TERMINAL, keep_alive
from helix_pipelines.embedding.base import ProviderConfigError
from helix_pipelines.pipeline.embedding import EmbedReport
from helix_pipelines.pipeline.importing import BatchFailed, ImportReport, import_file

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
            run_id=context.run.run_id,
            options=import_settings.import_options(job.options),
            on_batch=metrics.record_batch,
            on_progress=ImportProgressLog(context, import_settings.progress_log_s),
        )
    except jobs.JobBusy as exc:
        raise terminal_failure(str(exc)) from exc
    except Exception as exc:
        _note_error(engine, job.id, exc)
        if isinstance(exc, BatchFailed) or is_transient(exc):
            raise  # the RetryPolicy resumes from the checkpoint
        raise terminal_failure(f"{type(exc).__name__}: {exc}") from exc
    _count_rows(job, report.job)
    if report.job.status == "failed":
        raise terminal_failure(report.job.last_error or "the file could not be read")
    return MaterializeResult(metadata=import_metadata(report))


def terminal_failure(description: str) -> Failure:
    """A failure that retrying cannot mend: no step retry, and the run-failure sensor fails the
    import rather than re-requesting it."""
    return Failure(description=description, allow_retries=False, metadata={TERMINAL: True})


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


def _count_rows(before: jobs.Job, after: jobs.Job) -> None:
    metrics.record_rows(
        pairs=after.pairs_created - before.pairs_created,
        duplicates=after.duplicates_skipped - before.duplicates_skipped,
        errors=after.row_errors - before.row_errors,
    )


def _note_error(engine, job_id, exc: BaseException) -> None:
    # Best effort: the database may be the thing that is down.
    with contextlib.suppress(Exception):
        jobs.note_error(engine, job_id, f"{type(exc).__name__}: {exc}"[:2000])


EMBED_RETRY = RetryPolicy(
    max_retries=3, delay=10, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)
COVERAGE_CHECK = "embedding_coverage"
DIMENSION_CHECK = "embedding_dimensions"
ACCOUNTING_CHECK = "import_accounting"


@asset(
    partitions_def=import_files,
    deps=[qa_pairs],
    group_name="knowledge_base",
    kinds={"postgres", "openai"},
    pool="embedding_api",
    retry_policy=EMBED_RETRY,
    check_specs=[
        AssetCheckSpec(
            COVERAGE_CHECK,
            asset="qa_embeddings",
            description=(
                "Share of the partition's pairs with a completed embedding: ERROR under the "
                "configured threshold (default 0.99), WARN under 1.0."
            ),
        ),
        AssetCheckSpec(
            DIMENSION_CHECK,
            asset="qa_embeddings",
            description=("Every stored vector has the configured dimension."),
        ),
        AssetCheckSpec(
            ACCOUNTING_CHECK,
            asset="qa_embeddings",
            description=(
                "The import accounted for every row: rows_total = pairs_created + "
                "duplicates_skipped + row_errors."
            ),
        ),
    ],  # fmt: skip
    description=(
        "Embeddings of the partition's pairs in qa_pair.embedding (pgvector), through the "
        "configured provider under the deployment-wide rate limiter and circuit breaker. Pairs "
        "left pending by an outage or a rate limit are picked up by the pending-embeddings sensor."
    ),
)
def qa_embeddings(
    context: AssetExecutionContext,
    database: DatabaseResource,
    embedding: EmbeddingResource,
    import_settings: ImportSettingsResource,
) -> MaterializeResult:
    engine = database.get_engine()
    job = jobs.get_job(engine, context.partition_key)
    if job.status in ("rolling_back", "rolled_back"):
        verb = "is being" if job.status == "rolling_back" else "was"
        raise terminal_failure(f"import {job.partition_key} {verb} rolled back: nothing to embed")
    try:
        with keep_alive(context, engine, import_settings, kind="embed"):
            report, circuit_state = embedding.setup().embed(
                engine, job_id=job.id, observer=metrics.PrometheusEmbedObserver(),
                on_progress=EmbedProgressLog(context, import_settings.progress_log_s),
            )  # fmt: skip
    except ProviderConfigError as exc:
        raise _blocked(context, engine, job.id, embedding, exc) from exc
    if report.stopped_reason:
        context.log.warning(f"stopped early: {report.stopped_reason}")
    return MaterializeResult(
        metadata=embedding_metadata(report, circuit_state),
        check_results=embedding_checks(engine, job.id, embedding),
    )


def _blocked(context, engine, job_id, embedding: EmbeddingResource, exc) -> Failure:
    """The checks still report (coverage says why nothing was embedded); the run fails without
    retries: no retry can succeed until the configuration or the account changes."""
    for check in embedding_checks(engine, job_id, embedding):
        context.log_event(
            AssetCheckEvaluation(
                asset_key=context.asset_key, check_name=check.check_name, passed=check.passed,
                metadata=check.metadata, severity=check.severity,
                partition=context.partition_key,
            )
        )  # fmt: skip
    metadata = {"embeddings_blocked": str(exc.blocker or ""), TERMINAL: True}
    return Failure(description=exc.message, metadata=metadata, allow_retries=False)


def embedding_metadata(report: EmbedReport, circuit_state: str) -> dict:
    return {
        "embedded": report.embedded,
        "failed": report.failed,
        "still_pending": report.pending,
        "requests": report.requests,
        "retries": report.retries,
        "rate_limited_429": report.rate_limited,
        "tokens": report.tokens,
        "latency_p50_s": MetadataValue.float(round(report.latency_percentile(50), 4)),
        "latency_p95_s": MetadataValue.float(round(report.latency_percentile(95), 4)),
        "estimated_cost_usd": MetadataValue.float(round(report.cost_usd, 6)),
        "circuit_state": circuit_state,
        "reset_for_model_change": report.reset_for_model,
        "parked": report.parked,
        "released_from_parking": report.released,
        "stopped_reason": report.stopped_reason or "",
    }


def embedding_checks(engine, job_id, embedding: EmbeddingResource) -> list[AssetCheckResult]:
    cov = coverage(engine, job_id, embedding.dim)
    blocked = embedding.setup().blocked(engine)
    job = jobs.get_job(engine, job_id)
    accounted = job.pairs_created + job.duplicates_skipped + job.row_errors
    return [
        AssetCheckResult(
            check_name=COVERAGE_CHECK,
            passed=cov.ratio >= 1.0,
            severity=(AssetCheckSeverity.ERROR if cov.ratio < embedding.coverage_error_threshold
                      else AssetCheckSeverity.WARN),
            metadata={
                "coverage": MetadataValue.float(round(cov.ratio, 6)),
                "total": cov.total,
                "completed": cov.completed,
                "pending": cov.pending,
                "failed": cov.failed,
                "commonest_failures": MetadataValue.json(
                    [{"reason": r, "pairs": n} for r, n in cov.top_errors]),
                "embeddings_blocked": (f"{blocked['reason']}: {blocked['message']}"
                                       if blocked else ""),
            },
        ),
        AssetCheckResult(
            check_name=DIMENSION_CHECK,
            passed=cov.wrong_dimension == 0,
            metadata={"expected_dim": embedding.dim, "wrong_dimension": cov.wrong_dimension},
        ),
        AssetCheckResult(
            check_name=ACCOUNTING_CHECK,
            passed=job.finished and job.rows_total == accounted,
            metadata={
                "rows_total": job.rows_total, "pairs_created": job.pairs_created,
                "duplicates_skipped": job.duplicates_skipped, "row_errors": job.row_errors,
                "status": job.status,
            },
        ),
    ]  # fmt: skip
