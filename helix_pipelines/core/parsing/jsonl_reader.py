"""JSON Lines: one object per physical line; every physical line has its own source_row."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

from helix_pipelines.core.parsing.base import (
    TOO_LONG,
    Pair,
    ParseOptions,
    ParseSummary,
    RowError,
    SourceFile,
    raw_excerpt,
)
from helix_pipelines.core.parsing.detect import DECODE_ERRORS, Sniffed
from helix_pipelines.core.parsing.headers import HeaderProblem
from helix_pipelines.core.parsing.json_guard import MAX_DEPTH, number_or_text, too_deep
from helix_pipelines.core.parsing.records import (
    PLAN_SAMPLE_RECORDS,
    RecordReader,
    keys_of,
    plan_from_keys,
)

TOO_DEEP_MESSAGE = f"the record is nested more than {MAX_DEPTH} levels deep"


class JsonLinesSource(SourceFile):
    def __init__(
        self, path: Path, display_name: str, options: ParseOptions, sniffed: Sniffed
    ) -> None:
        super().__init__(path, display_name, options)
        self.encoding = sniffed.encoding or "utf-8"
        self.line_limit = max(options.max_field_chars, 1024)
        self._stream: io.TextIOWrapper | None = None
        keys = keys_of(self._sample_records())
        if not keys:
            raise self.unreadable("no line holds a JSON object (expected one object per line)")
        try:
            plan = plan_from_keys(keys, options)
        except HeaderProblem as exc:
            raise self.unreadable(str(exc)) from exc
        self.reader = RecordReader(plan, keys, self.checker)
        self.summary = ParseSummary(
            file_format="jsonl",
            encoding=self.encoding,
            delimiter=None,
            columns=dict(plan.columns),
            ignored_columns=list(plan.ignored),
            notes=list(plan.notes),
        )
        self.reader.filled = self.summary.filled_from_other_columns

    def _lines(self) -> Iterator[tuple[str, bool]]:
        """(line, complete) per physical line; an over-long line is read in pieces and only
        its first piece is returned, with complete=False."""
        self.close()
        self._stream = io.TextIOWrapper(
            self.path.open("rb"), encoding=self.encoding, errors=DECODE_ERRORS
        )
        readline = self._stream.readline
        limit = self.line_limit
        while line := readline(limit):
            if len(line) < limit or line.endswith("\n"):
                yield line, True
                continue
            while (rest := readline(limit)) and not rest.endswith("\n"):
                pass  # drop the rest of the over-long line
            yield line, False

    def _sample_records(self) -> list[object]:
        records = []
        try:
            for line, complete in self._lines():
                if complete and line.strip():
                    try:
                        records.append(_loads(line))
                    except (ValueError, RecursionError):
                        continue
                if len(records) >= PLAN_SAMPLE_RECORDS:
                    break
        finally:
            self.close()
        return records

    def _rows(self, start_after_row: int) -> Iterator[Pair | RowError | int]:
        try:
            for source_row, (line, complete) in enumerate(self._lines(), start=1):
                if source_row > start_after_row:
                    yield self._row(source_row, line, complete)
        finally:
            self.close()

    def _row(self, source_row: int, line: str, complete: bool) -> Pair | RowError | int:
        if not complete:
            message = f"the line is longer than {self.line_limit:,} characters"
            return RowError(source_row, TOO_LONG, message, raw_excerpt(line))
        if not line.strip():
            return source_row
        if too_deep(line):
            return self.reader.malformed(source_row, TOO_DEEP_MESSAGE, line)
        try:
            record = _loads(line)
        except ValueError as exc:
            return self.reader.malformed(source_row, f"the line is not valid JSON ({exc})", line)
        except RecursionError:  # cannot happen below MAX_DEPTH; never let it out regardless
            return self.reader.malformed(source_row, TOO_DEEP_MESSAGE, line)
        return self.reader.read(source_row, record)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _loads(line: str) -> object:
    """json.loads, with numbers too long for exact int/float arithmetic kept as their text."""
    return json.loads(line, parse_int=number_or_text, parse_float=number_or_text)
