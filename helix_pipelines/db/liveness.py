"""Heartbeats in PostgreSQL: the evidence recovery reads to tell live runs from dead ones.

A run doing work holds a `run_heartbeat` row (host, pid, the pid's start time) and a thread of
its process refreshes it, together with its import job's `heartbeat_at`, every few seconds. The
thread keeps beating through a long batch or a long wait on the API; it dies with the process.
"""

from __future__ import annotations

import logging
import threading
import uuid
from types import TracebackType

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection, Engine

from helix_pipelines.core.liveness import Owner, heartbeat_interval, this_process
from helix_pipelines.db.schema import import_job, run_heartbeat

log = logging.getLogger(__name__)


def claim(conn: Connection, run_id: str, kind: str, partition_key: str | None) -> None:
    """Record this process as the one doing `run_id`'s work (inside the caller's transaction)."""
    me = this_process()
    values = {
        "kind": kind,
        "partition_key": partition_key,
        "host": me.host,
        "pid": me.pid,
        "pid_started": me.started,
        "heartbeat_at": sa.func.now(),
    }
    conn.execute(
        insert(run_heartbeat)
        .values(run_id=run_id, started_at=sa.func.now(), **values)
        .on_conflict_do_update(index_elements=[run_heartbeat.c.run_id], set_=values)
    )


def release(engine: Engine, run_id: str) -> None:
    """The work is over (or handed on): forget this process's heartbeat for the run."""
    me = this_process()
    with engine.begin() as conn:
        conn.execute(
            sa.delete(run_heartbeat).where(
                run_heartbeat.c.run_id == run_id,
                run_heartbeat.c.host == me.host,
                run_heartbeat.c.pid == me.pid,
            )
        )


def owners(engine: Engine) -> dict[str, Owner]:
    """Every heartbeat, its age measured by the database's clock (hosts' clocks may differ)."""
    age = sa.func.extract("epoch", sa.func.now() - run_heartbeat.c.heartbeat_at)
    query = sa.select(
        run_heartbeat.c.run_id,
        run_heartbeat.c.host,
        run_heartbeat.c.pid,
        run_heartbeat.c.pid_started,
        age.label("age"),
    )
    with engine.connect() as conn:
        return {
            row.run_id: Owner(row.host, row.pid, row.pid_started, float(row.age))
            for row in conn.execute(query)
        }


def forget(engine: Engine, run_ids: list[str]) -> None:
    if not run_ids:
        return
    with engine.begin() as conn:
        conn.execute(sa.delete(run_heartbeat).where(run_heartbeat.c.run_id.in_(run_ids)))


def beat(engine: Engine, run_id: str, job_id: uuid.UUID | None = None) -> None:
    """The run's heartbeat, committed on its own: it is the evidence recovery reads. The job's
    `heartbeat_at` follows unless the job's row is locked, which only the run's own batch or
    completing transaction does (and that sets it too): a version swap of minutes must not hold
    the run's heartbeat back until it looks dead."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(run_heartbeat)
            .where(run_heartbeat.c.run_id == run_id)
            .values(heartbeat_at=sa.func.now())
        )
    if job_id is None:
        return
    with engine.begin() as conn:
        unlocked = (
            sa.select(import_job.c.id)
            .where(import_job.c.id == job_id, import_job.c.dagster_run_id == run_id)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        conn.execute(
            sa.update(import_job)
            .where(import_job.c.id == unlocked)
            .values(heartbeat_at=sa.func.now())
        )


class Heartbeat:
    """`with Heartbeat(engine, run_id, ...)`: claim the run's heartbeat and keep it fresh from a
    background thread until the block ends, then release it. (A step that failed and waits for
    its retry holds no heartbeat: recovery gives such a run `start_grace_s`.)"""

    def __init__(
        self,
        engine: Engine,
        run_id: str,
        *,
        kind: str,
        partition_key: str | None = None,
        job_id: uuid.UUID | None = None,
        stale_after_s: float = 300.0,
        claimed: bool = False,
    ) -> None:
        self.engine, self.run_id, self.kind = engine, run_id, kind
        self.partition_key, self.job_id = partition_key, job_id
        self.interval_s = heartbeat_interval(stale_after_s)
        self._claimed = claimed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{run_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        if not self._claimed:
            with self.engine.begin() as conn:
                claim(conn, self.run_id, self.kind, self.partition_key)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)
        try:
            release(self.engine, self.run_id)
        except Exception as error:  # noqa: BLE001 - the database may be what failed
            log.warning("could not release the heartbeat of run %s: %s", self.run_id, error)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                beat(self.engine, self.run_id, self.job_id)
            except Exception as error:  # noqa: BLE001 - keep beating once the database is back
                log.warning("heartbeat of run %s failed: %s", self.run_id, error)
