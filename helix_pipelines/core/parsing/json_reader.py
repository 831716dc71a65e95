"""A JSON document: an array of objects, or an object holding one such array.

Read incrementally with ijson (the C yajl2 backend) so only one record is in memory at a time.
Every byte reaches yajl through JsonGuard (json_guard.py), which quotes long numbers and cuts
containers nested too deep, the two inputs that break yajl or ijson's C code.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import ijson

from helix_pipelines.core.parsing.base import (
    INVALID_TEXT,
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
from helix_pipelines.core.parsing.json_guard import (
    MAX_DEPTH,
    TOO_LONG_MARKER,
    JsonGuard,
    holds_marker,
)
from helix_pipelines.core.parsing.records import (
    PLAN_SAMPLE_RECORDS,
    RecordReader,
    dump,
    keys_of,
    plan_from_keys,
)

_BLOCK_CHARS = 64 * 1024
_LONE_SURROGATES = re.compile("[\ud800-\udfff]")
TOO_DEEP_MESSAGE = f"the record is nested more than {MAX_DEPTH} levels deep"
_JSON_ERRORS = (ijson.JSONError, ijson.IncompleteJSONError, UnicodeDecodeError)


class _Utf8Transcoder:
    """Feeds ijson guarded UTF-8 bytes whatever the file's encoding. Undecodable bytes become
    U+FFFD (yajl would reject the whole document) and ``had_bad_bytes`` is set, so the records
    holding U+FFFD are reported as invalid_text."""

    def __init__(self, text: io.TextIOWrapper, max_string_bytes: int) -> None:
        self._text = text
        self.had_bad_bytes = False
        self.guard = JsonGuard(max_string_bytes=max_string_bytes)
        self._done = False

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson probes with read(0) to learn whether it gets bytes
            return b""
        size = size if size is not None and size > 0 else _BLOCK_CHARS
        while not self._done:  # a block inside a skipped container guards to nothing
            chunk = self._text.read(size)
            if not chunk:
                self._done = True
                return self.guard.finish()
            if guarded := self.guard.feed(self._utf8(chunk)):
                return guarded
        return b""

    def _utf8(self, chunk: str) -> bytes:
        try:
            return chunk.encode("utf-8")
        except UnicodeEncodeError:
            self.had_bad_bytes = True
            return _LONE_SURROGATES.sub("\ufffd", chunk).encode("utf-8")

    def close(self) -> None:
        self._text.close()


class JsonSource(SourceFile):
    def __init__(
        self, path: Path, display_name: str, options: ParseOptions, sniffed: Sniffed
    ) -> None:
        super().__init__(path, display_name, options)
        self.encoding = sniffed.encoding or "utf-8"
        self._streams: list[_Utf8Transcoder] = []
        self.prefix = self._find_records()
        sample = self._sample_records()
        keys = keys_of(sample)
        if sample and not keys:
            raise self.unreadable("the JSON array holds no objects (records must be objects)")
        self.reader: RecordReader | None = None
        plan_notes: list[str] = []
        columns: dict[str, str] = {}
        ignored: list[str] = []
        if keys:
            try:
                plan = plan_from_keys(keys, options)
            except HeaderProblem as exc:
                raise self.unreadable(str(exc)) from exc
            self.reader = RecordReader(plan, keys, self.checker)
            plan_notes, columns, ignored = plan.notes, plan.columns, plan.ignored
        else:
            plan_notes = ["the JSON array is empty"]
        if self.prefix != "item":
            plan_notes = [
                f"records read from the array under key {self.prefix[:-5]!r}",
                *plan_notes,
            ]
        self.summary = ParseSummary(
            file_format="json",
            encoding=self.encoding,
            delimiter=None,
            columns=dict(columns),
            ignored_columns=list(ignored),
            notes=list(plan_notes),
        )
        if self.reader is not None:
            self.reader.filled = self.summary.filled_from_other_columns

    def _sample_records(self) -> list[object]:
        """The first records, to choose the columns. A document damaged further on still gets
        its header from what could be read; the damage is reported by chunks()."""
        sample: list[object] = []
        try:
            sample.extend(itertools.islice(self._items(), PLAN_SAMPLE_RECORDS))
        except _JSON_ERRORS as exc:
            if not sample:
                raise self.unreadable(f"not valid JSON ({_short(exc)})") from exc
        finally:
            self.close()
        return sample

    def _open(self) -> _Utf8Transcoder:
        text = io.TextIOWrapper(self.path.open("rb"), encoding=self.encoding, errors=DECODE_ERRORS)
        # Strings within one block are never cut, so the limit is at least a block's bytes.
        limit = max(4 * self.options.max_field_chars, 4 * _BLOCK_CHARS)
        stream = _Utf8Transcoder(text, limit)
        self._streams.append(stream)
        return stream

    def _find_records(self) -> str:
        """ijson prefix of the records: ``item`` for a top-level array, ``key.item`` for the
        first array of objects inside a top-level object."""
        events = ijson.parse(self._open())
        try:
            _, event, _ = next(events)
            if event == "start_array":
                return "item"
            if event != "start_map":
                raise self.unreadable("the JSON document is not an array or an object")
            return self._array_inside_object(events)
        except StopIteration:
            raise self.unreadable("the JSON document is empty") from None
        except _JSON_ERRORS as exc:
            raise self.unreadable(f"not valid JSON ({_short(exc)})") from exc
        finally:
            self.close()

    def _array_inside_object(self, events) -> str:
        previous = None
        for prefix, event, _ in events:
            if previous is not None and previous[1] == "start_array" and event == "start_map":
                return previous[0] + ".item"
            if "." not in prefix:
                previous = (prefix, event)
        raise self.unreadable("the JSON object holds no array of objects")

    def _items(self) -> Iterator[object]:
        return ijson.items(self._open(), self.prefix, use_float=True)

    def _rows(self, start_after_row: int) -> Iterator[Pair | RowError | int]:
        if self.reader is None:
            return
        items = self._items()
        stream = self._streams[-1]
        source_row = 0
        try:
            for source_row, record in enumerate(items, start=1):
                if source_row <= start_after_row:
                    continue
                if stream.guard.cut_deep and holds_marker(record):
                    yield self.reader.malformed(source_row, TOO_DEEP_MESSAGE, record)
                    continue
                if stream.guard.cut_long and holds_marker(record, TOO_LONG_MARKER):
                    yield self._too_long(source_row, record)
                    continue
                row = self.reader.read(source_row, record)
                if stream.had_bad_bytes and type(row) is Pair and _has_replacement(row):
                    row = RowError(
                        source_row,
                        INVALID_TEXT,
                        "the record holds bytes that are not valid text",
                        raw_excerpt(row.question + " | " + row.answer),
                    )
                yield row
        except _JSON_ERRORS as exc:
            raise self.unreadable(
                f"the JSON is damaged or truncated after record {source_row:,} ({_short(exc)})"
            ) from exc
        finally:
            self.close()

    def _too_long(self, source_row: int, record: object) -> RowError:
        message = f"a value is longer than {self.options.max_field_chars:,} characters"
        return RowError(source_row, TOO_LONG, message, raw_excerpt(lambda: dump(record)))

    def close(self) -> None:
        while self._streams:
            self._streams.pop().close()


def _has_replacement(pair: Pair) -> bool:
    return "\ufffd" in pair.question or "\ufffd" in pair.answer or "\ufffd" in (pair.category or "")


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
