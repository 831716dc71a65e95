"""The process-table witness of core.liveness, against real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

from helix_pipelines.core.liveness import (
    Owner,
    owner_is_dead,
    process_alive,
    process_started,
    this_process,
)
from helix_pipelines_tests.support.processes import wait_for


def test_a_killed_process_is_dead_before_its_parent_reaps_it():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        started = process_started(child.pid)
        assert process_alive(child.pid, started)
        owner = Owner(this_process().host, child.pid, started, heartbeat_age_s=0.0)
        assert not owner_is_dead(owner, stale_after_s=300, this_host=this_process().host)
        os.kill(child.pid, signal.SIGKILL)
        # Not reaped (no wait yet): a zombie of this process, still in the process table.
        wait_for(lambda: _zombie(child.pid), timeout=30, what="the child to be a zombie")
        assert not process_alive(child.pid, started)
        assert owner_is_dead(owner, stale_after_s=300, this_host=this_process().host)
    finally:
        child.kill()
        child.wait()


def test_a_live_process_with_another_start_time_is_another_process():
    me = this_process()
    assert process_alive(me.pid, me.started)
    assert not process_alive(me.pid, me.started - 60)


def _zombie(pid: int) -> bool:
    return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
