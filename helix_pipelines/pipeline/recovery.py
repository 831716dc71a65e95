"""recover_stale(): return `processing` imports whose run died to `pending`."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.engine import Engine

from helix_pipelines.db import jobs


def recover_stale(
    engine: Engine, *, stale_after_s: float, run_is_alive: Callable[[str], bool]
) -> list[jobs.Job]:
    """A job is stale when it is `processing`, its heartbeat is older than `stale_after_s` and
    its run is no longer alive. Stale jobs keep their checkpoint and become `pending`."""
    recovered = []
    for job in jobs.find_stale(engine, stale_after_s):
        if job.dagster_run_id and run_is_alive(job.dagster_run_id):
            continue
        if jobs.return_to_pending(engine, job.id, job.dagster_run_id):
            recovered.append(job)
    return recovered
