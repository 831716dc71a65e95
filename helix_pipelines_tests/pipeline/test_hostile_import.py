"""Hostile rows through a real import into the test database: whatever bytes a rejected row
holds, its excerpt is stored (COPY used to fail on a NUL) and the import completes."""

from __future__ import annotations

import sqlalchemy as sa

from helix_pipelines.core.parsing import RowError
from helix_pipelines.db import jobs
from helix_pipelines.db.batches import _copy_errors
from helix_pipelines.pipeline.importing import import_file
from helix_pipelines.pipeline.intake import intake_file


def excerpts(engine, job_id) -> dict[int, str]:
    sql = "SELECT source_row, raw_excerpt FROM import_row_error WHERE import_job_id = :j"
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(sql), {"j": job_id}).all())


def test_nul_and_bad_bytes_in_a_rejected_row_are_stored_escaped(engine, tmp_path):
    rows = b"".join(b"question %d,answer %d\n" % (n, n) for n in range(3000))
    path = tmp_path / "nul.csv"
    path.write_bytes(b"question,answer\n" + rows + b"bad \x00\x1b\xff row,\nlast q,last a\n")
    job, _ = intake_file(
        engine, path, files_dir=tmp_path / "files", max_file_bytes=10**8, move=False
    )
    report = import_file(engine, job.id, run_id="hostile")
    assert report.job.status == "completed_with_errors", report.job.last_error
    assert (report.job.pairs_created, report.job.row_errors) == (3001, 1)
    assert excerpts(engine, job.id) == {3001: "bad \\x00\\x1b\\udcff row,"}


def test_row_errors_made_elsewhere_are_escaped_where_they_are_written(engine, tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("question,answer\nq,a\n")
    job, _ = intake_file(engine, path, files_dir=tmp_path / "f", max_file_bytes=10**6, move=False)
    error = RowError(1, "malformed_row", "bad \x00", "raw \x00 \udcff " + "x" * 900)
    with engine.begin() as conn:
        _copy_errors(conn, job.id, [error])
    stored = excerpts(engine, job.id)[1]
    assert stored.startswith("raw \\x00 \\udcff x") and len(stored) == 500
    assert jobs.get_job(engine, job.id).status == "pending"
