"""Progress you can watch: the CLI's bar on a terminal (a real pseudo-terminal), clean `--json`,
progress lines in a run's event log, and `status` showing percent and time left."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pexpect
import pytest
from dagster import DagsterInstance
from rich.console import Console

from helix_pipelines import cli_progress
from helix_pipelines_tests.support.db_fixtures import subprocess_env
from helix_pipelines_tests.support.generate import write_qa_csv

# The import bar's percent, then its bar (ANSI-coloured), then the bytes read.
PERCENT = re.compile(r"(\d+\.\d)%[^%\n]*? [\d.]+ [KMG]?B/")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def spawn_cli(settings, *args: str, **extra_env: str) -> pexpect.spawn:
    env = subprocess_env(settings, **extra_env)
    for size in ("COLUMNS", "LINES"):  # the terminal's own size rules (pytest-xdist sets them)
        env.pop(size, None)
    return pexpect.spawn(
        sys.executable, ["-m", "helix_pipelines.cli", *args],
        env=env,
        dimensions=(40, 220), timeout=240, encoding="utf-8", codec_errors="replace",
    )  # fmt: skip


def cli_json(settings, *args: str):
    done = subprocess.run(
        [sys.executable, "-m", "helix_pipelines.cli", *args, "--json"],
        env=subprocess_env(settings), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def read_all(child: pexpect.spawn, on_chunk=None) -> str:
    output = []
    while True:
        try:
            chunk = child.read_nonblocking(65536, timeout=240)
        except pexpect.EOF:
            break
        output.append(chunk)
        if on_chunk is not None:
            on_chunk(chunk)
    child.close()
    return "".join(output)


@pytest.mark.parametrize("width", [60, 80, 220])
def test_a_narrow_terminal_cuts_the_detail_not_the_percent_or_the_bar(width):
    console = Console(file=io.StringIO(), width=width, color_system=None)
    progress = cli_progress._progress(console)
    detail = "157.2 MB/370.0 MB · 85,000 rows · 84,101 pairs"
    progress.add_task("a-long-export-file-name-2026-11-30.csv import", total=200, completed=85,
                      detail=detail)  # fmt: skip
    console.print(progress.make_tasks_table(progress.tasks))
    [line] = console.file.getvalue().splitlines()
    assert len(line) <= width
    assert " 42.5% " in line and "━" in line and "157.2" in line


def test_status_says_what_the_run_heartbeat_of_a_processing_job_says():
    from helix_pipelines.commands import _progress_text
    from helix_pipelines.core.liveness import Owner, run_state, this_process

    me = this_process()  # a live process on this host: only its heartbeat's age can condemn it
    alive = Owner(me.host, me.pid, me.started, heartbeat_age_s=3.0)
    quiet = Owner(me.host, me.pid, me.started, heartbeat_age_s=100.0)
    far_and_stale = Owner("another-host", 1, None, heartbeat_age_s=301.0)
    owners = (alive, quiet, far_and_stale)
    states = [
        (run_state(owner, stale_after_s=300, this_host=me.host), round(owner.heartbeat_age_s))
        for owner in owners
    ]
    assert states == [("alive", 3), ("silent", 100), ("gone", 301)]
    assert run_state(None, stale_after_s=300, this_host=me.host) == "none"
    texts = [
        _progress_text({"percent": 40.0, "time_left_s": 65, "run": run, "silent_s": silent})
        for run, silent in [*states, ("none", None)]
    ]
    assert texts == [
        "40.0%, 1m 05s left",
        "40.0%, no heartbeat for 1m 40s",
        "40.0%, its run is gone: recovery resumes it (`recover --resume`, or a sensor)",
        "40.0%, no run holds it: recovery resumes it (`recover --resume`, or a sensor)",
    ]


@pytest.mark.slow
def test_the_bar_advances_on_a_terminal_and_status_shows_percent(engine, settings, tmp_path):
    path = write_qa_csv(tmp_path / "big.csv", 200_000, seed=11).path
    child = spawn_cli(settings, "import", "--no-embed", str(path))
    seen: list[float] = []
    statuses: list[dict] = []

    def on_chunk(chunk: str) -> None:
        seen.extend(float(p) for p in PERCENT.findall(chunk))
        if not statuses and seen and 0 < seen[-1] < 50:  # part-way: ask `status` once
            statuses.append(cli_json(settings, "status"))

    output = read_all(child, on_chunk)
    assert child.exitstatus == 0, ANSI.sub("", output)[-3000:]
    part_way = sorted({p for p in seen if 0 < p < 100})
    assert len(part_way) >= 3, f"the bar did not advance: {sorted(set(seen))}"
    assert seen == sorted(seen) and seen[-1] == 100.0
    text = ANSI.sub("", output)
    assert "rows/s" in text and "left" in text and "pairs" in text and "errors" in text
    assert "DEBUG" not in text and "STEP_START" not in text  # Dagster's lines need -v
    assert "big.csv: completed_with_errors" in text and "200000 rows" in text
    [listing] = statuses
    [running] = [job for job in listing if job["status"] == "processing"]
    assert 0 < running["progress"]["percent"] < 100
    assert running["progress"]["time_left_s"] is not None
    assert running["progress"]["run"] == "alive"


@pytest.mark.slow
def test_json_on_a_terminal_is_only_json(engine, settings, tmp_path):
    path = write_qa_csv(tmp_path / "small.csv", 3000, seed=12).path
    child = spawn_cli(settings, "import", "--json", "--no-embed", str(path))
    output = read_all(child)
    assert child.exitstatus == 0, output[-3000:]
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines and all(json.loads(line)["status"] for line in lines), output[-3000:]


def progress_logged(settings, step: str, *command: str) -> list[str]:
    """Run a CLI command with a fast progress cadence; the progress lines `step` logged."""
    done = subprocess.run(
        [sys.executable, "-m", "helix_pipelines.cli", *command],
        env=subprocess_env(settings, HELIX_PROGRESS_LOG_S="0.5"),
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with DagsterInstance.from_config(str(settings.home / "dagster")) as instance:
        [run] = instance.get_runs()
        return [
            entry.user_message
            for entry in instance.all_logs(run.run_id)
            if entry.step_key == step and "progress:" in entry.user_message
        ]


@pytest.mark.slow
def test_a_running_imports_event_log_holds_rising_percentages(engine, settings, tmp_path):
    path = write_qa_csv(tmp_path / "logged.csv", 100_000, seed=13).path
    messages = progress_logged(settings, "qa_pairs", "import", "--json", "--no-embed", str(path))
    percents = [float(re.search(r"([\d.]+)% of the file", m).group(1)) for m in messages]
    assert len(percents) >= 3, messages
    assert percents == sorted(percents) and percents[0] < 50 and percents[-1] > 90
    assert all("rows/s" in m and "time left" in m for m in messages)


@pytest.mark.slow
def test_the_embedding_step_logs_its_progress(engine, settings, tmp_path):
    path = write_qa_csv(tmp_path / "embedded.csv", 1500, seed=14).path
    messages = progress_logged(settings, "qa_embeddings", "import", "--json", str(path))
    assert messages and "0.0% embedded" in messages[0], messages
    assert "100.0% embedded" in messages[-1] and "pairs/s" in messages[-1]
