"""The import reports how far its reader has got in the file, after every batch, and keeps the
byte offset in the job's checkpoint (what `status` and the CLI's bar read)."""

from __future__ import annotations

from helix_pipelines.core.adaptive import AdaptiveBatchSize
from helix_pipelines.db import jobs
from helix_pipelines.pipeline.importing import ImportOptions, import_file
from helix_pipelines_tests.pipeline.import_checks import empty_tables, register
from helix_pipelines_tests.support.generate import write_qa_csv


def test_progress_reports_bytes_read_rising_to_the_file_size(engine, tmp_path):
    empty_tables(engine)
    path = write_qa_csv(tmp_path / "progress.csv", 20_000, seed=3).path
    job = register(engine, path)
    seen = []
    options = ImportOptions(batch_size=AdaptiveBatchSize(initial=1000, fixed=True))
    import_file(engine, job.id, run_id="r", options=options, on_progress=seen.append)

    size = path.stat().st_size
    assert len(seen) >= 20
    assert all(p.bytes_total == size for p in seen)
    positions = [p.bytes_read for p in seen]
    assert positions == sorted(positions)
    # Where the import is, not where pyarrow's read-ahead is (at the end after one batch).
    assert 0 < positions[0] < size / 10
    assert positions[-1] >= 0.95 * size
    assert [p.rows for p in seen] == sorted(p.rows for p in seen)
    checkpoint = jobs.get_job(engine, job.id).checkpoint_data
    assert checkpoint["bytes_total"] == size
    assert 0 < checkpoint["bytes_read"] <= size


def test_a_file_read_to_its_end_reports_all_of_it(engine, tmp_path):
    """The position is estimated from the first MiB's bytes per record: a file whose later
    records are longer stays short of its size until the reader has read it all."""
    empty_tables(engine)
    path = tmp_path / "growing.csv"
    with path.open("w", encoding="utf-8") as out:
        out.write("question,answer\n")
        for n in range(20_000):
            out.write(f"Question {n}?,{'Answer ' * (2 if n < 10_000 else 40)}{n}.\n")
    job = register(engine, path)
    seen = []
    import_file(engine, job.id, run_id="r", on_progress=seen.append)

    size = path.stat().st_size
    assert seen[-2].bytes_read < 0.9 * size  # the estimate, short of the end
    assert seen[-1].bytes_read == size and seen[-1].rows == 20_000
