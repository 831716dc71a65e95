"""The embedded server is shared by concurrent processes and never outlives its last user."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

from helix_pipelines.db.embedded import EmbeddedPostgres
from helix_pipelines_tests.support.processes import wait_for

USER_SCRIPT = """
import sys
from pathlib import Path
from helix_pipelines.db.embedded import EmbeddedPostgres
from helix_pipelines_tests.support.processes import wait_for
server = EmbeddedPostgres(Path(sys.argv[1]))
server.acquire()
print(server.server_pids()[0], flush=True)
sys.stdin.read()  # hold the server until the test closes our stdin (or kills us)
"""


def _start_user(home) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", USER_SCRIPT, str(home)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def _postmaster_of(user: subprocess.Popen) -> int:
    return int(user.stdout.readline())


def _wait_until(predicate, timeout: float = 30.0) -> bool:
    return bool(wait_for(predicate, timeout, "the server to stop"))


@pytest.fixture
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("emb")
    yield home
    EmbeddedPostgres(home).stop()


def test_concurrent_users_share_one_server_that_stops_after_the_last(home):
    users = [_start_user(home) for _ in range(4)]
    postmasters = {_postmaster_of(u) for u in users}
    assert len(postmasters) == 1
    (postmaster,) = postmasters

    for user in users[:-1]:
        user.stdin.close()
        user.wait(timeout=30)
    assert EmbeddedPostgres(home).is_running(), "stopped while a user was alive"

    users[-1].stdin.close()
    users[-1].wait(timeout=30)
    assert _wait_until(lambda: not psutil.pid_exists(postmaster))


def test_a_killed_owner_leaves_no_orphan(home):
    owner = _start_user(home)
    postmaster = _postmaster_of(owner)
    server = EmbeddedPostgres(home)
    children = server.server_pids()
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(timeout=10)
    assert _wait_until(lambda: not any(psutil.pid_exists(p) for p in [postmaster, *children]))
    guard = server._read_guard_pid()
    assert guard is None or not psutil.pid_exists(guard)


def test_a_new_user_restarts_a_stopped_server(home):
    first = _start_user(home)
    old_postmaster = _postmaster_of(first)
    first.stdin.close()
    first.wait(timeout=30)
    assert _wait_until(lambda: not psutil.pid_exists(old_postmaster))

    second = _start_user(home)
    assert psutil.pid_exists(_postmaster_of(second))
    second.stdin.close()
    second.wait(timeout=30)


def test_stop_then_acquire_in_one_process_starts_it_again(home):
    server = EmbeddedPostgres(home)
    server.acquire()
    first = server.server_pids()[0]
    server.stop()
    assert not server.is_running()
    server.acquire()
    assert server.is_running() and server.server_pids()[0] != first
