"""The Batch API in Dagster: submit, collect and cancel jobs, and the sensor that polls live
batches at a bounded rate and requests a collection when one has finished. Thin: the work is
in pipeline.batch_embedding."""

import warnings

from dagster import (
    Config,
    DagsterRunStatus,
    DefaultSensorStatus,
    Failure,
    MetadataValue,
    OpExecutionContext,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    job,
    op,
    sensor,
)
from pydantic import Field

from helix_pipelines.core.embed_mode import BatchModeUnavailable
from helix_pipelines.db import jobs
from helix_pipelines.defs.partitions import import_files
from helix_pipelines.defs.reporting import fingerprints, metadata_values, report_touched
from helix_pipelines.defs.resources import DatabaseResource, EmbeddingResource
from helix_pipelines.pipeline import batch_collection as collection
from helix_pipelines.pipeline import batch_embedding as flow

# Dagster rebuilds a sensor that targets an op job when it binds the job's resources, passing
# `owners` (None) on, and warns that the parameter is beta: known, and noise in CLI output.
warnings.filterwarnings("ignore", message="Parameter `owners` of initializer `SensorDefinition")

IN_FLIGHT = [
    DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]  # fmt: skip


def _client(embedding: EmbeddingResource):
    try:
        return embedding.setup().batch_client()
    except BatchModeUnavailable as exc:
        raise Failure(description=str(exc), allow_retries=False) from exc


class SubmitBatchesConfig(Config):
    import_job: str | None = Field(
        default=None, description="An import job id or partition key; empty: every import."
    )


@op(
    description="Send pending pairs to the OpenAI Batch API (half price, results within 24 h); "
    "the embedding-batches sensor collects them."
)
def submit_embedding_batches_op(
    context: OpExecutionContext,
    config: SubmitBatchesConfig,
    database: DatabaseResource,
    embedding: EmbeddingResource,
) -> None:
    engine = database.get_engine()
    job_id = jobs.get_job(engine, config.import_job).id if config.import_job else None
    client = _client(embedding)
    try:
        report = flow.submit_batches(
            engine, client, embedding.setup().batch_options(), job_id=job_id
        )
    finally:
        client.close()
    context.add_output_metadata(submit_metadata(report))


def submit_metadata(report: flow.SubmitReport) -> dict:
    return metadata_values(
        {
            "embed_mode": "batch",
            "batches_submitted": len(report.batches),
            "batches_resumed": len(report.resumed),
            "pairs_batched": report.pairs,
            "rejected_inputs": report.rejected,
            "token_estimate": report.token_estimate,
            "estimated_cost_usd": round(report.estimated_cost_usd, 6),
            "usd_per_million_tokens": report.usd_per_million_tokens,
        }
    )


@job(description="Send pending pairs (of one import, or all) to the OpenAI Batch API now.")
def submit_embedding_batches():
    submit_embedding_batches_op()


@op(
    description="Finish submissions a dead process left, poll live batches, and collect the "
    "finished ones: vectors validated and written, unfinished pairs back to pending."
)
def collect_embedding_batches_op(
    context: OpExecutionContext, database: DatabaseResource, embedding: EmbeddingResource
) -> None:
    engine = database.get_engine()
    setup = embedding.setup()
    before = fingerprints(engine)
    client = _client(embedding)
    try:
        cycle = collection.run_cycle(engine, client, setup.batch_options())
    finally:
        client.close()
    collected = [c for c in cycle.collected if not c.skipped]
    summary = {
        "batches_collected": len(collected),
        "batches_resumed": len(cycle.resumed),
        "embedded": sum(c.embedded for c in collected),
        "failed_now": sum(c.failed for c in collected),
        "returned_to_pending": sum(c.returned + c.retried for c in collected),
        "tokens": sum(c.tokens for c in collected),
        "estimated_cost_usd": round(sum(c.cost_usd for c in collected), 6),  # batch prices
    }
    touched = report_touched(
        context.log_event, engine, before, embedding.check_limits(), setup.blocked(engine),
        {f"run_{k}": v for k, v in summary.items()}
        | {"reported_by": f"{context.job_name} run {context.run_id}"},
        known=lambda key: context.instance.has_dynamic_partition(import_files.name, key),
    )  # fmt: skip
    context.add_output_metadata(
        metadata_values(summary) | {"partitions": MetadataValue.json(touched)}
    )


@job(description="Collect finished Batch API batches now (the sensor requests this job).")
def collect_embedding_batches():
    collect_embedding_batches_op()


class CancelBatchesConfig(Config):
    batch_id: str | None = Field(
        default=None, description="A batch's id or remote id (a prefix will do); empty: all."
    )


@op(
    description="Cancel live batches; once cancelled the sensor collects them: finished work is "
    "kept, the rest goes back to pending."
)
def cancel_embedding_batches_op(
    context: OpExecutionContext,
    config: CancelBatchesConfig,
    database: DatabaseResource,
    embedding: EmbeddingResource,
) -> None:
    from helix_pipelines.db import embedding_batches as batches

    engine = database.get_engine()
    target = None
    if config.batch_id:
        found = [b for b in batches.find(engine, config.batch_id) if b.state != "collected"]
        if len(found) != 1:
            raise Failure(
                description=f"{len(found)} live batches match {config.batch_id!r}",
                allow_retries=False,
            )
        target = found[0].id
    client = _client(embedding)
    try:
        cancelled = flow.cancel_batches(engine, client, target)
    finally:
        client.close()
    context.add_output_metadata({"cancelled": MetadataValue.json([str(b) for b in cancelled])})


@job(description="Cancel one live Batch API batch, or all of them.")
def cancel_embedding_batches():
    cancel_embedding_batches_op()


@sensor(
    job=collect_embedding_batches,
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.RUNNING,
    description="Polls live Batch API batches (each at most every HELIX_EMBED_BATCH_POLL_S) and "
    "requests a collection run when one has finished or a submission was abandoned.",
)
def embedding_batches_sensor(
    context: SensorEvaluationContext, database: DatabaseResource, embedding: EmbeddingResource
):
    setup = embedding.setup()
    if setup.provider != "openai" or not setup.api_key:
        return SkipReason("no Batch API: the provider is not openai")
    engine = database.get_engine()
    client = setup.batch_client()
    try:
        finished = collection.poll_batches(engine, client, min_interval_s=setup.batch_poll_s)
    finally:
        client.close()
    abandoned = flow.abandoned(engine)
    if not finished and not abandoned:
        return SkipReason("no batch has finished")
    runs = context.instance.get_runs(
        RunsFilter(job_name=collect_embedding_batches.name, statuses=IN_FLIGHT), limit=1
    )
    if runs:
        return SkipReason(f"a collection run is in flight: {runs[0].run_id}")
    return RunRequest(
        tags={"helix/batches": ",".join(str(b) for b in sorted(finished + abandoned))[:4000]}
    )
