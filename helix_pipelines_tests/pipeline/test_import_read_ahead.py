"""An import parses ahead of its writer in a thread of its own: failures either side end both,
damage met by the reader is recorded at its row, and a resumed import matches a clean one."""

from __future__ import annotations

import json
import threading

import pytest

from helix_pipelines.core.adaptive import AdaptiveBatchSize
from helix_pipelines.core.parsing import ParseOptions
from helix_pipelines.db import jobs
from helix_pipelines.pipeline.importing import ImportOptions, import_file
from helix_pipelines_tests.pipeline.import_checks import (
    assert_accounting,
    clean_import,
    empty_tables,
    error_rows,
    pair_rows,
    register,
    source_rows_repeated,
)
from helix_pipelines_tests.support.generate import write_qa_csv

ROWS = 2_000
BATCH = 250
READER = "import-reader"


class WriterGone(Exception):
    """Not transient: the import gives up at once."""


def fixed() -> ImportOptions:
    return ImportOptions(
        parse=ParseOptions(chunk_rows=100),
        batch_size=AdaptiveBatchSize(initial=BATCH, fixed=True),
    )


def reader_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == READER]


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    return write_qa_csv(tmp_path_factory.mktemp("ahead") / "ahead.csv", ROWS, seed=11).path


def test_a_writer_failure_stops_the_reader_and_the_retry_resumes(engine, qa_file):
    expected_pairs, expected_errors, clean_job = clean_import(engine, qa_file, fixed())
    job = register(engine, qa_file)
    arrivals = {"pairs_copied": 0}

    def fail_in_third_batch(point: str) -> None:
        if point == "pairs_copied":
            arrivals[point] += 1
            if arrivals[point] == 3:
                raise WriterGone("the writer failed in batch 3")

    with pytest.raises(WriterGone):
        import_file(engine, job.id, run_id="r1", options=fixed(), hook=fail_in_third_batch)
    assert reader_threads() == []  # joined before import_file returned
    stopped = jobs.get_job(engine, job.id)
    assert (stopped.status, stopped.last_source_row) == ("processing", 2 * BATCH)

    report = import_file(engine, job.id, run_id="r1", options=fixed())
    assert report.job.status == clean_job.status
    assert_accounting(report.job)
    assert source_rows_repeated(engine, job.id) == []
    assert pair_rows(engine, job.id) == expected_pairs
    assert error_rows(engine, job.id) == expected_errors
    empty_tables(engine)


def test_damage_met_by_the_reader_is_a_row_error_at_its_row(engine, tmp_path):
    # A JSON array broken after 600 records: the reader raises mid-file, in its own thread.
    records = [{"question": f"Why {n}?", "answer": f"Because {n}."} for n in range(600)]
    text = json.dumps(records)[:-1] + ', {"question": "cut here", "answer": \x00\x01 ]]]'
    path = tmp_path / "damaged.json"
    path.write_text(text)
    job = register(engine, path)
    report = import_file(engine, job.id, run_id="r", options=fixed())
    assert reader_threads() == []
    assert (report.job.status, report.job.pairs_created) == ("completed_with_errors", 600)
    [(row, code, message)] = error_rows(engine, job.id)
    assert (row, code) == (601, "file_damaged"), message
    assert "reading stopped after 600 records" in message
    assert_accounting(report.job)
    empty_tables(engine)


def test_batches_of_long_answers_are_cut_by_their_text(engine, tmp_path):
    # 120 answers of 30,000 characters: 3.6 M characters, over 2 M in a batch of 120 rows.
    path = tmp_path / "long.csv"
    lines = ["question,answer"] + [f"Why {n}?,{chr(97 + n % 26) * 30_000} {n}" for n in range(120)]
    path.write_text("\n".join(lines) + "\n")
    job = register(engine, path)
    options = ImportOptions(
        batch_size=AdaptiveBatchSize(initial=5000, fixed=True), batch_text_chars=2_000_000
    )
    report = import_file(engine, job.id, run_id="r", options=options)
    assert report.job.pairs_created == 120
    # 66 rows of 30,000 characters in 2 M, whatever the batch size says: 66 + 54.
    assert report.batches == 2
    assert_accounting(report.job)
    empty_tables(engine)
