"""Starting and stopping real processes in tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Callable

import psutil


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.25):
    """Poll an external condition (a process, a server) until it holds; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def graphql(port: int, query: str, variables: dict | None = None, timeout: float = 10) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def try_graphql(port: int, query: str, variables: dict | None = None) -> dict | None:
    try:
        return graphql(port, query, variables)
    except OSError:
        return None


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def processes_using(path_fragment: str) -> list[psutil.Process]:
    """Live processes whose command line or HELIX_HOME mentions `path_fragment` (e.g. a test's
    HELIX_HOME); zombies awaiting their parent do not count."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ", "status"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            environ = proc.info["environ"] or {}
            zombie = proc.info["status"] == psutil.STATUS_ZOMBIE
        except psutil.Error:
            continue
        if not zombie and (
            path_fragment in cmdline or path_fragment in environ.get("HELIX_HOME", "")
        ):
            found.append(proc)
    return found


def kill_all(pids: list[int]) -> list[int]:
    """kill -9 of each pid. A server's child listed a moment ago may have exited since (the
    backend of a connection just closed): it is gone already, which is what the kill wanted."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids
