"""`helix-pipelines dev`: database, migrations, recovery, then `dagster dev` with its daemon.

Ctrl-C or SIGTERM stops every process this started, the embedded database included when this
process started it and nobody else uses it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil

from helix_pipelines.db.embedded import EmbeddedPostgres
from helix_pipelines.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
STOP_GRACE_S = 30
PR_SET_PDEATHSIG = 1  # prctl(2)
SAMPLE_FILE = REPO_ROOT / "examples" / "sample_faq.csv"


def dagster_environment(settings: Settings) -> dict[str, str]:
    """The environment of the Dagster processes: absolute HELIX_HOME and a DAGSTER_HOME with
    the project's dagster.yaml in it."""
    env = dict(os.environ)
    env["HELIX_HOME"] = str(settings.home)
    dagster_home = Path(env.get("DAGSTER_HOME") or settings.dagster_home).absolute()
    dagster_home.mkdir(parents=True, exist_ok=True)
    if not (dagster_home / "dagster.yaml").exists():
        shutil.copyfile(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    env["DAGSTER_HOME"] = str(dagster_home)
    env["PROMETHEUS_MULTIPROC_DIR"] = os.environ.get(
        "PROMETHEUS_MULTIPROC_DIR", str(settings.home / "metrics")
    )
    return env


def drop_sample(settings: Settings) -> Path | None:
    """Put the example file in the inbox once per HELIX_HOME, so a newcomer sees an import
    happen (and later runs do not import it again as a job of duplicates)."""
    marker = settings.home / ".sample-dropped"
    if marker.exists():
        return None
    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    target = settings.inbox_dir / SAMPLE_FILE.name
    shutil.copyfile(SAMPLE_FILE, target.with_suffix(".part"))
    os.replace(target.with_suffix(".part"), target)  # the inbox's write-then-rename convention
    marker.touch()
    return target


def run_dagster_dev(
    settings: Settings,
    host: str,
    port: int,
    embedded: EmbeddedPostgres | None,
    *,
    metrics_port: int | None = None,
):
    env = dagster_environment(settings)
    command = [
        sys.executable, "-m", "dagster", "dev",
        "-m", "helix_pipelines.definitions",
        "-h", host, "-p", str(port),
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        env=env,
        cwd=str(REPO_ROOT),
        start_new_session=True,  # one process group to stop, whatever it spawns
        # A script started in the background inherits an ignored SIGINT, and dagster dev then
        # ignores SIGTERM too: give it the default handlers back.
        preexec_fn=_default_signal_handlers,
    )
    children = [process]
    if metrics_port is not None:
        children.append(_start_metrics_server(env, metrics_port))
    stopping = {"requested": False}

    def _stop(signum, _frame):
        stopping["requested"] = True
        _terminate_groups(children)

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = process.wait()
    finally:
        _terminate_groups(children)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if embedded is not None:
            embedded.release(stop_when_unused=True)
    return 0 if stopping["requested"] else code


def _start_metrics_server(env: dict[str, str], port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "helix_pipelines.cli", "metrics", "--port", str(port)],
        env=env,
        start_new_session=True,
        preexec_fn=_default_signal_handlers,
    )


def _default_signal_handlers() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _terminate_with_parent()


def _terminate_with_parent() -> None:
    """Linux: SIGTERM this child when `helix-pipelines dev` dies, even of a SIGKILL, so a killed
    dev never leaves a daemon and a webserver running on their own."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _terminate_groups(processes: list[subprocess.Popen]) -> None:
    """SIGTERM every group at once, wait, then SIGKILL whatever is left (run workers
    included). At once: one after the other, each waited for, the stop took their sum."""
    members = [member for process in processes for member in _group_members(process)]
    for process in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=STOP_GRACE_S)
    for member in alive:
        with contextlib.suppress(psutil.Error):
            member.kill()
    psutil.wait_procs(alive, timeout=5)
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


def _group_members(process: subprocess.Popen) -> list[psutil.Process]:
    try:
        root = psutil.Process(process.pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
