"""Questions about Dagster runs that sensors and the CLI ask, and recovery's view of them."""

import logging
import time

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from helix_pipelines.db.liveness import Heartbeat
from helix_pipelines.pipeline.recovery import RecoveryPolicy, RecoveryReport, RunInFlight, recover

log = logging.getLogger(__name__)

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
    """pipeline.recovery.RunRegistry over a Dagster instance.

    `steps_elsewhere`: steps run outside the run worker (Celery). A dead step's process is then
    not the run's: its run worker still waits for the lost task, so it is asked to stop (the
    launcher's terminate, through the code server) before the run is marked failed."""

    def __init__(self, instance: DagsterInstance, *, steps_elsewhere: bool = False) -> None:
        self.instance = instance
        self.steps_elsewhere = steps_elsewhere

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
        if self.steps_elsewhere:
            self._stop_run_worker(run_id)
        self.instance.report_run_failed(run, message)

    def _stop_run_worker(self, run_id: str) -> None:
        try:
            self.instance.run_launcher.terminate(run_id)
        except Exception as exc:  # noqa: BLE001 - best effort: the run is marked failed anyway
            log.warning("could not stop the run worker of dead run %s: %s", run_id, exc)


def recover_dead_runs(
    engine, instance: DagsterInstance, policy: RecoveryPolicy, *, steps_elsewhere: bool = False
) -> RecoveryReport:
    """pipeline.recovery.recover, with this instance's runs: used by the sensor, the Launchpad
    job, the CLI and dev's start alike."""
    return recover(engine, DagsterRuns(instance, steps_elsewhere=steps_elsewhere), policy)
