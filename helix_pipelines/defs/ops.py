"""Operator jobs for the Launchpad, each with typed config."""

from dagster import Config, Failure, OpExecutionContext, job, op
from pydantic import Field

from helix_pipelines import metrics
from helix_pipelines.db import jobs
from helix_pipelines.defs.resources import (
    DatabaseResource,
    EmbeddingResource,
    ImportSettingsResource,
)
from helix_pipelines.defs.runs import recover_dead_runs
from helix_pipelines.embedding.base import ProviderConfigError
from helix_pipelines.pipeline.embedding import retry_failed


class RecoverConfig(Config):
    stale_after_s: float | None = Field(
        default=None,
        description="Heartbeat age that makes a processing import stale (default: the setting).",
    )


@op(description="Return processing imports whose run died to pending, keeping checkpoints.")
def recover_stale_imports_op(
    context: OpExecutionContext,
    config: RecoverConfig,
    database: DatabaseResource,
    import_settings: ImportSettingsResource,
) -> None:
    stale_after = config.stale_after_s or import_settings.stale_after_s
    recovered = recover_dead_runs(database.get_engine(), context.instance, stale_after)
    keys = [job.partition_key for job in recovered]
    context.log.info(f"returned {len(keys)} import(s) to pending: {keys}")
    context.add_output_metadata({"recovered": len(keys), "partitions": ", ".join(keys)})


@job(
    description=(
        "Recovery now: stale imports go back to pending; the stale-imports sensor then "
        "requests their runs, which resume from the checkpoint."
    )
)
def recover_stale_imports():
    recover_stale_imports_op()


class EmbedPendingConfig(Config):
    import_job: str | None = Field(
        default=None, description="An import job id or partition key; empty: every import."
    )
    retry_failed: bool = Field(
        default=False,
        description="First return the failed pairs (of import_job, or of every import) to "
        "pending, bad inputs included.",
    )


@op(description="Embed pending pairs now, under the shared rate limiter and circuit breaker.")
def embed_pending_op(
    context: OpExecutionContext,
    config: EmbedPendingConfig,
    database: DatabaseResource,
    embedding: EmbeddingResource,
) -> None:
    engine = database.get_engine()
    job_id = jobs.get_job(engine, config.import_job).id if config.import_job else None
    requeued = retry_failed(engine, job_id) if config.retry_failed else 0
    try:
        report, _ = embedding.setup().embed(
            engine, job_id=job_id, observer=metrics.PrometheusEmbedObserver(), operator=True
        )
    except ProviderConfigError as exc:
        raise Failure(
            description=exc.message,
            metadata={"embeddings_blocked": str(exc.blocker or ""), "requeued": requeued},
            allow_retries=False,
        ) from exc
    context.add_output_metadata(
        {
            "requeued": requeued,
            "embedded": report.embedded,
            "failed": report.failed,
            "parked": report.parked,
            "still_pending": report.pending,
            "requests": report.requests,
            "tokens": report.tokens,
        }  # fmt: skip
    )


@job(name="embed_pending", description="Embed every pending pair (or one import's) now.")
def embed_pending_job():
    embed_pending_op()


class RollbackConfig(Config):
    import_job: str = Field(description="The import job id or partition key to roll back.")


@op(description="Delete the pairs one import created, in batches; the job becomes rolled_back.")
def rollback_import_op(
    context: OpExecutionContext, config: RollbackConfig, database: DatabaseResource
) -> None:
    try:
        job, deleted = jobs.rollback_job(database.get_engine(), config.import_job)
    except (jobs.JobNotFound, jobs.JobBusy) as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    context.add_output_metadata({"pairs_deleted": deleted, "status": job.status})


@job(description="Undo an import: remove exactly the pairs it created.")
def rollback_import():
    rollback_import_op()
