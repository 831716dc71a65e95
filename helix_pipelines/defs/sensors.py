"""Sensors: the inbox, recovery of stale and pending imports, and failed import runs."""

import json
import time
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
from helix_pipelines.defs.interrupts import flagged, is_interrupt
from helix_pipelines.defs.jobs import embed_job, import_job
from helix_pipelines.defs.partitions import import_files
from helix_pipelines.defs.reporting import report_rollback
from helix_pipelines.defs.resources import (
    DatabaseResource,
    EmbeddingResource,
    ImportSettingsResource,
)
from helix_pipelines.defs.runs import (
    DEAD_RUN_TAG,
    TERMINAL,
    partition_has_run_in_flight,
    recover_dead_runs,
)
from helix_pipelines.pipeline.embedding import release_parked
from helix_pipelines.pipeline.embedding_setup import EmbeddingSetup
from helix_pipelines.pipeline.file_store import remove_unneeded
from helix_pipelines.pipeline.health import CheckLimits
from helix_pipelines.pipeline.inbox import CannotTake, Entry, display_name, look, reject
from helix_pipelines.pipeline.intake import intake_file

# A pending job younger than this is about to be started by whoever registered it.
PENDING_GRACE_S = 15.0
# Half-open: after requesting the probe run, no other run for this long (its queue and start).
PROBE_SPACING_S = 120.0


@sensor(
    job=import_job,
    minimum_interval_seconds=5,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Watches HELIX_INBOX_DIR. A file whose size and modification time held still between "
        "two ticks is kept in the upload store (HELIX_FILE_STORE: $HELIX_HOME/files, "
        "PostgreSQL or an fsspec URL), registered as an import job and a "
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
                store=import_settings.file_store_for(engine),
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
        "Recovery: runs whose process is gone (its heartbeat in PostgreSQL says so, whatever the "
        "run's status) are marked failed; their `processing` imports go back to `pending` "
        "(keeping their checkpoint), rollbacks that died half-way are finished, and every "
        "`pending` import without a run in flight gets one."
    ),
)
def stale_imports_sensor(
    context: SensorEvaluationContext,
    database: DatabaseResource,
    import_settings: ImportSettingsResource,
) -> SensorResult:
    engine = database.get_engine()
    report = recover_dead_runs(
        engine, context.instance, import_settings.recovery_policy(),
        steps_elsewhere=import_settings.steps_elsewhere,
    )  # fmt: skip
    for run_id in report.dead_runs:
        context.log.warning(f"run {run_id} is dead (its process is gone): marked failed")
    for job in report.resumed:
        context.log.info(f"import {job.partition_key}: its run died; resuming from its checkpoint")
    for job in report.gave_up:
        context.log.error(f"import {job.partition_key}: {job.last_error}")
    for job in report.rollbacks_finished:
        context.log.info(f"rollback of import {job.partition_key} finished after its run died")
        if context.instance.has_dynamic_partition(import_files.name, job.partition_key):
            report_rollback(
                context.instance.report_runless_asset_event, engine, job,
                # A rolled-back partition's checks fail whatever the thresholds: the width is
                # all they need.
                CheckLimits(dim=database.embedding_dim), {"finished_by": "recovery"},
            )  # fmt: skip
    # Jobs recovered just now are nobody's: no grace for them.
    candidates = {j.id: j for j in jobs.list_pending(engine, quiet_for_s=PENDING_GRACE_S)}
    candidates.update({j.id: j for j in report.resumed})
    waiting = [
        job
        for job in candidates.values()
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


# Every job of the code location: UI launches and backfills run under Dagster's implicit asset
# job, not only import_job and embed_job.
@run_failure_sensor(
    minimum_interval_seconds=10,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "When a run of one partition fails (an import, an embedding, a UI launch or a "
        "backfill), writes the error onto its import job. An import "
        "that failed for a transient reason goes back to `pending` (the recovery sensor "
        "re-requests it) until its attempts run out; a terminal failure (unreadable input, a "
        "bug, bad configuration) fails the job at once. Runs that recovery found dead, and "
        "runs that were interrupted (Ctrl-C, SIGTERM, Terminate), are left to recovery."
    ),
)
def import_run_failure_sensor(
    context: RunFailureSensorContext,
    database: DatabaseResource,
    import_settings: ImportSettingsResource,
) -> None:
    run = context.dagster_run
    partition_key = run.tags.get("dagster/partition")
    if not partition_key or run.tags.get(DEAD_RUN_TAG):
        return
    if any(is_interrupt(e.step_failure_data) for e in context.get_step_failure_events()):
        # Stopped, not failed: its job is held by nobody now, and recovery resumes it (no
        # attempt spent); pending embeddings go to the pending-embeddings sensor.
        context.log.info(f"run of {partition_key} was interrupted: left to recovery")
        return
    message, failed_step, terminal = _failure(context)
    engine = database.get_engine()
    try:
        if failed_step == "qa_embeddings" or (
            failed_step is None and run.job_name == embed_job.name
        ):
            jobs.note_embedding_failure(engine, partition_key, run.run_id, message)
            context.log.info(f"embedding run of {partition_key} failed: {message}")
            return
        job = jobs.record_run_failure(
            engine,
            partition_key,
            message,
            max_attempts=import_settings.max_attempts,
            run_id=run.run_id,
            terminal=terminal,
        )
    except jobs.JobNotFound:
        return
    context.log.info(f"import {partition_key}: attempt {job.attempts} failed, now {job.status}")


def _failure(context: RunFailureSensorContext) -> tuple[str, str | None, bool]:
    """(message, the failed step, whether the step declared the failure terminal)."""
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        error = data.error if data else None
        if error is not None:
            terminal = flagged(data.user_failure_data, TERMINAL)
            message = f"{event.step_key}: {_root_cause(error).message.strip()}"[:2000]
            return message, event.step_key, terminal
    return (context.failure_event.message or "the run failed")[:2000], None, False


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
        "Requests an embedding run for every import with pending pairs (or pairs embedded by "
        "another model than HELIX_EMBEDDING_MODEL) and no run in flight, whatever the import's "
        "status. Returns parked pairs (attempts used up on transient errors) to pending once the "
        "API looks healthy again. While the circuit breaker is open it backs off; when it is "
        "blocked (quota, key, model, `dimensions`) it says why and waits for the configuration "
        "to change; when half-open it requests a single run, the probe."
    ),
)
def pending_embeddings_sensor(
    context: SensorEvaluationContext,
    database: DatabaseResource,
    embedding: EmbeddingResource,
):
    return embedding_run_requests(context, database.get_engine(), embedding.setup())


def embedding_run_requests(
    context: SensorEvaluationContext, engine, setup: EmbeddingSetup, clock=time.time
) -> SensorResult | SkipReason:
    """The pending-embeddings sensor's decision, on an injectable clock."""
    breaker = setup.build_breaker(engine, clock)
    released = release_parked(engine, breaker)
    if released:
        context.log.info(f"{released} parked pair(s) returned to pending")
    circuit = breaker.snapshot()
    if circuit["state"] == "open":
        return SkipReason(_open_circuit_reason(circuit))
    keys = partitions_to_embed(engine, setup.provider_model())
    idle = [key for key in keys if not partition_has_run_in_flight(context.instance, key)]
    if not idle:
        return SkipReason("no pending embeddings" if not keys else "every run is in flight")
    if circuit["state"] == "half_open":
        return _probe_request(context, idle, now=clock())
    return SensorResult(run_requests=[RunRequest(partition_key=key) for key in idle])


def _open_circuit_reason(circuit: dict) -> str:
    wait = f"next probe in {circuit['retry_in_s']:.0f}s"
    blocked = circuit["blocked"]
    if blocked is None:
        return f"circuit open: {wait}"
    return (
        f"embeddings blocked ({blocked['reason']}): {blocked['message']} -- {wait}, or at once "
        "when the embedding configuration or the API key changes"
    )


def _probe_request(context, idle: list[str], *, now: float):
    """Half-open: one run, the probe, and none while it may still be on its way (spaced by
    time, not by run status: a dead run still marked in flight must not hold probes back)."""
    cursor = json.loads(context.cursor) if context.cursor else {}
    last = cursor.get("probe_requested_at")
    if last is not None and 0 <= now - last < PROBE_SPACING_S:
        return SkipReason("circuit half-open: waiting for the probe run")
    return SensorResult(
        run_requests=[RunRequest(partition_key=idle[0])],
        cursor=json.dumps({"probe_requested_at": now}),
    )


@sensor(
    minimum_interval_seconds=600,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Upload store housekeeping: removes stored copies no import needs any more (those of "
        "rolled-back imports, and with HELIX_FILE_RETENTION_DAYS set those of imports finished "
        "longer ago). Unset retention keeps finished imports' files."
    ),
)
def stored_files_sensor(
    context: SensorEvaluationContext,
    database: DatabaseResource,
    import_settings: ImportSettingsResource,
) -> SkipReason:
    removed = remove_unneeded(database.get_engine(), import_settings.file_retention_days)
    for location in removed:
        context.log.info(f"removed the stored copy {location}: no import needs it")
    return SkipReason(f"removed {len(removed)} stored copies")
