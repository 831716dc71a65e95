"""Rollback removes exactly one job's pairs; the accounting invariant holds on real files."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from helix_pipelines.db import jobs
from helix_pipelines.pipeline.importing import import_file
from helix_pipelines_tests.pipeline.import_checks import (
    assert_accounting,
    ids_by_source_row,
    register,
    source_rows_repeated,
)
from helix_pipelines_tests.support.generate import write_qa_csv

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
REAL_FILES = sorted(p for p in SHARED_DATA.glob("*") if p.suffix != ".md")


def imported(engine, path: Path) -> jobs.Job:
    job = register(engine, path)
    return import_file(engine, job.id, run_id=f"run-{path.stem}").job


def test_rollback_removes_exactly_the_jobs_pairs(engine, tmp_path):
    kept = imported(engine, write_qa_csv(tmp_path / "kept.csv", 1500, seed=1).path)
    removed = imported(engine, write_qa_csv(tmp_path / "removed.csv", 1500, seed=2).path)
    kept_before = ids_by_source_row(engine, kept.id)
    assert kept_before and removed.pairs_created
    result = jobs.rollback_job(engine, removed.id, batch_size=200)
    assert (result.job.status, result.pairs_deleted) == ("rolled_back", removed.pairs_created)
    assert ids_by_source_row(engine, removed.id) == {}
    assert ids_by_source_row(engine, kept.id) == kept_before
    assert jobs.get_job(engine, kept.id).status == kept.status


def test_a_processing_job_cannot_be_rolled_back(engine, tmp_path):
    job = register(engine, write_qa_csv(tmp_path / "busy.csv", 10).path)
    jobs.start_job(engine, job.id, "live-run", stale_after_s=300)
    with pytest.raises(jobs.JobBusy):
        jobs.rollback_job(engine, job.id)


@pytest.mark.skipif(not REAL_FILES, reason=f"no shared data files in {SHARED_DATA}")
@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
def test_accounting_holds_for_every_shared_data_file(engine, path):
    job = imported(engine, path)
    assert job.status in ("completed", "completed_with_errors"), job.last_error
    assert job.rows_total > 0
    assert_accounting(job)
    assert source_rows_repeated(engine, job.id) == []
    with engine.connect() as conn:
        pairs = conn.scalar(
            sa.text("SELECT count(*) FROM qa_pair WHERE import_job_id = :j"), {"j": job.id}
        )
        errors = conn.scalar(
            sa.text("SELECT count(*) FROM import_row_error WHERE import_job_id = :j"),
            {"j": job.id},
        )
    assert (pairs, errors) == (job.pairs_created, job.row_errors)
