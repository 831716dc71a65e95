"""Sensors: the inbox, recovery of stale and pending imports, and failed import runs."""

import json
from pathlib import Path

from dagster import (
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from helix_pipelines.core.redact import redact
from helix_pipelines.db import jobs
from helix_pipelines.db.embeddings import partitions_to_embed
from helix_pipelines.defs.jobs import embed_job, import_job
from helix_pipelines.defs.partitions import import_files
from helix_pipelines.defs.resources import (
    DatabaseResource,
    EmbeddingResource,
    ImportSettingsResource,
)
from helix_pipelines.defs.runs import partition_has_run_in_flight, recover_dead_runs
from helix_pipelines.pipeline.inbox import CannotTake, Entry, display_name, look, reject
from helix_pipelines.pipeline.intake import intake_file

# A pending job younger than this is about to be started by whoever registered it.
PENDING_GRACE_S = 15.0


@sensor(
    job=import_job,
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Watches HELIX_INBOX_DIR. A file whose size and modification time held still between "
        "two ticks is moved under $HELIX_HOME/files, registered as an import job and a "
        "partition of import_files, and its import requested. Files that cannot be taken move "
        "to inbox/rejected/ with a note of why."
    ),
)
def inbox_sensor(
    context: SensorEvaluationContext,
    database: DatabaseResource,
    import_settings: ImportSettingsResource,
) -> SensorResult:
    inbox = Path(import_settings.inbox_dir)
    inbox.mkdir(parents=True, exist_ok=True)
    previous = json.loads(context.cursor) if context.cursor else {}
    seen = look(inbox, previous, limit=import_settings.inbox_files_per_tick)
    for entry, reason in seen.refused:
        _reject(context, inbox, entry, reason)
    engine = database.get_engine()
    jobs_taken = []
    for entry in seen.ready:
        try:
            job, created = intake_file(
                engine,
                entry.path,
                files_dir=Path(import_settings.files_dir),
                max_file_bytes=import_settings.max_file_bytes,
                move=True,
            )
        except (CannotTake, OSError) as exc:
            _reject(context, inbox, entry, redact(exc))
            continue
        if created or not partition_has_run_in_flight(context.instance, job.partition_key):
            jobs_taken.append(job)
    return _import_requests(context, jobs_taken, cursor=json.dumps(seen.observed))


def _reject(context: SensorEvaluationContext, inbox: Path, entry: Entry, reason: str) -> None:
    """Move one entry to inbox/rejected/; if even that fails, name it in the log and go on:
    one entry never stops the others."""
    try:
        where = reject(entry.path, inbox, f"{entry.name}: {reason}")
    except OSError as exc:
        context.log.warning(f"cannot take {entry.name!r}: {reason}; left in place ({exc.strerror})")
        return
    context.log.warning(f"rejected {entry.name!r}: {reason} (moved to {display_name(str(where))})")


@sensor(
    job=import_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Recovery: `processing` imports whose heartbeat is stale and whose run is gone go back "
        "to `pending` (keeping their checkpoint), and every `pending` import without a run in "
        "flight gets one."
    ),
)
def stale_imports_sensor(
    context: SensorEvaluationContext,
    database: DatabaseResource,
    import_settings: ImportSettingsResource,
) -> SensorResult:
    engine = database.get_engine()
    recovered = recover_dead_runs(engine, context.instance, import_settings.stale_after_s)
    for job in recovered:
        context.log.info(f"import {job.partition_key} was stale: resuming from its checkpoint")
    waiting = [
        job
        for job in jobs.list_pending(engine, quiet_for_s=PENDING_GRACE_S)
        if not partition_has_run_in_flight(context.instance, job.partition_key)
    ]
    return _import_requests(context, waiting)


def _import_requests(context, job_list, cursor: str | None = None) -> SensorResult:
    missing = [
        j.partition_key
        for j in job_list
        if not context.instance.has_dynamic_partition(import_files.name, j.partition_key)
    ]
    return SensorResult(
        run_requests=[
            RunRequest(partition_key=j.partition_key, tags={"helix/import_job_id": str(j.id)})
            for j in job_list
        ],
        dynamic_partitions_requests=[import_files.build_add_request(missing)] if missing else [],
        cursor=cursor,
    )


@run_failure_sensor(
    monitored_jobs=[import_job],
    minimum_interval_seconds=10,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "When an import run fails, writes the error and the attempt onto its import job; the job "
        "goes back to `pending` (the recovery sensor re-requests it) until its attempts run out, "
        "then becomes `failed`."
    ),
)
def import_run_failure_sensor(
    context: RunFailureSensorContext,
    database: DatabaseResource,
    import_settings: ImportSettingsResource,
) -> None:
    run = context.dagster_run
    partition_key = run.tags.get("dagster/partition")
    if not partition_key:
        return
    message = _failure_message(context)
    try:
        job = jobs.record_run_failure(
            database.get_engine(),
            partition_key,
            message,
            max_attempts=import_settings.max_attempts,
            run_id=run.run_id,
        )
    except jobs.JobNotFound:
        return
    context.log.info(f"import {partition_key}: attempt {job.attempts} failed, now {job.status}")


def _failure_message(context: RunFailureSensorContext) -> str:
    for event in context.get_step_failure_events():
        error = event.step_failure_data.error if event.step_failure_data else None
        if error is not None:
            return f"{event.step_key}: {_root_cause(error).message.strip()}"[:2000]
    return (context.failure_event.message or "the run failed")[:2000]


def _root_cause(error):
    """The error a step raised, not Dagster's "Error occurred while executing op" wrapper."""
    while error.cause is not None:
        error = error.cause
    return error


@sensor(
    job=embed_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Requests an embedding run for every finished import with pending pairs (or pairs "
        "embedded by another model than HELIX_EMBEDDING_MODEL) and no run in flight. While the "
        "embeddings API's circuit breaker is open it backs off."
    ),
)
def pending_embeddings_sensor(
    context: SensorEvaluationContext,
    database: DatabaseResource,
    embedding: EmbeddingResource,
):
    engine = database.get_engine()
    setup = embedding.setup()
    circuit = setup.build_breaker(engine).snapshot()
    if circuit["state"] == "open":
        return SkipReason(f"circuit open: next probe in {circuit['retry_in_s']:.0f}s")
    keys = [
        key
        for key in partitions_to_embed(engine, setup.provider_model())
        if not partition_has_run_in_flight(context.instance, key)
    ]
    if not keys:
        return SkipReason("no pending embeddings")
    return SensorResult(run_requests=[RunRequest(partition_key=key) for key in keys])
