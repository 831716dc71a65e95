"""Delimited text (CSV, TSV, semicolon or pipe separated): the hot path.

The exact reader: the stdlib csv module (C) parses a streaming TextIOWrapper and Python code
runs once per record. UTF-8 files take the fast path in fast_csv.py first, which hands over to
the exact reader wherever it cannot vouch for giving the same result.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
from collections.abc import Iterator
from pathlib import Path

from helix_pipelines.core.normalize import CONTROL_BYTES
from helix_pipelines.core.parsing.base import (
    MALFORMED_ROW,
    MISSING_QUESTION,
    TOO_LONG,
    Pair,
    ParseOptions,
    ParseSummary,
    RowError,
    SourceFile,
    raw_excerpt,
)
from helix_pipelines.core.parsing.detect import DECODE_ERRORS, Sniffed
from helix_pipelines.core.parsing.headers import (
    ColumnPlan,
    HeaderProblem,
    fill_empty,
    plan_columns,
)

DELIMITERS = (",", ";", "\t", "|")
QUOTE = '"'
# Encodings in which a control character is always a single byte below 0x20, so whole blocks
# of bytes can be checked at once instead of every field.
_ASCII_COMPATIBLE_FAMILIES = ("utf-8", "utf_8", "cp", "latin", "iso8859", "gb", "shift", "euc")
_READ_BLOCK = 256 * 1024


class DelimitedSource(SourceFile):
    # False forces the exact reader (tests and the benchmark compare the two).
    use_fast_path = True

    def __init__(
        self, path: Path, display_name: str, options: ParseOptions, sniffed: Sniffed
    ) -> None:
        super().__init__(path, display_name, options)
        self.encoding = sniffed.encoding or "utf-8"
        self.delimiter = choose_delimiter(sniffed, path.suffix.lower(), options)
        self._stream: io.TextIOWrapper | None = None
        self._pending: list[str] = []  # physical lines of the record being parsed
        self._control_spy: _ControlSpy | None = None
        self.line_limit = max(4 * options.max_field_chars, 1024**2)
        self.data_offset: int | None = None  # byte offset of the first data record
        self.plan = self._read_plan()
        self._width = self.plan.width
        self._question_index = self.plan.question_index
        self._answer_index = self.plan.answer_index
        self._category_index = self.plan.category_index
        self._check_texts = self.checker.check
        self.summary = ParseSummary(
            file_format="tsv" if self.delimiter == "\t" else "csv",
            encoding=self.encoding,
            delimiter=self.delimiter,
            columns=dict(self.plan.columns),
            ignored_columns=list(self.plan.ignored),
            notes=list(self.plan.notes),
        )

    # -- reading ------------------------------------------------------------------------------

    def _open(self) -> csv.reader:
        self.close()
        raw = self.path.open("rb", buffering=0)
        if _ascii_compatible(self.encoding):
            self._control_spy = _ControlSpy(raw)
            raw = self._control_spy
        else:
            self._control_spy = None
        buffered = io.BufferedReader(raw, _READ_BLOCK)
        self._stream = io.TextIOWrapper(
            buffered, encoding=self.encoding, errors=DECODE_ERRORS, newline=""
        )
        csv.field_size_limit(max(self.options.max_field_chars, 1))
        return self._reader()

    def _reader(self) -> csv.reader:
        """A csv reader going on from where the stream is (after a line over the limit, whose
        exception ended the previous reader's line generator)."""
        return csv.reader(
            self._physical_lines(self._stream), delimiter=self.delimiter, skipinitialspace=True
        )

    def _physical_lines(self, stream: io.TextIOWrapper) -> Iterator[str]:
        """Lines as the csv module wants them, remembered until their record is complete so a
        failed record can be skipped cleanly. A line reaching ``line_limit`` is never given to
        the csv module (its tail would read as a record of its own): _LineTooLong makes the
        whole record one row error."""
        readline = stream.readline
        limit = self.line_limit
        pending = self._pending
        while line := readline(limit):
            pending.append(line)
            if len(line) >= limit and not line.endswith(("\n", "\r")):
                raise _LineTooLong(f"a line is longer than {limit:,} characters")
            yield line

    def _read_plan(self) -> ColumnPlan:
        reader = self._open()
        try:
            header = _first_nonblank(reader)
        except csv.Error as exc:
            raise self.unreadable(f"the header row cannot be read ({exc})") from exc
        finally:
            self.close()
        if header is None:
            raise self.unreadable("no header row found")
        self.data_offset = self._offset_after(self._pending)
        try:
            return plan_columns(header, self.options.column_mapping)
        except HeaderProblem as exc:
            raise self.unreadable(str(exc)) from exc

    def _offset_after(self, lines: list[str]) -> int | None:
        """Bytes of the text read so far (blank records and the header), for UTF-8 only."""
        if self.encoding not in ("utf-8", "utf-8-sig"):
            return None
        try:
            size = len("".join(lines).encode("utf-8"))
        except UnicodeEncodeError:  # undecodable bytes: the exact reader reads this file
            return None
        return size + (len(codecs.BOM_UTF8) if self.encoding == "utf-8-sig" else 0)

    def _rows(self, start_after_row: int) -> Iterator[Pair | RowError | int]:
        if self.use_fast_path and self.data_offset is not None:
            from helix_pipelines.core.parsing.fast_csv import fast_rows  # imports pyarrow

            return fast_rows(self, start_after_row)
        return self._exact_rows(start_after_row)

    def _exact_rows(self, start_after_row: int) -> Iterator[Pair | RowError | int]:
        reader = self._open()
        _first_nonblank(reader)
        self._pending.clear()
        source_row = 0
        while True:
            try:
                for row in reader:
                    source_row += 1
                    self._pending.clear()
                    if source_row > start_after_row:
                        yield self._check(source_row, row)
                return
            except csv.Error as exc:
                source_row += 1
                error = self._skip_broken_record(source_row, exc)
                if isinstance(exc, _LineTooLong):
                    reader = self._reader()
                if source_row > start_after_row:
                    yield error

    def _check(
        self, source_row: int, row: list[str], may_have_controls: bool | None = None
    ) -> Pair | RowError | int:
        """Runs once per record: column positions are plain attributes, not lookups."""
        if len(row) != self._width:
            return self._wrong_width(source_row, row)
        if may_have_controls is None:
            spy = self._control_spy
            may_have_controls = spy is None or spy.saw_control
        question, answer = row[self._question_index], row[self._answer_index]
        if self.plan.fallbacks and (not question.strip() or not answer.strip()):
            question, answer = fill_empty(
                self.plan, question, answer, row.__getitem__, self.summary.filled_from_other_columns
            )
        result = self._check_texts(
            source_row,
            question,
            answer,
            row[self._category_index] if self._category_index is not None else None,
            lambda: self.delimiter.join(row),
            may_have_controls,
        )
        if type(result) is RowError and _blank_record(result, row):
            return source_row  # a record such as ",,," with every field empty
        return result

    def _wrong_width(self, source_row: int, row: list[str]) -> RowError | int:
        if not any(field.strip() for field in row):
            return source_row
        return RowError(
            source_row,
            MALFORMED_ROW,
            f"the record has {len(row)} fields, the header has {self.plan.width}",
            raw_excerpt(self.delimiter.join(row)),
        )

    def _skip_broken_record(self, source_row: int, exc: csv.Error) -> RowError:
        """After a csv error (a field over the size limit) drop the rest of that record: read
        on until the record's quotes balance, which is where a well-formed record ends."""
        lines = self._pending
        first_line = lines[0] if lines else ""
        quotes = sum(line.count(QUOTE) for line in lines)
        while (quotes % 2 or _cut_line(lines)) and self._stream is not None:
            line = self._stream.readline(self.line_limit)
            if not line:
                break
            lines[:] = [line]
            quotes += line.count(QUOTE)
        lines.clear()
        message = str(exc)
        if isinstance(exc, _LineTooLong):
            code, message = TOO_LONG, f"{message}; the record was skipped"
        elif "field larger than field limit" in message:
            code = TOO_LONG
            message = (
                f"a field is longer than {self.options.max_field_chars:,} characters; "
                "the record was skipped"
            )
        else:
            code = MALFORMED_ROW
            message = f"the record cannot be parsed: {message}"
        return RowError(source_row, code, message, raw_excerpt(first_line))

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class _LineTooLong(csv.Error):
    """A physical line over the line limit: its whole record becomes one too_long row."""


def _cut_line(lines: list[str]) -> bool:
    """The last line read was cut at the line limit (it does not end with a line break)."""
    return bool(lines) and not lines[-1].endswith(("\n", "\r"))


def _blank_record(error: RowError, row: list[str]) -> bool:
    return error.error_code == MISSING_QUESTION and not any(field.strip() for field in row)


def _first_nonblank(reader) -> list[str] | None:
    for row in reader:
        if any(field.strip() for field in row):
            return row
    return None


def _ascii_compatible(encoding: str) -> bool:
    name = encoding.lower().replace("-", "_")
    if name.startswith(("utf_16", "utf_32")):
        return False
    return name.startswith(_ASCII_COMPATIBLE_FAMILIES)


class _ControlSpy(io.RawIOBase):
    """Raw stream wrapper noting whether any control byte went past, so fields need the
    (comparatively slow) per-field control-character scan only in files that have some."""

    def __init__(self, raw: io.RawIOBase) -> None:
        self._raw = raw
        self.saw_control = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        count = self._raw.readinto(buffer)
        if count and not self.saw_control:
            block = bytes(memoryview(buffer)[:count])
            self.saw_control = len(block.translate(None, CONTROL_BYTES)) != count
        return count

    def close(self) -> None:
        self._raw.close()
        super().close()


def choose_delimiter(sniffed: Sniffed, extension: str, options: ParseOptions) -> str:
    """The candidate whose header names a question and an answer column; failing that, the one
    that splits the sample into the most consistent records. The extension breaks ties."""
    preferred = "\t" if extension in (".tsv", ".tab") else ","
    order = sorted(DELIMITERS, key=lambda candidate: candidate != preferred)
    scored = [
        (_score(sniffed, candidate, options), -index) for index, candidate in enumerate(order)
    ]
    best = max(range(len(order)), key=lambda index: scored[index])
    return order[best]


def _score(sniffed: Sniffed, delimiter: str, options: ParseOptions) -> tuple:
    records = _sample_records(sniffed, delimiter, options.max_field_chars)
    header = next((row for row in records if any(field.strip() for field in row)), None)
    if header is None:
        return (False, 0.0, 0)
    try:
        plan_columns(header, options.column_mapping)
        recognised = True
    except HeaderProblem:
        recognised = False
    body = [row for row in records[records.index(header) + 1 :] if row]
    consistent = sum(1 for row in body if len(row) == len(header)) / len(body) if body else 1.0
    return (recognised, consistent if len(header) > 1 else 0.0, len(header))


def _sample_records(sniffed: Sniffed, delimiter: str, field_limit: int) -> list[list[str]]:
    csv.field_size_limit(max(field_limit, 1))
    reader = csv.reader(
        io.StringIO(sniffed.sample, newline=""), delimiter=delimiter, skipinitialspace=True
    )
    records = []
    with contextlib.suppress(csv.Error):  # a field over the limit: score what was read
        records.extend(reader)
    if not sniffed.complete and len(records) > 1:
        records.pop()  # probably cut off by the end of the sample
    return records
