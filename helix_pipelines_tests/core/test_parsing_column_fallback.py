"""Several columns could hold the question (or the answer): an empty chosen column takes its
text from another candidate column, in every format, and the summary counts those records."""

from __future__ import annotations

import json

import pytest

from helix_pipelines.core.parsing.csv_reader import DelimitedSource
from helix_pipelines_tests.core.hostile_files import write_shared_strings_xlsx
from helix_pipelines_tests.core.parsing_helpers import read_all, write_table

HEADER = ["question", "title", "answer", "body", "category"]
ROWS = [
    ["", "From the title", "a1", "", "c"],
    ["q2", "", "", "From the body", ""],
    ["q3", "t3", "a3", "b3", ""],
    ["", "", "only an answer", "", ""],
]
EXPECTED_PAIRS = [(1, "From the title", "a1"), (2, "q2", "From the body"), (3, "q3", "a3")]


def check(parsed) -> None:
    assert [(p.source_row, p.question, p.answer) for p in parsed.pairs] == EXPECTED_PAIRS
    assert parsed.error_codes() == {4: "missing_question"}
    assert parsed.summary.filled_from_other_columns == {"question": 1, "answer": 1}


@pytest.mark.parametrize("fast", [True, False])
def test_csv(tmp_path, monkeypatch, fast):
    monkeypatch.setattr(DelimitedSource, "use_fast_path", fast)
    check(read_all(write_table(tmp_path / "f.csv", [HEADER, *ROWS])))


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_and_jsonl(tmp_path, suffix):
    records = [dict(zip(HEADER, row, strict=True)) for row in ROWS]
    path = tmp_path / f"f{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    check(read_all(path))


def test_xlsx(tmp_path):
    check(read_all(write_shared_strings_xlsx(tmp_path / "f.xlsx", [HEADER, *ROWS])))


def test_counts_restart_with_each_read(tmp_path):
    path = write_table(tmp_path / "f.csv", [HEADER, *ROWS])
    parsed = read_all(path, start_after_row=1)
    assert parsed.summary.filled_from_other_columns == {"answer": 1}


def test_the_summary_names_the_fallback_columns(tmp_path):
    parsed = read_all(write_table(tmp_path / "f.csv", [HEADER, *ROWS]))
    assert "2 question columns: used 'question', 'title' fill its empty records" in (
        parsed.summary.notes
    )
