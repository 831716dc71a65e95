"""The real data sets in shared/data, parsed end to end."""

from __future__ import annotations

import pytest

from helix_pipelines.core.parsing import ParseOptions
from helix_pipelines_tests.core.parsing_helpers import SHARED_DATA, read_all

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data is not present")


def test_bitext_csv_uses_instruction_response_and_category_over_intent():
    parsed = read_all(SHARED_DATA / "bitext_customer_support_train.csv")
    summary = parsed.summary
    assert (summary.file_format, summary.encoding, summary.delimiter) == ("csv", "utf-8", ",")
    assert summary.columns == {
        "question": "instruction",
        "answer": "response",
        "category": "category",
    }
    assert "intent" in summary.ignored_columns
    assert summary.notes == ["2 category columns: used 'category', ignored 'intent'"]
    assert (summary.rows_seen, summary.pairs, summary.errors_by_code) == (4514, 4514, {})
    assert parsed.errors == []
    assert [pair.source_row for pair in parsed.pairs] == list(range(1, 4515))

    first = parsed.pairs[0]
    assert first.question == "how can I cancel purchase 113542617735902?"
    assert first.category == "ORDER"
    assert first.answer.startswith("I understand how unnerving it can be to cancel an order")
    # CRLF inside the quoted field became LF
    assert "process:\n\n1. Firstly, connect to our system" in first.answer
    assert all("\r" not in pair.answer for pair in parsed.pairs)
    assert first.answer.endswith("You are never alone in this!")

    last = parsed.pairs[-1]
    assert last.question == "help seeing if there is anything new on my rebate"
    assert last.category == "REFUND"


def test_covidqa_tsv_multilingual_with_empty_categories_and_duplicates():
    parsed = read_all(SHARED_DATA / "covidqa_faq_200327.tsv")
    summary = parsed.summary
    assert (summary.file_format, summary.delimiter) == ("tsv", "\t")
    assert summary.columns == {"question": "question", "answer": "answer", "category": "category"}
    assert "answer_html" in summary.ignored_columns
    assert (summary.rows_seen, summary.pairs) == (896, 896)
    rows = parsed.by_row()
    assert rows[1].question == "Wie kann ich mich infizieren?"
    assert rows[1].answer.startswith("Der Hauptübertragungsweg ist die Tröpfcheninfektion")
    assert rows[1].category is None
    assert rows[6].question == "Should I cancel my international trip?"
    assert rows[6].category == "Canceling or Postponing Travel"
    assert rows[88].question == "Do kiedy będą obowiązywać dodatkowe ograniczenia?"
    assert rows[88].answer == "Do soboty 11 kwietnia 2020 r."
    assert rows[896].question.startswith("A chi rivolgersi in caso di sintomatologia")
    assert sum(pair.category is None for pair in parsed.pairs) == 535
    # the file repeats some rows: same text, same hash
    assert len({pair.content_hash for pair in parsed.pairs}) == 879


def test_gsm8k_jsonl_multiline_answers():
    parsed = read_all(SHARED_DATA / "gsm8k_train.jsonl")
    summary = parsed.summary
    assert (summary.file_format, summary.encoding, summary.delimiter) == ("jsonl", "utf-8", None)
    assert summary.columns == {"question": "question", "answer": "answer"}
    assert (summary.rows_seen, summary.pairs, summary.errors_by_code) == (7473, 7473, {})
    assert parsed.last_source_rows == [5000, 7473]
    first = parsed.pairs[0]
    assert first.question.startswith("Natalia sold clips to 48 of her friends in April")
    assert first.answer == (
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
    )
    assert first.category is None
    assert parsed.pairs[-1].answer.endswith("#### 50")


def test_resume_on_a_real_file_yields_the_same_tail():
    path = SHARED_DATA / "bitext_customer_support_train.csv"
    options = ParseOptions(chunk_rows=1000)
    whole = read_all(path, options)
    resumed = read_all(path, options, start_after_row=3000)
    assert resumed.pairs == whole.pairs[3000:]
    assert resumed.summary.rows_seen == 1514
    assert resumed.last_source_rows == [4000, 4514]
