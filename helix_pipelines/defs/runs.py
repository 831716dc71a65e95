"""Questions about Dagster runs that sensors and the CLI ask."""

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def run_is_alive(instance: DagsterInstance, run_id: str) -> bool:
    """False for a run this instance does not know: its heartbeat decides then."""
    run = instance.get_run_by_id(run_id)
    return run is not None and run.status in IN_FLIGHT


def partition_has_run_in_flight(instance: DagsterInstance, partition_key: str) -> bool:
    runs = instance.get_run_records(
        RunsFilter(tags={"dagster/partition": partition_key}, statuses=IN_FLIGHT), limit=1
    )
    return bool(runs)


def recover_dead_runs(engine, instance: DagsterInstance, stale_after_s: float) -> list:
    """pipeline.recovery.recover_stale, with this instance deciding which runs are alive."""
    from helix_pipelines.pipeline.recovery import recover_stale

    return recover_stale(
        engine,
        stale_after_s=stale_after_s,
        run_is_alive=lambda run_id: run_is_alive(instance, run_id),
    )
