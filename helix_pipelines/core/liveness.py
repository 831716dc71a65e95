"""Is the process that owns a piece of work still alive? Decided from evidence that outlives it.

A running import or embedding keeps a heartbeat (a timestamp, its host, pid and the pid's start
time) in PostgreSQL. On the owner's own host the process table is the better witness: a pid that
is gone, or now belongs to another process, is dead at once. From another host only the
heartbeat's age can tell.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import psutil

# How far a process's start time may differ from the recorded one and still be the same process
# (psutil rounds; clocks of a container may be coarse).
START_TIME_TOLERANCE_S = 1.0
# Heartbeats come at most this far apart (heartbeat_interval).
MAX_BEAT_INTERVAL_S = 15.0
# A heartbeat younger than two beats is never stale, whatever threshold an operator passes:
# `recover --stale-after 0` finds the dead without declaring live runs dead.
FRESH_S = 2 * MAX_BEAT_INTERVAL_S


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    pid_started: float | None
    heartbeat_age_s: float


@dataclass(frozen=True)
class ThisProcess:
    host: str
    pid: int
    started: float | None


def this_process() -> ThisProcess:
    return ThisProcess(
        host=socket.gethostname(), pid=os.getpid(), started=process_started(os.getpid())
    )


def process_started(pid: int) -> float | None:
    """The pid's start time, or None when no process has it. A zombie (killed, its parent has
    not reaped it yet) counts as none: it never runs again, and under a PID 1 that does not reap
    orphans it would stay in the process table for good."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except psutil.Error:
        return None


def process_alive(pid: int, started: float | None) -> bool:
    """The pid runs, and (when its start time was recorded) it is the same process."""
    now_started = process_started(pid)
    if now_started is None:
        return False
    if started is None:
        return True
    return abs(now_started - started) <= START_TIME_TOLERANCE_S


def owner_is_dead(
    owner: Owner,
    *,
    stale_after_s: float,
    this_host: str,
    alive: Callable[[int, float | None], bool] = process_alive,
) -> bool:
    """Dead when the heartbeat is older than `stale_after_s` (never when younger than two
    beats), or at once, on the owner's own host, when its process is gone."""
    if owner.host == this_host and not alive(owner.pid, owner.pid_started):
        return True
    return owner.heartbeat_age_s > max(stale_after_s, FRESH_S)


def run_state(owner: Owner | None, *, stale_after_s: float, this_host: str) -> str:
    """What a run's heartbeat says, as recovery reads it: `gone` (recovery will resume its
    work), `silent` (no beat for two intervals, not yet stale), `alive`, or `none` (no heartbeat
    row: no run holds the work)."""
    if owner is None:
        return "none"
    if owner_is_dead(owner, stale_after_s=stale_after_s, this_host=this_host):
        return "gone"
    if owner.heartbeat_age_s > 2 * heartbeat_interval(stale_after_s):
        return "silent"
    return "alive"


def heartbeat_interval(stale_after_s: float) -> float:
    """Beat several times within the stale threshold, never busier than once a second."""
    return min(MAX_BEAT_INTERVAL_S, max(1.0, stale_after_s / 4))
