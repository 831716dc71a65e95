"""Fuzz targets, one per reader, run by `make test` in bounded time (max_examples, a child
timeout). Every input is parsed in a child process (reader_child.py), so a crash is a failed
test, not a dead suite. An input that kills the child or raises anything but FileUnreadable is
copied to fuzz_regressions/, and every file there is replayed by test_kept_crashers.

Known crashers kept there: a 4,400-digit integer (segmentation fault in ijson's C backend),
2^63 (yajl "integer overflow"), deep nesting (RecursionError in JSONL, memory in JSON).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helix_pipelines_tests.core.hostile_files import write_shared_strings_xlsx
from helix_pipelines_tests.core.reader_child import ChildDied, ReaderChild

REGRESSIONS = Path(__file__).parent / "fuzz_regressions"
FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,  # the kept crashers are the memory; nothing written outside the tests
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

JSON_TOKENS = [b"[", b"]", b"{", b"}", b",", b":", b'"', b"\\", b"\\u", b"\\ud800", b"\\\"",
               b'"question"', b'"answer"', b'"category"', b'"x"', b'"text"', b"1", b"-",
               b"0.5", b"1e999", b"9" * 19, b"9" * 4400, b"-" + b"9" * 30, b"true", b"null",
               b"NaN", b" ", b"\n", b"\x00", b"\xff", b"\xc3", b"\xe2\x82\xac", b"[" * 200,
               b"]" * 200, b'{"a":' * 100]  # fmt: skip
CSV_TOKENS = [b"a", b"question", b",", b";", b"\t", b"|", b'"', b'""', b"\n", b"\r", b"\r\n",
              b" ", b"\x00", b"\x1b", b"\xff", b"\xc3\xa9", b"\xef\xbb\xbf", b"\\", b"=",
              b"x" * 300, b"9" * 40]  # fmt: skip
GOOD_RECORD = b'{"question": "q", "answer": "a"}'
NUMBERS = ["9" * 4400, "-" + "9" * 5000, "9223372036854775808", "-9223372036854775809",
           "18446744073709551616", "1e400", "-1e-400", "1." + "5" * 40, "0", "-0"]  # fmt: skip
KEYS = st.sampled_from(["question", "answer", "category", "Question", "x"]) | st.text(max_size=5)


class Raw(str):
    """JSON text written as is (numbers json.dumps cannot write, deep nesting)."""


def dump(value: object) -> str:
    if isinstance(value, Raw):
        return value
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(item) for item in value) + "]"
    return json.dumps(value)


def _nest(depth: int, opener: str) -> Raw:
    closer = "]" if opener == "[" else "}"
    return Raw(opener * depth + "1" + closer * depth)


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(NUMBERS).map(Raw)
    | st.builds(_nest, st.integers(1, 3000), st.sampled_from(["[", '{"a":']))
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4)
)
RECORDS = st.lists(
    st.fixed_dictionaries({"question": VALUES, "answer": VALUES}, optional={"x": VALUES}) | VALUES,
    max_size=6,
)


def damaged(text: str, data: st.DataObject) -> bytes:
    """The text, sometimes with a soup of tokens spliced in at one place."""
    raw = text.encode("utf-8", "surrogatepass")
    if not data.draw(st.booleans(), label="damage"):
        return raw
    at = data.draw(st.integers(0, len(raw)), label="at")
    return raw[:at] + data.draw(soup(JSON_TOKENS, 6), label="soup") + raw[at:]


def soup(tokens: list[bytes], max_size: int = 60) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(tokens) | st.binary(max_size=8), max_size=max_size).map(
        b"".join
    )


@pytest.fixture(scope="module")
def child():
    reader = ReaderChild(timeout_s=30)
    yield reader
    reader.close()


def must_survive(child: ReaderChild, path: Path) -> dict:
    """Parse in the child; on a crash or an uncaught exception keep the input as a regression
    file and fail."""
    try:
        answer = child.parse(path)
    except ChildDied:
        keep(path)
        raise
    if answer["bug"] is not None:
        keep(path)
        pytest.fail(f"{path.name} raised:\n{answer['bug']}")
    rows = [row for row, *_ in answer["pairs"]] + [row for row, *_ in answer["errors"]]
    assert len(rows) == len(set(rows)), "a source_row reported twice"
    return answer


def keep(path: Path) -> None:
    """One file per reader: hypothesis runs the shrunk failing example last, so that is the
    one left; rename it after what it shows before committing it."""
    REGRESSIONS.mkdir(exist_ok=True)
    shutil.copyfile(path, REGRESSIONS / f"new-crasher{path.suffix}")


@FUZZ
@given(records=RECORDS, wrapped=st.booleans(), data=st.data())
def test_json_reader(child, tmp_path, records, wrapped, data):
    document = [{"question": "q", "answer": "a"}, *records]
    text = dump({"meta": Raw(NUMBERS[0]), "items": document} if wrapped else document)
    path = tmp_path / "fuzz.json"
    path.write_bytes(damaged(text, data))
    must_survive(child, path)


@FUZZ
@given(records=RECORDS, data=st.data())
def test_jsonl_reader(child, tmp_path, records, data):
    text = "\n".join(dump(record) for record in records)
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(GOOD_RECORD + b"\n" + damaged(text, data) + b"\n" + GOOD_RECORD)
    must_survive(child, path)


@settings(FUZZ, max_examples=400)
@given(body=soup(CSV_TOKENS, 80))
def test_csv_reader(child, tmp_path, body):
    path = tmp_path / "fuzz.csv"
    path.write_bytes(b"question,answer,category\n" + body)
    must_survive(child, path)


XML_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


@settings(FUZZ, max_examples=150)
@given(
    cells=st.lists(st.tuples(XML_TEXT, XML_TEXT, XML_TEXT), max_size=8),
    cut=st.integers(min_value=0, max_value=4000),
    flip=st.binary(min_size=0, max_size=4),
)
def test_xlsx_reader(child, tmp_path, cells, cut, flip):
    """A workbook with arbitrary cell texts (control characters make invalid XML), then the
    same bytes damaged at one place."""
    path = write_shared_strings_xlsx(tmp_path / "fuzz.xlsx", [("question", "answer", "x"), *cells])
    must_survive(child, path)
    data = path.read_bytes()
    cut = min(cut, len(data))
    path.write_bytes(data[:cut] + flip + data[cut + len(flip) :])
    must_survive(child, path)


@pytest.mark.parametrize("kept", sorted(REGRESSIONS.iterdir()), ids=lambda path: path.name)
def test_kept_crashers(child, kept):
    answer = must_survive(child, kept)
    if kept.suffix != ".xlsx":  # a damaged workbook may be unreadable as a whole
        assert answer["pairs"], "the good records around the crasher are kept"
