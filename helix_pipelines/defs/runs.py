"""Questions about Dagster runs that sensors and the CLI ask, and recovery's view of them."""

import time

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from helix_pipelines.db.liveness import Heartbeat
from helix_pipelines.pipeline.recovery import RecoveryPolicy, RecoveryReport, RunInFlight, recover

IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
# Runs that hold a process: queued runs hold none, so they are never dead.
RUNNING = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
# Set on a run that recovery marked failed: the run-failure sensor leaves its job to recovery.
DEAD_RUN_TAG = "helix/dead_run"
# Metadata key on a step's Failure: the failure is terminal (retrying cannot help), so the
# run-failure sensor fails the import at once instead of re-requesting it.
TERMINAL = "helix/terminal"


def keep_alive(
    context, engine, import_settings, *, kind: str, partition_key: str | None = None
) -> Heartbeat:
    """This run's heartbeat while the step works, the evidence recovery reads; a run over a
    range of partitions beats for the one it is working on."""
    if partition_key is None and context.has_partition_key:
        partition_key = context.partition_key
    return Heartbeat(
        engine,
        context.run.run_id,
        kind=kind,
        partition_key=partition_key,
        stale_after_s=import_settings.stale_after_s,
    )


def partition_has_run_in_flight(instance: DagsterInstance, partition_key: str) -> bool:
    runs = instance.get_run_records(
        RunsFilter(tags={"dagster/partition": partition_key}, statuses=IN_FLIGHT), limit=1
    )
    return bool(runs)


class DagsterRuns:
    """pipeline.recovery.RunRegistry over a Dagster instance."""

    def __init__(self, instance: DagsterInstance) -> None:
        self.instance = instance

    def runs_in_flight(self) -> list[RunInFlight]:
        now = time.time()
        return [
            RunInFlight(
                run_id=record.dagster_run.run_id,
                partitioned="dagster/partition" in record.dagster_run.tags,
                age_s=now - (record.start_time or record.create_timestamp.timestamp()),
            )
            for record in self.instance.get_run_records(RunsFilter(statuses=RUNNING))
        ]

    def mark_dead(self, run_id: str, message: str) -> None:
        run = self.instance.get_run_by_id(run_id)
        if run is None or run.status not in RUNNING:
            return
        self.instance.add_run_tags(run_id, {DEAD_RUN_TAG: "true"})
        self.instance.report_run_failed(run, message)


def recover_dead_runs(engine, instance: DagsterInstance, policy: RecoveryPolicy) -> RecoveryReport:
    """pipeline.recovery.recover, with this instance's runs: used by the sensor, the Launchpad
    job, the CLI and dev's start alike."""
    return recover(engine, DagsterRuns(instance), policy)
