"""Kill -9 the importing process at 20+ points of a 50,000-row file, inside batches (at every
hook point of a batch's transaction) and between them; recover and resume each time. The
table must equal a clean import row for row, and rows committed before a kill keep their ids."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from helix_pipelines.core.adaptive import AdaptiveBatchSize
from helix_pipelines.db import jobs
from helix_pipelines.pipeline.importing import ImportOptions, import_file
from helix_pipelines.pipeline.recovery import RecoveryPolicy, recover
from helix_pipelines_tests.pipeline.import_checks import (
    assert_accounting,
    error_rows,
    ids_by_source_row,
    pair_rows,
    register,
    source_rows_repeated,
)
from helix_pipelines_tests.support.db_fixtures import subprocess_env, truncate_all
from helix_pipelines_tests.support.generate import write_qa_csv

pytestmark = pytest.mark.slow

ROWS = 50_000
BATCH = 2000  # 25 batches
POINTS = ("locked", "pairs_copied", "errors_copied", "before_commit", "committed")
# (point, batch number within the child that dies there): 25 kills over the 25 batches,
# every hook point at batch numbers 1, 2 and 3 of its process.
KILLS = [(POINTS[i % 5], 1 + (i // 5) % 3) for i in range(25)]


@dataclass(frozen=True)
class Reference:
    pairs: set
    errors: set
    job: jobs.Job


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    return write_qa_csv(tmp_path_factory.mktemp("crash") / "fifty_thousand.csv", ROWS, seed=4)


@pytest.fixture(scope="module")
def reference(session_engine, big_file) -> Reference:
    """A clean import of the same file, captured and then cleared away."""
    truncate_all(session_engine)
    job = register(session_engine, big_file.path)
    report = import_file(session_engine, job.id, run_id="clean", options=_fixed_batches())
    captured = Reference(
        pair_rows(session_engine, job.id), error_rows(session_engine, job.id), report.job
    )
    truncate_all(session_engine)
    return captured


def _fixed_batches() -> ImportOptions:
    return ImportOptions(batch_size=AdaptiveBatchSize(initial=BATCH, fixed=True))


def test_reference_import_counts_every_row(reference, big_file):
    assert reference.job.rows_total == ROWS
    assert reference.job.row_errors == big_file.bad_rows
    assert reference.job.duplicates_skipped >= big_file.duplicate_rows
    assert_accounting(reference.job)


def test_kill_minus_nine_at_25_points_then_resume_matches_a_clean_import(
    engine, settings, reference, big_file
):
    job = register(engine, big_file.path)
    kept_ids: dict[int, int] = {}
    for number, (point, batch) in enumerate(KILLS):
        code = _run_driver(settings, job.id, f"run-{number}", kill_at=f"{point}:{batch}")
        assert code == -9, f"the child was to die at {point}:{batch}"
        now = ids_by_source_row(engine, job.id)
        assert kept_ids.items() <= now.items(), f"ids changed after the kill at {point}:{batch}"
        kept_ids = now
        _recover(engine, job.id)
    assert _run_driver(settings, job.id, "final") == 0
    final = jobs.get_job(engine, job.id)
    assert final.status == reference.job.status
    assert (final.pairs_created, final.duplicates_skipped, final.row_errors) == (
        reference.job.pairs_created,
        reference.job.duplicates_skipped,
        reference.job.row_errors,
    )
    assert_accounting(final)
    assert source_rows_repeated(engine, job.id) == []
    assert pair_rows(engine, job.id) == reference.pairs
    assert error_rows(engine, job.id) == reference.errors
    assert kept_ids.items() <= ids_by_source_row(engine, job.id).items()


def _recover(engine, job_id) -> None:
    # The driver's heartbeat names a process that is gone: the real liveness check says dead.
    # (25 deaths in a row, some without progress: a budget wider than the default.)
    report = recover(engine, policy=RecoveryPolicy(stale_after_s=300, max_deaths=100))
    assert [j.id for j in report.resumed] == [job_id]
    assert jobs.get_job(engine, job_id).status == "pending"


def _run_driver(settings, job_id, run_id: str, kill_at: str | None = None) -> int:
    command = [
        sys.executable, "-m", "helix_pipelines_tests.support.import_driver", str(job_id),
        "--run-id", run_id, "--batch-size", str(BATCH),
    ]  # fmt: skip
    if kill_at:
        command += ["--kill-at", kill_at]
    done = subprocess.run(command, env=subprocess_env(settings), capture_output=True, timeout=120)
    assert done.returncode in (0, -9), done.stderr.decode()[-2000:]
    return done.returncode
