"""Operator jobs for the Launchpad, each with typed config."""

from dagster import Config, Failure, MetadataValue, OpExecutionContext, job, op
from pydantic import Field

from helix_pipelines import metrics
from helix_pipelines.db import jobs
from helix_pipelines.defs.partitions import import_files
from helix_pipelines.defs.reporting import (
    fingerprints,
    metadata_values,
    report_rollback,
    report_touched,
    run_metadata,
)
from helix_pipelines.defs.resources import (
    DatabaseResource,
    EmbeddingResource,
    ImportSettingsResource,
)
from helix_pipelines.defs.runs import keep_alive, recover_dead_runs
from helix_pipelines.embedding.base import ProviderConfigError
from helix_pipelines.pipeline.embedding import retry_failed
from helix_pipelines.pipeline.file_store import remove_unneeded


class RecoverConfig(Config):
    stale_after_s: float | None = Field(
        default=None,
        description="Heartbeat age that makes a processing import stale (default: the setting).",
    )


@op(
    description=(
        "Mark runs whose process is gone failed, return their imports to pending (keeping "
        "checkpoints) and finish rollbacks that died half-way."
    )
)
def recover_stale_imports_op(
    context: OpExecutionContext,
    config: RecoverConfig,
    database: DatabaseResource,
    import_settings: ImportSettingsResource,
) -> None:
    policy = import_settings.recovery_policy(config.stale_after_s)
    report = recover_dead_runs(database.get_engine(), context.instance, policy)
    keys = [job.partition_key for job in report.resumed]
    context.log.info(f"marked {len(report.dead_runs)} dead run(s) failed; resuming {keys}")
    context.add_output_metadata(
        {
            "dead_runs": len(report.dead_runs),
            "recovered": len(keys),
            "partitions": ", ".join(keys),
            "gave_up": ", ".join(job.partition_key for job in report.gave_up),
            "rollbacks_finished": len(report.rollbacks_finished),
        }
    )


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
    import_settings: ImportSettingsResource,
) -> None:
    engine = database.get_engine()
    job_id = jobs.get_job(engine, config.import_job).id if config.import_job else None
    before = fingerprints(engine)
    requeued = retry_failed(engine, job_id) if config.retry_failed else 0
    try:
        with keep_alive(context, engine, import_settings, kind="embed"):
            report, circuit_state = embedding.setup().embed(
                engine, job_id=job_id, observer=metrics.PrometheusEmbedObserver(), operator=True
            )
    except ProviderConfigError as exc:
        _report_partitions(context, engine, embedding, before, {"requeued": requeued})
        raise Failure(
            description=exc.message,
            metadata={"embeddings_blocked": str(exc.blocker or ""), "requeued": requeued},
            allow_retries=False,
        ) from exc
    summary = {"requeued": requeued} | run_metadata(report, circuit_state)
    touched = _report_partitions(context, engine, embedding, before, summary)
    context.add_output_metadata(
        metadata_values(summary) | {"partitions": MetadataValue.json(touched)}
    )
    if report.stopped_reason:
        raise Failure(
            description=f"embedding stopped early: {report.stopped_reason}; the pending pairs "
            "wait for the pending-embeddings sensor",
            metadata={"stopped_reason": report.stopped_reason, "still_pending": report.pending},
            allow_retries=False,
        )


def _report_partitions(context, engine, embedding: EmbeddingResource, before, run: dict):
    """A materialization of qa_embeddings, with its checks, on every partition the run
    touched: the UI then shows what this run did where it did it."""
    return report_touched(
        context.log_event, engine, before, embedding.check_limits(),
        embedding.setup().blocked(engine), {f"run_{k}": v for k, v in run.items()} |
        {"reported_by": f"{context.job_name} run {context.run_id}"},
        known=lambda key: context.instance.has_dynamic_partition(import_files.name, key),
    )  # fmt: skip


@job(name="embed_pending", description="Embed every pending pair (or one import's) now.")
def embed_pending_job():
    embed_pending_op()


class RollbackConfig(Config):
    import_job: str = Field(description="The import job id or partition key to roll back.")


@op(
    description=(
        "Delete the pairs one import created, in batches, handing pairs that a surviving "
        "import also held to the earliest such import; the job becomes rolled_back, and its "
        "partition shows it: qa_pairs and qa_embeddings materialized with status rolled_back, "
        "row count 0, and failing (WARN) checks."
    )
)
def rollback_import_op(
    context: OpExecutionContext,
    config: RollbackConfig,
    database: DatabaseResource,
    embedding: EmbeddingResource,
    import_settings: ImportSettingsResource,
) -> None:
    engine = database.get_engine()
    try:
        result = jobs.rollback_job(
            engine,
            config.import_job,
            run_id=context.run.run_id,
            stale_after_s=import_settings.stale_after_s,
        )
    except (jobs.JobNotFound, jobs.JobBusy) as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc
    if result.job.status == "rolled_back" and result.job.source_path:
        remove_unneeded(engine, locations=[result.job.source_path])
    summary = {
        "pairs_deleted": result.pairs_deleted,
        "pairs_handed_over": result.pairs_handed_over,
        "status": result.job.status,
    }
    if context.instance.has_dynamic_partition(import_files.name, result.job.partition_key):
        report_rollback(context.log_event, engine, result.job, embedding.check_limits(), summary)
    context.add_output_metadata(summary)


@job(description="Undo an import: remove exactly the pairs it created.")
def rollback_import():
    rollback_import_op()
