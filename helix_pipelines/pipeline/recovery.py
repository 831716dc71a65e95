"""recover(): find the runs that died and put their work back on its way.

A run is dead when its heartbeat says so (core.liveness), whatever the orchestrator's run
storage says. Recovery then tells the orchestrator (so its UI, run queue and sensors agree),
returns a dead run's import to `pending` with its checkpoint, and finishes rollbacks that died
half-way. The orchestrator is reached through `RunRegistry`, so this module knows no Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.engine import Engine

from helix_pipelines.core.liveness import Owner, owner_is_dead, this_process
from helix_pipelines.db import jobs, liveness
from helix_pipelines.pipeline.file_store import remove_unneeded


@dataclass(frozen=True)
class RunInFlight:
    run_id: str
    partitioned: bool  # a run of the assets; unpartitioned runs are operators' jobs
    age_s: float  # since the run started (or was created)


class RunRegistry(Protocol):
    """The orchestrator's view of runs."""

    def runs_in_flight(self) -> list[RunInFlight]: ...

    def mark_dead(self, run_id: str, message: str) -> None: ...


class NoRegistry:
    """For callers outside any orchestrator (tests' driver processes, scripts)."""

    def runs_in_flight(self) -> list[RunInFlight]:
        return []

    def mark_dead(self, run_id: str, message: str) -> None:
        return None


@dataclass
class RecoveryReport:
    dead_runs: list[str] = field(default_factory=list)
    resumed: list[jobs.Job] = field(default_factory=list)
    gave_up: list[jobs.Job] = field(default_factory=list)
    rollbacks_finished: list[jobs.Job] = field(default_factory=list)


@dataclass(frozen=True)
class RecoveryPolicy:
    stale_after_s: float = 300.0
    # A run with no heartbeat at all (it died before its first step began) is dead after this.
    start_grace_s: float = 60.0
    max_deaths: int = 3


def recover(
    engine: Engine, registry: RunRegistry | None = None, policy: RecoveryPolicy | None = None
) -> RecoveryReport:
    registry = registry or NoRegistry()
    policy = policy or RecoveryPolicy()
    report = RecoveryReport()
    owners = liveness.owners(engine)
    judge = _Judge(owners, policy.stale_after_s)
    for run in registry.runs_in_flight():
        if judge.dead(run.run_id) or _never_started(run, owners, policy):
            registry.mark_dead(run.run_id, DEAD_RUN_MESSAGE)
            report.dead_runs.append(run.run_id)
    for job in jobs.find_owned(engine):
        if not _job_owner_dead(job, judge):
            continue
        if job.status == "rolling_back":
            result = jobs.rollback_job(engine, job.id, stale_after_s=policy.stale_after_s)
            if result.job.status == "rolled_back" and result.job.source_path:
                remove_unneeded(engine, locations=[result.job.source_path])
            report.rollbacks_finished.append(result.job)
            continue
        released = jobs.return_to_pending(
            engine, job.id, job.dagster_run_id, max_deaths=policy.max_deaths
        )
        if released is not None:
            (report.resumed if released.status == "pending" else report.gave_up).append(released)
    liveness.forget(engine, [run_id for run_id in owners if judge.dead(run_id)])
    return report


DEAD_RUN_MESSAGE = (
    "helix-pipelines recovery: the process running this run is gone (its heartbeat in "
    "PostgreSQL stopped); its work resumes from the last checkpoint in a new run"
)


class _Judge:
    def __init__(self, owners: dict[str, Owner], stale_after_s: float) -> None:
        self.owners, self.stale_after_s = owners, stale_after_s
        self.host = this_process().host
        self._verdicts: dict[str, bool] = {}

    def known(self, run_id: str | None) -> bool:
        return run_id in self.owners

    def dead(self, run_id: str | None) -> bool:
        owner = self.owners.get(run_id)
        if owner is None:
            return False
        if run_id not in self._verdicts:
            self._verdicts[run_id] = owner_is_dead(
                owner, stale_after_s=self.stale_after_s, this_host=self.host
            )
        return self._verdicts[run_id]


def _never_started(run: RunInFlight, owners: dict[str, Owner], policy: RecoveryPolicy) -> bool:
    return (
        run.partitioned
        and run.run_id not in owners
        and run.age_s > max(policy.stale_after_s, policy.start_grace_s)
    )


def _job_owner_dead(job: jobs.Job, judge: _Judge) -> bool:
    # A run claims its heartbeat in the transaction that takes the job, and releases it when it
    # stops working on it: a job held by a run without one is held by nobody.
    return not judge.known(job.dagster_run_id) or judge.dead(job.dagster_run_id)
