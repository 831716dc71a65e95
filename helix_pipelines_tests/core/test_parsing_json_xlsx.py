"""JSON, JSON Lines and XLSX inputs, including broken and hostile ones."""

from __future__ import annotations

import datetime as dt
import json
import zipfile

import openpyxl
import pytest

from helix_pipelines.core.parsing import FileUnreadable, ParseOptions, open_source
from helix_pipelines_tests.core.parsing_helpers import read_all, write_xlsx_by_hand

# -- JSON ------------------------------------------------------------------------------------------


def write_json(tmp_path, value, name="faq.json", encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(json.dumps(value, ensure_ascii=False, indent=1).encode(encoding))
    return path


def test_json_array_of_objects_with_typed_values(tmp_path):
    records = [
        {"Question": "How many?", "Answer": 3.0, "topic": "maths"},
        {"Question": "Half?", "Answer": 0.5, "topic": None},
        {"Question": "True?", "Answer": True},
        {"Question": "Emoji 😀?", "Answer": "Yes 👍"},
    ]
    parsed = read_all(write_json(tmp_path, records))
    assert parsed.summary.file_format == "json"
    assert parsed.summary.columns == {
        "question": "Question",
        "answer": "Answer",
        "category": "topic",
    }
    assert [(pair.answer, pair.category) for pair in parsed.pairs] == [
        ("3", "maths"),
        ("0.5", None),
        ("true", None),
        ("Yes 👍", None),
    ]


def test_json_object_holding_an_array(tmp_path):
    document = {
        "meta": {"version": 2, "tags": [1, 2]},
        "items": [{"q": "Where?", "a": "Here."}, {"q": "When?", "a": "Now."}],
    }
    parsed = read_all(write_json(tmp_path, document))
    assert [pair.question for pair in parsed.pairs] == ["Where?", "When?"]
    assert parsed.summary.notes[0] == "records read from the array under key 'items'"


def test_json_items_that_are_not_objects_are_malformed_rows(tmp_path):
    records = [{"question": "q1", "answer": "a1"}, ["a", "list"], "text", {"question": "q4"}, {}]
    parsed = read_all(write_json(tmp_path, records))
    assert parsed.error_codes() == {2: "malformed_row", 3: "malformed_row", 4: "missing_answer"}
    assert parsed.errors[0].message == "the record is an array, not an object"
    assert parsed.errors[0].raw_excerpt == '["a", "list"]'
    assert parsed.last_source_rows == [5]  # the empty object is a blank record


def test_json_nested_value_where_text_is_expected(tmp_path):
    parsed = read_all(write_json(tmp_path, [{"question": "q", "answer": {"text": "a"}}]))
    assert parsed.error_codes() == {1: "malformed_row"}
    assert "an object where text was expected" in parsed.errors[0].message


def test_json_in_utf16(tmp_path):
    path = write_json(tmp_path, [{"question": "Größe?", "answer": "Groß."}], encoding="utf-16")
    parsed = read_all(path)
    assert parsed.summary.encoding == "utf-16"
    assert parsed.pairs[0].question == "Größe?"


def test_truncated_json_fails_mid_stream(tmp_path):
    path = tmp_path / "faq.json"
    path.write_text('[{"question": "q1", "answer": "a1"}, {"question": "q2", "answ')
    with open_source(path) as source:
        chunks = source.chunks()
        with pytest.raises(FileUnreadable, match="damaged or truncated after record 1"):
            list(chunks)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"count": 3}', "holds no array of objects"),
        ("[1, 2, 3]", "holds no objects"),
        ('{"question": "a", "answer": ', "not valid JSON"),
    ],
)
def test_unusable_json_documents(tmp_path, text, message):
    path = tmp_path / "faq.json"
    path.write_text(text)
    with pytest.raises(FileUnreadable, match=message):
        open_source(path)


def test_empty_json_array_gives_zero_rows(tmp_path):
    parsed = read_all(write_json(tmp_path, []))
    assert (parsed.pairs, parsed.errors) == ([], [])


# -- JSON Lines ------------------------------------------------------------------------------------


def test_jsonl_counts_every_physical_line(tmp_path):
    lines = [
        '{"prompt": "p1", "completion": "c1"}',
        "",
        '{"prompt": "p3", "completion": "c3"',  # broken
        "[1, 2]",
        '{"prompt": "p5", "completion": ""}',
        '{"prompt": "p6", "completion": "c6", "extra": 1}',
    ]
    path = tmp_path / "faq.ndjson"
    path.write_text("\n".join(lines) + "\n")
    parsed = read_all(path)
    assert parsed.summary.file_format == "jsonl"
    assert parsed.summary.ignored_columns == ["extra"]
    assert [(pair.source_row, pair.question) for pair in parsed.pairs] == [(1, "p1"), (6, "p6")]
    assert parsed.error_codes() == {3: "malformed_row", 4: "malformed_row", 5: "missing_answer"}
    assert "not valid JSON" in parsed.errors[0].message
    assert parsed.summary.rows_seen == 5


def test_jsonl_over_long_line_is_too_long_and_reading_goes_on(tmp_path):
    path = tmp_path / "faq.jsonl"
    big = json.dumps({"question": "big", "answer": "x" * 5000})
    path.write_text(
        '{"question": "q1", "answer": "a1"}\n' + big + '\n{"question": "q3", "answer": "a3"}\n'
    )
    parsed = read_all(path, ParseOptions(max_field_chars=2000))
    assert parsed.error_codes() == {2: "too_long"}
    assert [pair.source_row for pair in parsed.pairs] == [1, 3]


def test_jsonl_resume(tmp_path):
    path = tmp_path / "faq.jsonl"
    path.write_text("".join(json.dumps({"q": f"q{n}", "a": f"a{n}"}) + "\n" for n in range(1, 8)))
    parsed = read_all(path, start_after_row=5)
    assert [pair.question for pair in parsed.pairs] == ["q6", "q7"]


# -- XLSX ------------------------------------------------------------------------------------------


def write_workbook(tmp_path, sheets: dict[str, list[list[object]]], name="faq.xlsx"):
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for title, rows in sheets.items():
        sheet = workbook.create_sheet(title)
        for row in rows:
            sheet.append(row)
    path = tmp_path / name
    workbook.save(path)
    return path


def test_xlsx_first_sheet_with_a_header_and_typed_cells(tmp_path):
    path = write_workbook(
        tmp_path,
        {
            "Notes": [["Read me"], ["nothing here"]],
            "FAQ": [
                ["Knowledge base export"],
                [],
                ["ID", "Question", "Answer", "Category"],
                [1, "How many?", 3.0, "maths"],
                [2, "When?", dt.datetime(2024, 5, 17), None],
                [3, "At what time?", dt.datetime(2024, 5, 17, 9, 30), "time"],
                [4, "Ratio?", 0.25, None],
                [5, "Is it?", True, None],
                [],
                [7, "Last?", "Yes", "end"],
            ],
        },
    )
    parsed = read_all(path)
    summary = parsed.summary
    assert (summary.file_format, summary.encoding, summary.delimiter) == ("xlsx", None, None)
    assert summary.columns == {"question": "Question", "answer": "Answer", "category": "Category"}
    assert summary.ignored_columns == ["ID"]
    assert summary.notes[0] == "read sheet 'FAQ', header on row 3"
    assert [(pair.source_row, pair.answer) for pair in parsed.pairs] == [
        (1, "3"),
        (2, "2024-05-17"),
        (3, "2024-05-17T09:30:00"),
        (4, "0.25"),
        (5, "true"),
        (7, "Last?" and "Yes"),
    ]
    assert parsed.pairs[-1].category == "end"


def test_xlsx_formula_written_by_openpyxl_has_no_cached_value(tmp_path):
    """openpyxl stores formulas without a cached result; we never evaluate them, so the cell
    reads as empty."""
    path = write_workbook(tmp_path, {"S": [["question", "answer"], ["Sum?", "=1+2"]]})
    parsed = read_all(path)
    assert parsed.error_codes() == {1: "missing_answer"}


def test_xlsx_formula_with_cached_value_uses_the_cached_value(tmp_path):
    rows = (
        '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c></row>'
        '<row r="2"><c r="A2" t="s"><v>2</v></c><c r="B2"><f>1+2</f><v>3</v></c></row>'
        '<row r="3"><c r="A3" t="s"><v>3</v></c>'
        '<c r="B3" t="str"><f>"a"&amp;"b"</f><v>ab</v></c></row>'
    )
    path = write_xlsx_by_hand(
        tmp_path / "faq.xlsx", rows, ["question", "answer", "Sum?", "Concat?"]
    )
    parsed = read_all(path)
    assert [(pair.question, pair.answer) for pair in parsed.pairs] == [
        ("Sum?", "3"),
        ("Concat?", "ab"),
    ]


def test_xlsx_without_a_recognisable_header(tmp_path):
    path = write_workbook(tmp_path, {"S": [["a", "b"], ["1", "2"]]})
    with pytest.raises(FileUnreadable, match="no sheet has a recognisable header"):
        open_source(path)


def test_zip_that_is_not_a_workbook(tmp_path):
    path = tmp_path / "faq.xlsx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(FileUnreadable, match="a zip archive that is not an .xlsx workbook"):
        open_source(path)


def test_zip_bomb_workbook_fails_fast(tmp_path):
    path = write_workbook(tmp_path, {"S": [["question", "answer"], ["q", "a"]]})
    bomb = tmp_path / "bomb.xlsx"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for item in source.infolist():
            out.writestr(item, source.read(item))
        out.writestr("xl/media/padding.bin", b"\0" * (64 * 1024**2))
    with pytest.raises(FileUnreadable, match="zip bomb"):
        open_source(bomb)
    with pytest.raises(FileUnreadable, match="unpacks to .* over the limit"):
        open_source(bomb, ParseOptions(max_xlsx_uncompressed_bytes=10 * 1024**2))


def test_xlsx_resume(tmp_path):
    rows = [["question", "answer"]] + [[f"q{n}", f"a{n}"] for n in range(1, 11)]
    path = write_workbook(tmp_path, {"S": rows})
    parsed = read_all(path, ParseOptions(chunk_rows=3), start_after_row=6)
    assert [pair.question for pair in parsed.pairs] == ["q7", "q8", "q9", "q10"]
    assert parsed.last_source_rows == [9, 10]
