"""Each class of hostile input, parsed in a child process: the child survives (no crash, no
uncaught exception), the good records are kept, the bad record is reported, and the peak RSS
stays under RSS_BOUND_MB above the child's baseline (the bound stated in the README)."""

from __future__ import annotations

import json

import pytest

from helix_pipelines_tests.core.hostile_files import write_shared_strings_xlsx
from helix_pipelines_tests.core.reader_child import ReaderChild

RSS_BOUND_MB = 256
HUGE = "9" * 5000  # past both yajl's 64 bits and CPython's 4,300-digit int limit
HUGE_NUMBERS = [HUGE, "-" + HUGE, "9223372036854775808", "-9223372036854775809", "1." + HUGE,
                "1e" + HUGE, "12345678901234567890.5e-3"]  # fmt: skip
DEEP = 100_000


@pytest.fixture(scope="module")
def child():
    reader = ReaderChild()
    yield reader
    reader.close()


def survived(answer: dict) -> dict:
    assert answer["bug"] is None, answer["bug"]
    assert answer["rss_growth_mb"] < RSS_BOUND_MB, answer["rss_growth_mb"]
    return answer


def pairs_of(answer: dict) -> list[tuple]:
    return [tuple(pair) for pair in answer["pairs"]]


def codes_of(answer: dict) -> dict[int, str]:
    return {row: code for row, code, _, _ in answer["errors"]}


def good(n: int) -> dict:
    return {"question": f"q{n}", "answer": f"a{n}"}


@pytest.mark.parametrize("number", HUGE_NUMBERS, ids=range(len(HUGE_NUMBERS)))
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_huge_numbers_in_every_position(child, tmp_path, number, suffix):
    records = [
        '{"question": "q1", "answer": "a1"}',
        f'{{"question": {number}, "answer": "a2"}}',
        f'{{"question": "q3", "answer": {number}}}',
        f'{{"question": "q4", "answer": "a4", "category": {number}}}',
        f'{{"question": "q5", "answer": "a5", "ignored": {number}}}',
        f'{{"question": "q6", "answer": "a6", "ignored": [{number}, {{"x": {number}}}]}}',
        number,
        '{"question": "q8", "answer": "a8"}',
    ]
    path = tmp_path / f"numbers{suffix}"
    if suffix == ".json":
        path.write_text(f'{{"meta": {number}, "items": [{", ".join(records)}]}}')
    else:
        path.write_text("\n".join(records) + "\n")
    answer = survived(child.parse(path))
    pairs = {row: (q, a) for row, q, a in answer["pairs"]}
    assert pairs[1] == ("q1", "a1") and pairs[8] == ("q8", "a8")
    assert pairs[3] == ("q3", number)  # kept exactly, as its text
    assert {4, 5, 6} <= set(pairs)
    expected = {7: "malformed_row"}
    if len(number) <= 4000:  # max_question_chars
        assert pairs[2] == (number, "a2")
    else:
        expected[2] = "too_long"
    assert codes_of(answer) == expected


@pytest.mark.parametrize("opener", ["[", '{"a":'])
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_deep_nesting_is_one_row_error(child, tmp_path, opener, suffix):
    closer = "]" if opener == "[" else "}"
    deep = opener * DEEP + "1" + closer * DEEP
    records = [json.dumps(good(1)), f'{{"question": "q2", "answer": "a2", "x": {deep}}}']
    records += [f'{{"question": {deep}, "answer": "a3"}}', json.dumps(good(4))]
    path = tmp_path / f"deep{suffix}"
    joined = ", ".join(records) if suffix == ".json" else "\n".join(records)
    path.write_text(f"[{joined}]" if suffix == ".json" else joined + "\n")
    answer = survived(child.parse(path))
    assert [row for row, _, _ in answer["pairs"]] == [1, 4]
    assert codes_of(answer) == {2: "malformed_row", 3: "malformed_row"}
    assert all("nested more than" in message for _, _, message, _ in answer["errors"])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_nul_and_control_bytes_in_rejected_rows_are_escaped(child, tmp_path, suffix):
    # The bad record comes after the sniffed sample (a NUL there makes the file "binary").
    path = tmp_path / f"nul{suffix}"
    if suffix == ".csv":
        rows = b"".join(b"question %d,answer %d\n" % (n, n) for n in range(3000))
        path.write_bytes(b"question,answer\n" + rows + b"bad \x00\x1b\xff,\n")
    else:
        rows = b"".join(b'{"question":"q%d","answer":"a%d"}\n' % (n, n) for n in range(3000))
        path.write_bytes(rows + b'{"question":"\x00\x1b\xff",}\n')
    answer = survived(child.parse(path))
    [[row, _, _, excerpt]] = answer["errors"]
    assert row == 3001
    assert "\\x00" in excerpt and "\\x1b" in excerpt and "\x00" not in excerpt
    assert "\\udcff" in excerpt and excerpt.encode("utf-8")  # storable text
    assert not [char for char in excerpt if char < " " and char not in "\t\n"]


def test_an_over_long_physical_line_is_one_row_error(child, tmp_path):
    limit = 1000  # max_field_chars; the line limit is then 1 MiB
    long_line = ",".join(["x" * 900] * 1300)  # every field under the field limit
    path = tmp_path / "long.csv"
    path.write_text(f"question,answer\nq1,a1\n{long_line}\nq3,a3\nq4,a4\n")
    answer = survived(child.parse(path, max_field_chars=limit))
    assert pairs_of(answer) == [(1, "q1", "a1"), (3, "q3", "a3"), (4, "q4", "a4")]
    assert codes_of(answer) == {2: "too_long"}


def test_a_json_string_over_the_limit_is_one_row_error(child, tmp_path):
    path = tmp_path / "long.json"
    long_value = "x" * 3_000_000
    path.write_text(json.dumps([good(1), {"question": "q2", "answer": long_value}, good(3)]))
    answer = survived(child.parse(path, keep_pairs=False, max_field_chars=100_000))
    assert answer["pair_count"] == 2
    assert codes_of(answer) == {2: "too_long"}


def _good_rows(count: int):
    yield ("question", "answer")
    for n in range(count):
        yield (f"question {n}", f"answer {n}: lorem ipsum dolor sit amet")


def test_a_huge_shared_strings_table_is_refused_naming_the_limit(child, tmp_path):
    path = write_shared_strings_xlsx(
        tmp_path / "bloated.xlsx", _good_rows(3), (f"s{n}" for n in range(300_000))
    )
    answer = survived(child.parse(path, max_xlsx_shared_strings=200_000))
    assert "max_xlsx_shared_strings" in answer["unreadable"]
    assert "200,000" in answer["unreadable"]


def test_a_200000_row_workbook_reads_in_flat_memory(child, tmp_path):
    path = write_shared_strings_xlsx(tmp_path / "big.xlsx", _good_rows(200_000))
    answer = survived(child.parse(path, keep_pairs=False))
    assert answer["pair_count"] == 200_000 and not answer["errors"]
    assert answer["rss_growth_mb"] < 64
