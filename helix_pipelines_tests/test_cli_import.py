"""`helix-pipelines import FILE --json --no-embed`, `status` and `rollback` as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helix_pipelines.core.adaptive import AdaptiveBatchSize
from helix_pipelines.db import jobs
from helix_pipelines.pipeline.importing import ImportOptions, import_file
from helix_pipelines.pipeline.inbox import STAGING_DIR
from helix_pipelines.pipeline.intake import intake_file
from helix_pipelines_tests.support.db_fixtures import subprocess_env
from helix_pipelines_tests.support.embed_driver import insert_job
from helix_pipelines_tests.support.generate import write_qa_csv

SUMMARY_KEYS = {
    "import_job_id",
    "partition_key",
    "status",
    "rows_total",
    "pairs_created",
    "duplicates_skipped",
    # Sources (issue 16): additive keys.
    "source_key",
    "source_version",
    "sync",
    "row_errors",
    "last_error",
    "embeddings",
}


def cli(settings, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "helix_pipelines.cli", *args]
    return subprocess.run(
        command, env=subprocess_env(settings), capture_output=True, text=True, timeout=180
    )


def json_lines(done: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def assert_summary_shape(summary: dict) -> None:
    assert set(summary) == SUMMARY_KEYS
    assert set(summary["embeddings"]) == {"completed", "failed", "pending"}


@pytest.mark.slow
def test_import_prints_one_json_object_per_file(engine, settings, tmp_path):
    first = write_qa_csv(tmp_path / "first.csv", 300, seed=1)
    second = write_qa_csv(tmp_path / "second.csv", 200, seed=2)
    done = cli(settings, "import", str(first.path), str(second.path), "--json", "--no-embed")
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = json_lines(done)
    assert len(summaries) == 2 and len(done.stdout.strip().splitlines()) == 2
    for summary, generated in zip(summaries, (first, second), strict=True):
        assert_summary_shape(summary)
        assert summary["status"] == "completed_with_errors"
        assert summary["rows_total"] == generated.rows
        assert summary["row_errors"] == generated.bad_rows
        assert summary["rows_total"] == (
            summary["pairs_created"] + summary["duplicates_skipped"] + summary["row_errors"]
        )
        assert summary["embeddings"]["pending"] == summary["pairs_created"]
    assert staged_copies(settings) == []


@pytest.mark.slow
def test_a_binary_file_fails_with_an_error_naming_it(engine, settings, tmp_path):
    junk = tmp_path / "junk.csv"
    junk.write_bytes(bytes(range(256)) * 16 + os.urandom(4096))
    done = cli(settings, "import", str(junk), "--json", "--no-embed")
    assert done.returncode == 1, done.stderr[-3000:]
    [summary] = json_lines(done)
    assert_summary_shape(summary)
    assert summary["status"] == "failed"
    assert "junk.csv" in summary["last_error"]
    assert summary["pairs_created"] == 0


class Interrupted(Exception):
    pass


@pytest.mark.slow
def test_importing_the_file_of_an_unfinished_job_resumes_it(engine, settings, tmp_path):
    generated = write_qa_csv(tmp_path / "resume.csv", 3000, seed=5)
    job, _ = intake_file(
        engine, generated.path, files_dir=settings.files_dir, max_file_bytes=10**9, move=False
    )
    options = ImportOptions(batch_size=AdaptiveBatchSize(initial=500, fixed=True))
    with pytest.raises(Interrupted):
        import_file(engine, job.id, run_id="dead-run", options=options, hook=stop_after(2))
    assert jobs.get_job(engine, job.id).last_source_row == 1000
    done = cli(settings, "import", str(generated.path), "--json", "--no-embed")
    assert done.returncode == 0, done.stderr[-3000:]
    [summary] = json_lines(done)
    assert summary["import_job_id"] == str(job.id)
    assert summary["status"] == "completed_with_errors"
    assert (summary["rows_total"], summary["row_errors"]) == (3000, generated.bad_rows)
    assert len(jobs.list_jobs(engine)) == 1


def stop_after(batches: int):
    committed = []

    def hook(point: str) -> None:
        if point == "committed":
            committed.append(point)
            if len(committed) == batches:
                raise Interrupted

    return hook


@pytest.mark.slow
def test_status_and_rollback_of_an_imported_file(engine, settings, tmp_path):
    generated = write_qa_csv(tmp_path / "undo.csv", 400, seed=6)
    [summary] = json_lines(cli(settings, "import", str(generated.path), "--json", "--no-embed"))
    status = json.loads(cli(settings, "status", "--json").stdout)
    assert [s["import_job_id"] for s in status] == [summary["import_job_id"]]
    rolling = cli(settings, "rollback", summary["partition_key"], "--json")
    rolled = json.loads(rolling.stdout)
    assert rolled["status"] == "rolled_back"
    assert " - DEBUG - " not in rolling.stderr  # the report run's events are for the UI
    assert rolled["pairs_deleted"] == summary["pairs_created"]
    assert jobs.embedding_counts(engine, jobs.get_job(engine, summary["import_job_id"]).id) == {
        "completed": 0,
        "failed": 0,
        "pending": 0,
    }


@pytest.mark.slow
def test_refusals_get_json_too_and_an_unfinished_import_exits_non_zero(engine, settings, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    good = write_qa_csv(tmp_path / "good.csv", 50, seed=8, bad_every=10**9)
    done = cli(settings, "import", str(empty), str(good.path), str(tmp_path / "missing.csv"),
               "--json", "--no-embed")  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    refused, summary, missing = json_lines(done)
    assert set(refused) == {"file", "error"} and refused["file"].endswith("empty.csv")
    assert "empty" in refused["error"]
    assert_summary_shape(summary)
    assert summary["status"] == "completed"
    assert missing == {"file": str(tmp_path / "missing.csv"), "error": "no such file"}
    assert staged_copies(settings) == []


def test_a_missing_first_file_is_refused_and_the_next_imported(engine, settings, tmp_path):
    """The first file is copied while the CLI starts: its refusal comes out in its turn."""
    good = write_qa_csv(tmp_path / "good.csv", 50, seed=9, bad_every=10**9)
    done = cli(settings, "import", str(tmp_path / "missing.csv"), str(good.path), "--json",
               "--no-embed")  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    missing, summary = json_lines(done)
    assert missing == {"file": str(tmp_path / "missing.csv"), "error": "no such file"}
    assert (summary["status"], summary["pairs_created"]) == ("completed", 50)
    assert staged_copies(settings) == []


def staged_copies(settings) -> list:
    """Copies left in the staging area: each taken file's copy is stored or removed."""
    staging = settings.files_dir / STAGING_DIR
    return list(staging.iterdir()) if staging.exists() else []


def test_a_reader_that_stops_early_gets_no_traceback(engine, settings):
    for number in range(20):  # `status --json` then writes more than stdout's buffer
        insert_job(engine, [(f"question {number}?", f"answer {number}")])
    command = [sys.executable, "-m", "helix_pipelines.cli", "status", "--json"]
    process = subprocess.Popen(
        command, env=subprocess_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    process.stdout.close()  # gone before the program writes, as `head` once it has its lines
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=180) == 1
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
