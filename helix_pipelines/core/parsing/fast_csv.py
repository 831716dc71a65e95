"""Fast path for UTF-8 delimited files: pyarrow parses, whole batches are cleaned and keyed.

The exact reader (``DelimitedSource._exact_rows``, the stdlib csv module) stays the reference.
This path emits a record only when its result is provably the exact reader's; at the first
record it cannot vouch for, or on any pyarrow error, it hands over to the exact reader, which
resumes after the last record emitted. The rules are in docs/parsing.md ("Fast path").
"""

from __future__ import annotations

import atexit
import codecs
import contextlib
import csv
import functools
import hashlib
import io
import os
import re
import sys
import threading
import unicodedata
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from helix_pipelines.core.normalize import (
    CONTROL_BYTES,
    HASH_SEPARATOR_BYTES,
    QUESTION_KEY_BYTES,
    hash_key,
)
from helix_pipelines.core.parsing.base import Pair, RowError
from helix_pipelines.core.parsing.pair_block import (
    QUESTION_KEY,
    PairBlock,
    value_offsets,
    value_sizes,
)

if TYPE_CHECKING:
    from helix_pipelines.core.parsing.csv_reader import DelimitedSource

# A record must fit in one block; a bigger one makes pyarrow fail and the exact reader take over
# (a record a pair can come from, answers being at most 32,000 characters, fits). Each batch
# costs some fixed work (a few dozen numpy and Arrow calls): at 512 KiB blocks (about 500 rows
# of bench/parse.py's file) the parse was 15-25% slower than at 1 MiB. Memory is set by the
# blocks read ahead, which _PacedFile bounds: peak RSS of a 300,000-row parse 136-140 MB,
# against 139-141 MB at 512 KiB with pyarrow's own read-ahead of 32 blocks.
BLOCK_BYTES = 1024 * 1024
READ_AHEAD_BLOCKS = 4  # blocks read ahead of the batches taken: pyarrow parses ahead in them
FAST_ENCODINGS = ("utf-8", "utf-8-sig")
_CONTROL_PATTERN = r"[\x00-\x08\x0b\x0c\x0e-\x1f]"  # CONTROL_CHARS as an RE2 class
# skipinitialspace: the csv module skips spaces before a quote and then reads a quoted field.
_SPACES_THEN_QUOTE = '^ +"'
_SPACE_RUNS = re.compile(b"  +")
_SPACE = 32
_TWO_SPACES = 0x2020  # two space bytes read as one 16-bit number, in either byte order


# Both sets below scan every code point when computed (0.1-0.25 s); the constants are theirs
# for the Unicode version named, which a test checks. Another version computes them afresh.
_UNICODE_VERSION = "14.0.0"
# Exactly what ``str.strip()`` removes, for ``utf8_trim``.
_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# The characters of ``_may_compose_with_previous()`` of combining class 0 (the others are
# excluded by their class already).
_COMPOSING_STARTERS = frozenset(
    "\u09be\u09d7\u0b3e\u0b56\u0b57\u0bbe\u0bd7\u0cc2\u0cd5\u0cd6\u0d3e\u0d57\u0dcf\u0ddf"
    "\u0fb5\u0fb7\u102e\u1b35\U00011127\U0001133e\U00011357\U000114b0\U000114ba\U000114bd"
    "\U000115af\U00011930"
    + "".join(map(chr, range(0x1161, 0x1176)))  # Hangul vowel jamo
    + "".join(map(chr, range(0x11A8, 0x11C3)))  # Hangul trailing jamo
)


@functools.cache
def _python_whitespace() -> str:
    if unicodedata.unidata_version == _UNICODE_VERSION:
        return _WHITESPACE
    return _computed_whitespace()


def _computed_whitespace() -> str:
    return "".join(chr(code) for code in range(sys.maxunicode + 1) if chr(code).isspace())


@functools.cache
def _composing_starters() -> frozenset[str]:
    if unicodedata.unidata_version == _UNICODE_VERSION:
        return _COMPOSING_STARTERS
    return frozenset(
        char for char in _may_compose_with_previous() if not unicodedata.combining(char)
    )


def _may_compose_with_previous() -> frozenset[str]:
    """Characters that can combine with the one before them under NFKC (a superset of
    NFKC_Quick_Check=Maybe): second halves of two-character canonical decompositions, and the
    Hangul vowel and trailing jamo."""
    seconds = {chr(code) for code in range(0x1161, 0x1176)} | {
        chr(code) for code in range(0x11A8, 0x11C3)
    }
    for code in range(sys.maxunicode + 1):
        parts = unicodedata.decomposition(chr(code)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            seconds.add(chr(int(parts[1], 16)))
    return frozenset(seconds)


@functools.cache
def _foldable_in_place(char: str) -> bool:
    """True when ``hash_key`` treats ``char`` like the batch code does: NFKC leaves every
    string of such characters (and ASCII) unchanged (quick check Yes), it is no whitespace, and
    case folding maps it to same-length, already folded, non-space text (so byte offsets hold)."""
    folded = char.casefold()
    return (
        unicodedata.combining(char) == 0
        and unicodedata.normalize("NFKC", char) == char
        and char not in _composing_starters()
        and not char.isspace()
        and len(folded.encode("utf-8")) == len(char.encode("utf-8"))
        and all(part.casefold() == part and not part.isspace() for part in folded)
    )


def fast_rows(
    source: DelimitedSource, start_after_row: int
) -> Iterator[list[Pair | RowError | int] | Pair | RowError | int]:
    """The records after ``start_after_row``, as the exact reader yields them: a list per
    pyarrow batch, then one by one from the exact reader if it has to take over."""
    resume_after = start_after_row
    reader = _open_reader(source)
    if reader is not None:
        batches = _BatchChecker(source, _RecordLocator(source))
        first_row = 1
        try:
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
                rows, unsure_at = batches.rows(batch, first_row, start_after_row)
                if rows:
                    yield rows
                if unsure_at is not None:
                    resume_after = max(start_after_row, first_row + unsure_at - 1)
                    break
                first_row += batch.num_rows
                resume_after = max(start_after_row, first_row - 1)
        except (pa.ArrowException, UnicodeDecodeError):
            pass  # resume_after still names the last record emitted
        finally:
            reader.close()
            batches.locator.close()
    yield from source._exact_rows(resume_after)


def _open_reader(source: DelimitedSource) -> _PacedReader | None:
    offset = source.data_offset
    if offset is None or source.encoding not in FAST_ENCODINGS or source.plan.width < 2:
        return None
    try:
        stream = _PacedFile(source.path, offset, READ_AHEAD_BLOCKS)
    except OSError:
        return None
    try:
        if stream.peek(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8:
            stream.close()  # pyarrow would drop a BOM here, the csv module keeps it as text
            return None
        names = [f"f{index}" for index in range(source.plan.width)]
        with stream.waited_on():
            reader = _open_csv(stream, source, names)
    except (pa.ArrowException, OSError):
        stream.close()
        return None
    return _PacedReader(reader, stream)


def _open_csv(stream: _PacedFile, source: DelimitedSource, names: list[str]):
    return pa_csv.open_csv(
        stream,
        read_options=pa_csv.ReadOptions(column_names=names, block_size=BLOCK_BYTES),
        parse_options=pa_csv.ParseOptions(
            delimiter=source.delimiter,
            quote_char='"',
            double_quote=True,
            escape_char=False,
            newlines_in_values=True,
            ignore_empty_lines=False,  # an empty line is a record: it keeps its number
        ),
        convert_options=pa_csv.ConvertOptions(
            column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False
        ),
    )


class _PacedFile:
    """The file from ``offset`` as pyarrow's CSV reader reads it, ``ahead`` blocks ahead of
    the batches taken from the reader.

    The streaming reader's background thread reads up to 32 blocks ahead of the parser
    (kDefaultBackgroundMaxQ), whatever the consumer's pace: a parse waiting on the database
    held 16 MB of 512 KiB blocks, and blocks large enough to keep the per-batch costs small
    would hold twice that. How many blocks a batch needs is pyarrow's business (its own block,
    the next one for the end of its last record, more when a record spans a block's end): a
    consumer left waiting for a batch for ``STARVED_S`` lets the next read go ahead, so the
    pacing can delay the reader, never stop it. Blocks are read into Arrow's pool
    (``read_buffer``), which reuses their memory.

    The reads run on pyarrow's I/O thread, in Python: one still running when the interpreter
    exits aborts the process. So ``close`` ends them first: the next read finds the end of
    the file, and the background reading stops there."""

    STARVED_S = 0.01  # a consumer waits that long for a batch pyarrow is still parsing, rarely
    CLOSE_WAIT_S = 5.0

    def __init__(self, path, offset: int, ahead: int) -> None:
        self._file = pa.OSFile(str(path))
        self._file.seek(offset)
        self._pid = os.getpid()
        self._turn = threading.Condition()
        self._ahead = ahead
        self._reads = 0
        self._taken = 0
        self._consumer_waiting = False
        self._closing = False
        self._reading = False
        self._ended = False  # the reader was given the end of the file, or an error
        self.closed = False
        self.held_back = threading.Event()  # a read has waited for a batch to be taken

    def peek(self, size: int) -> bytes:
        start = self._file.tell()
        head = self._file.read(size)
        self._file.seek(start)
        return head

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._file.tell()

    def read(self, size: int = -1) -> pa.Buffer:
        with self._turn:
            if not self._may_read():
                self.held_back.set()
                self._wait_for_turn()
            if self._closing:
                self._ended = True
                self._turn.notify_all()
                return pa.py_buffer(b"")
            self._reads += 1
            self._reading = True
        data = None
        try:
            data = self._file.read_buffer(None if size < 0 else size)
            return data
        finally:
            with self._turn:
                self._reading = False
                self._ended = data is None or data.size == 0
                self._turn.notify_all()

    def _wait_for_turn(self) -> None:
        """Until a batch is taken; or, if the consumer has been waiting for one ``STARVED_S``,
        now: that batch needs this block."""
        while not self._may_read():
            if not self._consumer_waiting:
                self._turn.wait()
            elif not self._turn.wait_for(self._consumer_served, timeout=self.STARVED_S):
                return

    def _may_read(self) -> bool:
        return self._closing or self._reads < self._taken + self._ahead

    def _consumer_served(self) -> bool:
        return self._may_read() or not self._consumer_waiting

    @contextlib.contextmanager
    def waited_on(self) -> Iterator[None]:
        """Around a call that waits for the reader: opening it (pyarrow parses the first
        batch there) or taking a batch."""
        with self._turn:
            self._consumer_waiting = True
            self._turn.notify_all()
        try:
            yield
        finally:
            with self._turn:
                self._consumer_waiting = False
                self._turn.notify_all()

    def taken(self) -> None:
        with self._turn:
            self._taken += 1
            self._turn.notify_all()

    def close(self) -> None:
        with self._turn:
            self._closing = True
            self._turn.notify_all()
            # The background reading began: it goes on to the end (in this process: a forked
            # child has the file, not pyarrow's threads).
            if self._reads and os.getpid() == self._pid:
                self._turn.wait_for(self._stopped, timeout=self.CLOSE_WAIT_S)
        if not self.closed:
            self.closed = True
            self._file.close()

    def _stopped(self) -> bool:
        return self._ended and not self._reading


# At exit, pyarrow's threads must hold nothing of Python's: a read left waiting keeps its I/O
# thread, and with it the process, from ending (pyarrow joins its threads then), and a block it
# still holds is a Python object its thread must take the GIL to free, which aborts the process
# once the interpreter is finalising. So every reader still open is closed, and dropped, first.
_OPEN_READERS: weakref.WeakSet[_PacedReader] = weakref.WeakSet()


@atexit.register
def _close_open_readers() -> None:
    for reader in list(_OPEN_READERS):
        reader.close(drain=True)


class _PacedReader:
    """pyarrow's streaming reader over a ``_PacedFile``: each batch taken lets one more block
    be read."""

    def __init__(self, reader: pa.RecordBatchReader, stream: _PacedFile) -> None:
        self._reader: pa.RecordBatchReader | None = reader
        self._stream = stream
        _OPEN_READERS.add(self)

    def read_next_batch(self) -> pa.RecordBatch:
        try:
            with self._stream.waited_on():
                return self._reader.read_next_batch()
        finally:
            self._stream.taken()

    def __iter__(self):
        while True:
            try:
                yield self.read_next_batch()
            except StopIteration:
                return

    def close(self, *, drain: bool = False) -> None:
        """``drain``: also take the batches pyarrow still makes of the blocks it read, so its
        threads are done with them (and with the read that ended them) when this returns."""
        self._stream.close()  # first: it ends the background reads
        if self._reader is None:
            return
        if drain:
            with contextlib.suppress(StopIteration, pa.ArrowException):
                while True:
                    self._reader.read_next_batch()
        self._reader.close()
        self._reader = None  # its blocks freed here, in this thread


class _BatchChecker:
    """Applies the row rules of ``RowChecker`` to a whole record batch at once."""

    def __init__(self, source: DelimitedSource, locator: _RecordLocator) -> None:
        self.source = source
        self.locator = locator
        options = source.options
        self.max_field = max(options.max_field_chars, 1)
        self.line_limit = source.line_limit
        self.max_question = options.max_question_chars
        self.max_answer = options.max_answer_chars
        plan = source.plan
        self.indexes = (plan.question_index, plan.answer_index, plan.category_index)
        self.scratch = (_Scratch(), _Scratch())  # the questions' and the answers' keys

    def rows(
        self, batch: pa.RecordBatch, first_row: int, start_after_row: int
    ) -> tuple[list[Pair | RowError | int], int | None]:
        """The results for the batch's records after ``start_after_row`` up to the first one
        the exact reader must handle, and that one's position in the batch (or None)."""
        columns = batch.columns
        unsure_at = self._first_unsure_record(columns)
        end = batch.num_rows if unsure_at is None else unsure_at
        skip = min(max(start_after_row - first_row + 1, 0), end)
        if skip == end:
            return [], unsure_at
        columns = [column.slice(skip, end - skip) for column in columns]
        rows, records = self._results(columns, first_row + skip)
        if records < end - skip:
            return rows, skip + records
        return rows, unsure_at

    def _first_unsure_record(self, columns: list[pa.Array]) -> int | None:
        """Records whose field boundaries or sizes the csv module could see differently: a
        field over the field limit, a quote after leading spaces, a line the exact reader
        would cut, a null."""
        unsure = np.zeros(len(columns[0]), dtype=bool)
        if self._may_be_too_long(columns):
            widest = np.zeros(len(columns[0]), dtype=np.int64)
            for column in columns:
                lengths = _numpy(pc.utf8_length(column))
                unsure |= lengths > self.max_field
                widest += lengths
            # Raw record length is at most twice its text (doubled quotes) plus quotes and
            # delimiters: below the line limit, no physical line was cut.
            unsure |= 2 * widest + 3 * len(columns) + 2 > self.line_limit
        for column in columns:
            if column.null_count:
                unsure |= _numpy(column.is_null())
            if _starts_with_space(column).any():
                quoted = pc.match_substring_regex(column, _SPACES_THEN_QUOTE)
                unsure |= _numpy(quoted)
        hits = np.flatnonzero(unsure)
        return int(hits[0]) if len(hits) else None

    def _may_be_too_long(self, columns: list[pa.Array]) -> bool:
        """The length rules in bytes, which bound characters from above: only when one of
        them fails are the characters counted."""
        sizes = [value_sizes(column) for column in columns]
        widest = np.add.reduce(sizes, dtype=np.int64)
        return bool(
            max(size.max(initial=0) for size in sizes) > self.max_field
            or (2 * widest + 3 * len(columns) + 2 > self.line_limit).any()
        )

    def _results(self, columns: list[pa.Array], first_row: int) -> tuple[list, int]:
        """The results in order, stopping short before a record only the exact reader can
        judge, and how many records they cover. Plain pairs stay columns (PairBlock): no
        Python object is made for them here."""
        question_index, answer_index, category_index = self.indexes
        questions = _clean(columns[question_index], self.scratch[0])
        answers = _clean(columns[answer_index], self.scratch[1])
        fine = _fits(questions, self.max_question) & _fits(answers, self.max_answer)
        question_keys = _KeyColumn(questions, self.scratch[0])
        digests, keys = _digests(question_keys, _KeyColumn(answers, self.scratch[1]), fine)
        rows = np.arange(first_row, first_row + len(fine), dtype=np.int64)
        categories = self._categories(columns, category_index)
        block = PairBlock(rows, questions, answers, categories, digests, keys)
        if fine.all():  # the usual batch
            return [block], len(block)
        out: list[PairBlock | Pair | RowError | int] = []
        start = 0
        for position in np.flatnonzero(~fine).tolist():
            if position > start:
                out.append(block[start:position])
            result = self._exact_check(columns, position, first_row)
            if result is None:
                return out, position
            out.append(result)
            start = position + 1
        if start < len(block):
            out.append(block[start:])
        return out, len(block)

    def _categories(self, columns: list[pa.Array], index: int | None) -> pa.Array:
        """Cleaned categories; an empty one means none."""
        if index is None:
            empty = np.zeros(len(columns[0]) + 1, dtype=np.int32)
            buffers = [None, pa.py_buffer(empty), pa.py_buffer(b"")]
            return pa.Array.from_buffers(pa.string(), len(columns[0]), buffers)
        return _clean(columns[index], self.scratch[0])

    def _exact_check(
        self, columns: list[pa.Array], position: int, first_row: int
    ) -> Pair | RowError | int | None:
        """A record that is not a plain pair goes through the exact reader's own check; None
        when only the exact reader can give its result."""
        fields = [column[position].as_py() for column in columns]
        source_row = first_row + position
        if not any(field.startswith(" ") for field in fields):
            return self.source._check(source_row, fields, may_have_controls=True)
        # A row error's raw excerpt joins the fields as the csv module read them, which skipped
        # the leading spaces of unquoted fields: pyarrow's fields cannot say which, the
        # record's own bytes can.
        exact_fields = self.locator.csv_fields(source_row, fields)
        if exact_fields is not None:
            return self.source._check(source_row, exact_fields, may_have_controls=True)
        result = self.source._check(source_row, fields, may_have_controls=True)
        return None if type(result) is RowError else result


class _RecordLocator:
    """Finds a record's bytes in the file, for the rare record whose result depends on how it
    was written, so the fast path can read it with the csv module and go on instead of handing
    the rest of the file to the exact reader.

    Records end at a line break outside quotes: with doubled quotes as the only escape, that is
    a line break after an even number of quotes since the record's start. The scan starts from
    the last record it located, so a file is scanned at most once. A quote inside an unquoted
    field breaks the parity rule; ``csv_fields`` then finds fields that differ from pyarrow's
    and the caller hands over to the exact reader as before.

    The record ends of a whole window are kept between calls, so locating the next record
    (every hundredth one in a file with 1% of such rows) reads no byte twice."""

    WINDOW = 1 << 18  # bytes scanned at once; doubled while a window holds no record end

    def __init__(self, source: DelimitedSource) -> None:
        self.source = source
        self.row, self.offset = 1, source.data_offset or 0  # record `row` begins at `offset`
        self._ends: list[int] = []  # record ends found ahead; `_ends[_next]` ends record `row`
        self._next = 0
        self._scanned_to = self.offset  # a record boundary: the next scan starts there
        self._fd: int | None = None
        self._size = 0

    def csv_fields(self, row: int, arrow_fields: list[str]) -> list[str] | None:
        """The record's fields as the csv module reads them, or None when the located bytes
        are not provably that record (pyarrow's fields, leading spaces aside, must agree)."""
        raw = self._record_bytes(row)
        if raw is None:
            return None
        try:
            text = raw.decode("utf-8")
            lines = io.StringIO(text, newline="")  # line breaks as the exact reader sees them
            records = list(
                csv.reader(lines, delimiter=self.source.delimiter, skipinitialspace=True)
            )
        except (UnicodeDecodeError, csv.Error):
            return None
        if len(records) != 1 or len(records[0]) != len(arrow_fields):
            return None
        fields = records[0]
        if all(
            mine == theirs or (mine == theirs.lstrip(" ") and theirs.startswith(" "))
            for mine, theirs in zip(fields, arrow_fields, strict=True)
        ):
            return fields
        return None

    def _record_bytes(self, row: int) -> bytes | None:
        if row < self.row or not self._opened():
            return None
        while self.row < row:
            if self._next == len(self._ends) and not self._scan():
                self.row, self.offset = row, self._size
                break
            step = min(row - self.row, len(self._ends) - self._next)
            self._next += step
            self.row += step
            self.offset = self._ends[self._next - 1]
        found = self._next < len(self._ends) or self._scan()
        end = self._ends[self._next] if found else self._size
        return self._read(self.offset, end - self.offset).rstrip(b"\r\n")

    def _scan(self) -> bool:
        """Finds the record ends of the next window; False at the end of the file."""
        self._ends, self._next = self._ends_from(self._scanned_to), 0
        if self._ends:
            self._scanned_to = self._ends[-1]
        return bool(self._ends)

    def _ends_from(self, offset: int) -> list[int]:
        """Offsets just after each record that ends in the first window from ``offset`` (a
        record boundary) holding one. A window at a time: memory stays flat."""
        window = self.WINDOW
        while offset < self._size:
            chunk = np.frombuffer(self._read(offset, window), dtype=np.uint8)
            if not len(chunk):
                break  # the file got shorter than it was
            at_end = offset + len(chunk) >= self._size
            breaks = np.flatnonzero((chunk == 10) | (chunk == 13))
            if not at_end and len(breaks) and breaks[-1] == len(chunk) - 1:
                breaks = breaks[:-1]  # a CR at the window's edge may begin a CRLF
            quotes = np.flatnonzero(chunk == 34)
            breaks = breaks[np.searchsorted(quotes, breaks) % 2 == 0]
            # CR LF is one line break: its CR is no record end of its own.
            following = chunk[np.minimum(breaks + 1, len(chunk) - 1)]
            ends = breaks[~((chunk[breaks] == 13) & (following == 10))] + 1
            if len(ends):
                return (ends + offset).tolist()
            if at_end:
                break
            window = min(2 * window, 1 << 24)
        return []

    def _read(self, offset: int, size: int) -> bytes:
        assert self._fd is not None
        return os.pread(self._fd, size, offset)

    def _opened(self) -> bool:
        if self._fd is None:
            try:
                self._fd = os.open(self.source.path, os.O_RDONLY)
                self._size = os.fstat(self._fd).st_size
            except OSError:
                self.close()
                return False
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _layout(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of all values back to back, and the ``n + 1`` value offsets into them."""
    buffers = column.buffers()
    offsets = value_offsets(column)
    start, end = int(offsets[0]), int(offsets[-1])
    if buffers[2] is None or end == start:
        return np.empty(0, dtype=np.uint8), offsets - start
    data = np.frombuffer(buffers[2], dtype=np.uint8, count=end - start, offset=start)
    return data, offsets - start


def _fits(column: pa.Array, limit: int) -> np.ndarray:
    """Values that are not empty and at most ``limit`` characters long; characters are only
    counted when some value has more bytes than that."""
    sizes = value_sizes(column)
    fits = sizes > 0
    if sizes.max(initial=0) > limit:
        fits &= _numpy(pc.utf8_length(column)) <= limit
    return fits


def _starts_with_space(column: pa.Array) -> np.ndarray:
    data, offsets = _layout(column)
    if not len(data):
        return np.zeros(len(column), dtype=bool)
    starts = offsets[:-1]
    return (offsets[1:] > starts) & (data[np.minimum(starts, len(data) - 1)] == _SPACE)


def _clean(column: pa.Array, scratch: _Scratch | None = None) -> pa.Array:
    """``clean_text`` on every value. The CR and control-character passes run only when the
    batch's bytes hold such a character."""
    data, _ = _layout(column)
    if _holds_only_tabs_and_line_feeds(data, scratch or _Scratch()):
        low_bytes = b""  # the usual batch: answers hold line feeds, and nothing else below a space
    else:
        low_bytes = data[data < _SPACE].tobytes()
    if b"\r" in low_bytes:
        column = pc.replace_substring(column, "\r\n", "\n")
        column = pc.replace_substring(column, "\r", "\n")
    if len(low_bytes.translate(None, CONTROL_BYTES)) != len(low_bytes):
        column = pc.replace_substring_regex(column, _CONTROL_PATTERN, "")
    if not _may_need_trim(column):
        return column  # the usual batch: trimming would copy it unchanged
    return pc.utf8_trim(column, _python_whitespace())


def _holds_only_tabs_and_line_feeds(data: np.ndarray, scratch: _Scratch) -> bool:
    """Whether every byte below a space is a TAB or an LF: three counted comparisons, where
    gathering the bytes below a space (boolean indexing) took twice as long."""
    mask = scratch.array("mask", len(data), np.bool_)
    below_space = np.count_nonzero(np.less(data, _SPACE, out=mask))
    if not below_space:
        return True
    line_feeds = np.count_nonzero(np.equal(data, 10, out=mask))
    return below_space == line_feeds or below_space == line_feeds + np.count_nonzero(
        np.equal(data, 9, out=mask)
    )


def _may_need_trim(column: pa.Array) -> bool:
    """Whether a value may begin or end with whitespace: its first byte begins a whitespace
    character's encoding, or its last byte ends one."""
    data, offsets = _layout(column)
    filled = offsets[1:] > offsets[:-1]
    if not filled.any():
        return False
    begins, ends = _whitespace_byte_tables()
    return bool(
        begins[data[offsets[:-1][filled]]].any() or ends[data[offsets[1:][filled] - 1]].any()
    )


@functools.cache
def _whitespace_byte_tables() -> tuple[np.ndarray, np.ndarray]:
    """For each byte value: whether it begins, and whether it ends, the UTF-8 encoding of a
    character ``str.strip()`` removes."""
    begins, ends = np.zeros(256, dtype=bool), np.zeros(256, dtype=bool)
    for char in _python_whitespace():
        encoded = char.encode("utf-8")
        begins[encoded[0]] = ends[encoded[-1]] = True
    return begins, ends


class _KeyColumn:
    """``hash_key`` of every cleaned value of a column, done on the batch's bytes: ASCII
    lowered, TAB and LF made spaces, other characters folded in place where that is exact
    (``_foldable_in_place``). Cleaned values hold no CR, VT, FF or other C0 control and have
    no whitespace at either end, so ``hash_key``'s special cases and final strip never apply
    to them. Rows still holding a run of spaces, or a character only ``hash_key`` itself can
    handle, are ``special``: ``key(row)`` gives their exact key, the batch blob does not."""

    def __init__(self, column: pa.Array, scratch: _Scratch | None = None) -> None:
        self.column = column
        scratch = scratch or _Scratch()
        data, offsets = _layout(pc.ascii_lower(column))
        # Cleaning left TAB and LF as the only bytes below a space: both become one.
        # (np.maximum with an array: with a scalar it takes 15 times longer.)
        keys = np.maximum(data, scratch.spaces(len(data)))
        self.own_key_rows = _fold_non_ascii(keys, offsets, scratch)
        self.keys, self.offsets = keys, offsets
        self.space_run_rows = _rows_with_space_runs(keys, offsets, scratch)
        self.special = self.own_key_rows | self.space_run_rows

    def key(self, row: int) -> bytes:
        if row in self.own_key_rows:
            return hash_key(self.column[row].as_py())
        key = self.keys[int(self.offsets[row]) : int(self.offsets[row + 1])].tobytes()
        return _SPACE_RUNS.sub(b" ", key) if row in self.space_run_rows else key


class _Scratch:
    """Arrays kept from one batch to the next for the batch-sized results of numpy steps. A
    new array a step would hand glibc's heap back (these are a few hundred KB: mmap, or a trim
    of the heap's top) and fault its pages in again at the next batch: 125,000 page faults per
    300,000 rows of bench/parse.py's file, a fifth of the parse's CPU."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        self._spaces = np.empty(0, dtype=np.uint8)

    def array(self, name: str, size: int, dtype: type) -> np.ndarray:
        """``size`` elements of the array called ``name`` (their values are left over)."""
        kept = self._arrays.get(name)
        if kept is None or len(kept) < size:
            kept = self._arrays[name] = np.empty(size + size // 8, dtype=dtype)
        return kept[:size]

    def spaces(self, size: int) -> np.ndarray:
        """``size`` space bytes, for reading only: filled once, not once per batch (that would
        be one more pass over memory the size of the batch's text)."""
        if len(self._spaces) < size:
            self._spaces = np.full(size + size // 8, _SPACE, dtype=np.uint8)
        return self._spaces[:size]


def _rows_with_space_runs(keys: np.ndarray, offsets: np.ndarray, scratch: _Scratch) -> set[int]:
    """Rows holding two spaces in a row. The byte pairs at even and then at odd offsets are
    compared as 16-bit numbers: half a batch-sized array for both, no shifted copy."""
    rows: set[int] = set()
    for first in (0, 1):
        pairs = (len(keys) - first) // 2
        if pairs < 1:
            continue
        as_pairs = keys[first : first + 2 * pairs].view(np.uint16)
        doubled = np.equal(as_pairs, _TWO_SPACES, out=scratch.array("pairs", pairs, np.bool_))
        if doubled.any():  # rare: no pass to find no position otherwise
            at = 2 * np.flatnonzero(doubled) + first
            rows.update((np.searchsorted(offsets, at, side="right") - 1).tolist())
    return rows


def _fold_non_ascii(keys: np.ndarray, offsets: np.ndarray, scratch: _Scratch) -> set[int]:
    """Case-folds in place the characters ``_foldable_in_place`` allows, writing over their
    bytes; returns the rows holding any other non-ASCII character (they need ``hash_key``).
    Characters are found as code points computed from their bytes: no decoding, no pass over
    the bytes per character."""
    leads = np.greater_equal(keys, 0xC0, out=scratch.array("mask", len(keys), np.bool_))
    _skip_latin_lowercase(keys, leads, scratch)
    starts = np.flatnonzero(leads)  # lead bytes (the input is valid UTF-8)
    if not len(starts):
        return set()
    code_points = _code_points(keys, starts)
    own_key_rows: set[int] = set()
    for code in np.flatnonzero(np.bincount(code_points)).tolist():
        char = chr(code)
        if _foldable_in_place(char) and (folded := char.casefold()) == char:
            continue
        at = starts[code_points == code]
        if not _foldable_in_place(char):
            own_key_rows.update((np.searchsorted(offsets, at, side="right") - 1).tolist())
            continue
        for index, byte in enumerate(folded.encode("utf-8")):
            keys[at + index] = byte
    return own_key_rows


def _skip_latin_lowercase(keys: np.ndarray, leads: np.ndarray, scratch: _Scratch) -> None:
    """Clears the lead bytes of U+00E0-U+00FF (à to ÿ, and ÷): the most common non-ASCII
    characters of Western European text, each foldable in place and folded already. Finding
    each lead byte's position costs about 20 ns (a mispredicted branch); three comparisons
    over the batch cost less than that once there are a few such characters a row."""
    if len(keys) < 2:
        return
    latin = np.equal(keys[:-1], 0xC3, out=scratch.array("latin", len(keys) - 1, np.bool_))
    lower = np.greater_equal(keys[1:], 0xA0, out=scratch.array("lower", len(keys) - 1, np.bool_))
    latin &= lower
    leads[:-1] ^= latin  # each of them is a lead byte


def _code_points(data: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The code point of the UTF-8 sequence beginning at each of ``starts``. Most are two bytes
    long (Latin, Greek, Cyrillic...): the longer ones are decoded apart."""
    last = len(data) - 1
    lead = data[starts]
    code = (lead & 0x1F).astype(np.int32) << 6
    code |= data[np.minimum(starts + 1, last)] & 0x3F
    longer = np.flatnonzero(lead >= 0xE0)
    if len(longer):
        at, lead = starts[longer], lead[longer].astype(np.int32)
        more = [data[np.minimum(at + k, last)].astype(np.int32) & 0x3F for k in (1, 2, 3)]
        three = ((lead & 0x0F) << 12) | (more[0] << 6) | more[1]
        four = ((lead & 0x07) << 18) | (more[0] << 12) | (more[1] << 6) | more[2]
        code[longer] = np.where(lead < 0xF0, three, four)
    return code


def _numpy(array: pa.Array) -> np.ndarray:
    """An int32 or boolean array as numpy, nulls as 0 or False; ``to_numpy`` would import
    pandas (0.3 s or more, once per process)."""
    if array.null_count:
        array = pc.fill_null(array, False if array.type == pa.bool_() else 0)
    data = array.buffers()[1]
    if array.type == pa.bool_():
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
        return bits[array.offset : array.offset + len(array)].astype(bool)
    return np.frombuffer(data, dtype=np.int32, count=len(array), offset=array.offset * 4)


# Copying a hash object costs less than making one (OpenSSL 3 looks the algorithm up each time).
_EMPTY_SHA256 = hashlib.sha256()


def _digests(
    questions: _KeyColumn, answers: _KeyColumn, wanted: np.ndarray
) -> tuple[list[str | None], np.ndarray]:
    """``content_hash`` and ``question_key`` of every record: one SHA-256 a record over
    slices of the two columns' key bytes (a joined copy of them would be one more pass over
    memory the size of the batch's text), its state after the question and the separator read
    out on the way. Special rows are hashed again from their exact keys."""
    # Slices of memoryviews: no copy of each record's bytes before hashing them.
    question_keys, question_edges = memoryview(questions.keys), questions.offsets.tolist()
    answer_keys, answer_edges = memoryview(answers.keys), answers.offsets.tolist()
    separator, fresh = HASH_SEPARATOR_BYTES, _EMPTY_SHA256.copy
    digests: list[str | None] = []
    states: list[bytes] = []
    digest, state = digests.append, states.append
    edges = zip(question_edges, question_edges[1:], answer_edges, answer_edges[1:], strict=False)
    for question_start, question_end, answer_start, answer_end in edges:
        hashing = fresh()
        hashing.update(question_keys[question_start:question_end])
        hashing.update(separator)
        state(hashing.digest())
        hashing.update(answer_keys[answer_start:answer_end])
        digest(hashing.hexdigest())
    for row in questions.special | answers.special:
        if not wanted[row]:
            digests[row] = None
            continue
        hashing = hashlib.sha256(questions.key(row) + separator)
        states[row] = hashing.digest()
        hashing.update(answers.key(row))
        digests[row] = hashing.hexdigest()
    full = np.frombuffer(b"".join(states), dtype=np.uint8).reshape(-1, 32)
    keys = np.ascontiguousarray(full[:, :QUESTION_KEY_BYTES]).view(QUESTION_KEY).reshape(-1)
    return digests, keys
