"""import_file(): stream one file into qa_pair in resumable, checkpointed batches."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

import psutil
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from helix_pipelines.core.adaptive import AdaptiveBatchSize
from helix_pipelines.core.arrow_memory import release_freed_memory_promptly
from helix_pipelines.core.errors import is_statement_timeout, is_transient
from helix_pipelines.core.parsing import (
    Chunk,
    FileUnreadable,
    Pair,
    ParseOptions,
    RowError,
    open_source,
)
from helix_pipelines.core.parsing.base import last_row_of, records_in
from helix_pipelines.core.parsing.pair_block import PairBlock
from helix_pipelines.core.read_ahead import ReadAhead
from helix_pipelines.core.retry import RetryBudget, retrying
from helix_pipelines.db import jobs
from helix_pipelines.db.batches import Batch, BatchOutcome, commit_batch
from helix_pipelines.db.dedupe import OwnBatches, look_up_early
from helix_pipelines.db.jobs import CheckpointMoved
from helix_pipelines.db.liveness import Heartbeat
from helix_pipelines.pipeline.file_store import readable_copy

# The row error recorded where a file that broke part-way stopped being readable.
FILE_DAMAGED = "file_damaged"

# Parsed batches waiting for the writer. One is enough: the writer (PostgreSQL) is the slower
# side, so the reader spends its spare time blocked on a full hand-off; a second waiting batch
# only held more memory (8 MB at 250,000 rows, no speed gained; bench/import.py).
READ_AHEAD_BATCHES = 1
# Characters of question and answer text in one batch, whatever its row count: three or four
# batches are alive between the reader and the writer, so this bounds the import's memory for
# files of long answers too (about 3,200 rows of the usual pair). With 4 Mi characters and two
# batches waiting, a 250,000-row import peaked 19 MB higher at the same speed; 3 Mi peaked 3-6
# MB higher than 2.5 Mi, again at the same speed, once the reader also looked batches up
# (db.dedupe: 500,000 rows, three interleaved runs; bench/import.py).
BATCH_TEXT_CHARS = 5 * 1024**2 // 2

# on_batch(status, seconds, rows), once per attempt (for metrics): success; retry (an attempt
# that failed and is tried again); error (the batch failed for good); timeout (over its deadline,
# split and retried smaller).
BatchObserver = Callable[[str, float, int], None]
# hook(point): test-only fault injection at named points of a batch's transaction.
Hook = Callable[[str], None]


@dataclass(frozen=True)
class ImportProgress:
    """After each committed batch: how far the reader has got in the file."""

    rows: int  # rows committed by this run
    bytes_read: int  # position of the reader in the file (read-ahead included)
    bytes_total: int
    resumed_at_byte: int = 0  # where this run's reading began to count (0 on a fresh start)


# on_progress(progress), after every committed batch (for progress bars and logs; the caller
# decides how often to report). Separate from on_batch, which counts attempts for metrics.
ProgressObserver = Callable[[ImportProgress], None]


class BatchFailed(RuntimeError):
    """A batch kept missing its deadline even at the smallest size."""


@dataclass(frozen=True)
class ImportOptions:
    parse: ParseOptions = field(default_factory=ParseOptions)
    keep_duplicates: bool = False
    batch_size: AdaptiveBatchSize | None = None  # None: default_batch_size()
    batch_deadline_s: float = 60.0
    max_timeouts_at_minimum: int = 3
    retry: RetryBudget = field(default_factory=RetryBudget)
    stale_after_s: float = 300.0
    # A source version retiring more than this share of the source waits for confirmation.
    max_retire_share: float = 0.5
    batch_text_chars: int = BATCH_TEXT_CHARS


@dataclass
class ImportReport:
    job: jobs.Job
    batches: int = 0
    batch_size: int = 0
    duration_s: float = 0.0
    rows_this_run: int = 0
    retries: int = 0
    summary: dict = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows_this_run / self.duration_s if self.duration_s > 0 else 0.0


log = logging.getLogger(__name__)

# Times one import_file() call reads on from its checkpoint after batches were lost (a database
# crash each time); beyond that it fails, resumable, like any import.
MAX_RESTARTS = 3


def import_file(
    engine: Engine,
    job_ref: str | uuid.UUID,
    *,
    run_id: str,
    options: ImportOptions | None = None,
    on_batch: BatchObserver | None = None,
    hook: Hook | None = None,
    on_progress: ProgressObserver | None = None,
) -> ImportReport:
    """Import (or resume) the job's file. Returns with the job finished, or raises: a raised
    import is left `processing` with its checkpoint, for a retry or recovery to resume."""
    options = options or ImportOptions()
    started = time.monotonic()
    release_freed_memory_promptly()
    job = jobs.start_job(engine, job_ref, run_id, stale_after_s=options.stale_after_s)
    report = ImportReport(job=job)
    if job.finished:
        return report
    heartbeat = Heartbeat(
        engine,
        run_id,
        kind="import",
        partition_key=job.partition_key,
        job_id=job.id,
        stale_after_s=options.stale_after_s,
        claimed=True,
    )
    with heartbeat:
        return _import(engine, job, report, run_id, options, (on_batch, on_progress), hook, started)


def _import(engine, job, report, run_id, options, observers, hook, started) -> ImportReport:
    # Wherever the copy is kept (pipeline.file_store): a local path, or a spooled local copy.
    with readable_copy(engine, job.source_path) as local_path:
        for restart in range(MAX_RESTARTS + 1):
            try:
                return _import_from(engine, job, report, run_id, options, observers, hook,
                                    started, local_path)  # fmt: skip
            except CheckpointMoved as moved:
                if restart == MAX_RESTARTS:
                    raise
                log.warning("%s: reading on from the checkpoint: %s", job.source_name, moved)
                job = jobs.get_job(engine, job.id)
        raise AssertionError("unreachable")


def _import_from(engine, job, report, run_id, options, observers, hook, started, local_path):
    try:
        source = open_source(local_path, options.parse, display_name=job.source_name)
    except FileUnreadable as exc:
        report.job = jobs.fail_job(engine, job.id, str(exc))
        return report
    writer = _BatchWriter(engine, job, run_id, options, observers[0], hook)
    try:
        with source:
            if not _write_all(engine, job, report, source, writer, observers[1], local_path):
                return report
        jobs.set_format(engine, job.id, source.summary.file_format, report.summary)
        report.job = jobs.finish_job(
            engine, job.id, run_id, max_retire_share=options.max_retire_share, hook=hook,
            written_through=writer.last_row,
        )  # fmt: skip
    finally:
        _count(report, writer)  # also the work of a pass that stopped (CheckpointMoved)
    report.duration_s = time.monotonic() - started
    return report


def _write_all(engine, job, report, source, writer, on_progress, local_path) -> bool:
    """Every batch of the file after the checkpoint; False when the file turned out unreadable
    from its first record (the job failed)."""
    jobs.set_format(engine, job.id, source.summary.file_format, source.summary.as_dict())
    writer.reading = FilePosition(str(local_path), on_progress, source.summary)
    batches = _Batches(
        source.chunks(start_after_row=job.last_source_row),
        writer.sizer,
        job.last_source_row,
        text_budget=writer.options.batch_text_chars,
    )
    # The reader parses the next batches (and looks their contents up) while this thread
    # writes; leaving the block (also by an exception) stops the reader before the file is
    # closed.
    options = writer.options
    read = (
        batches
        if options.keep_duplicates
        else _looked_up_early(engine, batches, timeout_s=options.batch_deadline_s)
    )
    with ReadAhead(read, depth=READ_AHEAD_BATCHES, name="import-reader") as ahead:
        for batch in ahead:
            writer.write(batch)
    if batches.damage is not None:
        if job.last_source_row == 0 and not batches.read_any:
            report.job = jobs.fail_job(engine, job.id, str(batches.damage))
            return False
        # Broken part-way: what was read stays; the damage is a row error where it begins.
        writer.write(_damage_batch(batches.next_row, batches.damage))
    else:
        writer.reading.read_to_end(writer.rows)
    report.summary = source.summary.as_dict()
    return True


def _looked_up_early(
    engine: Engine, batches: Iterable[Batch], *, timeout_s: float
) -> Iterator[Batch]:
    """Each batch with its contents looked up in the knowledge base (db.dedupe), in the
    reader's thread while the writer commits the batch before. A lookup that fails is left to
    the writer, which looks up under the dedupe lock as it would anyway."""
    for batch in batches:
        if len(batch.pairs):
            try:
                early = look_up_early(engine, batch.pairs.content_hashes, timeout_s=timeout_s)
                batch = replace(batch, early=early)
            except SQLAlchemyError as exc:
                log.debug("early lookup of rows %d-%d failed: %s", batch.first_source_row,
                          batch.last_source_row, exc)  # fmt: skip
        yield batch


def _count(report: ImportReport, writer: _BatchWriter) -> None:
    report.batches += writer.batches
    report.retries += writer.retries
    report.rows_this_run += writer.rows
    report.batch_size = writer.sizer.current


def _damage_batch(row: int, exc: FileUnreadable) -> Batch:
    message = f"the file is damaged here: reading stopped after {row - 1} records ({exc})"
    error = RowError(
        source_row=row, error_code=FILE_DAMAGED, message=message[:2000], raw_excerpt=""
    )
    return Batch([], [error], row, row)


def default_batch_size() -> AdaptiveBatchSize:
    """Adaptive from 5,000 rows (what suits COPY), capped at 10,000: beyond that a batch gains
    little throughput (bench/import.py) and its rows in memory would grow with the file."""
    return AdaptiveBatchSize(initial=5000, maximum=10_000)


class _BatchWriter:
    def __init__(self, engine, job, run_id, options: ImportOptions, on_batch, hook):
        self.engine, self.job_id, self.run_id = engine, job.id, run_id
        self.last_row = job.last_source_row  # committed through, as far as this writer knows
        self.options = options
        self.sizer = options.batch_size or default_batch_size()
        self.on_batch = on_batch or (lambda status, seconds, rows: None)
        self.hook = hook
        self.batches = self.rows = self.retries = 0
        self._timeouts_at_minimum = 0
        self.reading: FilePosition | None = None
        self.own = OwnBatches()  # for the early lookups of the batches after

    def write(self, batch: Batch) -> None:
        queue_ = [batch]
        while queue_:
            part = queue_.pop(0)
            try:
                self._commit_with_retries(part)
            except Exception as exc:
                if not is_statement_timeout(exc):
                    raise
                queue_[0:0] = self._split_after_timeout(part, exc)

    def _commit_with_retries(self, batch: Batch) -> BatchOutcome:
        began, rows = time.monotonic(), batch.rows

        # Not `batch` itself: tenacity's Retrying sits in a reference cycle, and a batch held
        # by its callback waited for the cyclic collector; a dozen dead batches were alive at
        # once (bench/import.py's peak RSS).
        def note_retry(error, attempt, wait_s):
            self.retries += 1
            self.on_batch("retry", time.monotonic() - began, rows)

        def retryable(exc):
            return is_transient(exc) and not is_statement_timeout(exc)

        try:
            return self._commit(batch, retryable, note_retry, began)
        except Exception as exc:
            if not is_statement_timeout(exc):
                self.on_batch("error", time.monotonic() - began, batch.rows)
            raise

    def _commit(self, batch: Batch, retryable, note_retry, began: float) -> BatchOutcome:
        for attempt in retrying(self.options.retry, retry_if=retryable, on_retry=note_retry):
            with attempt:
                began = time.monotonic()
                outcome = commit_batch(
                    self.engine,
                    self.job_id,
                    self.run_id,
                    batch,
                    keep_duplicates=self.options.keep_duplicates,
                    statement_timeout_s=self.options.batch_deadline_s,
                    hook=self.hook,
                    checkpoint_extra=self._position(batch),
                    own=self.own,
                )
        seconds = time.monotonic() - began
        self.sizer.record(batch.rows, seconds)
        self.batches += 1
        self.rows += batch.rows
        self.last_row = batch.last_source_row
        self.on_batch("success", seconds, batch.rows)
        if self.reading is not None:
            self.reading.report(self.rows)
        return outcome

    def _position(self, batch: Batch) -> dict | None:
        return self.reading.checkpoint(batch.last_source_row) if self.reading else None

    def _split_after_timeout(self, batch: Batch, exc: BaseException) -> list[Batch]:
        self.on_batch("timeout", self.options.batch_deadline_s, batch.rows)
        self._timeouts_at_minimum += batch.rows <= self.sizer.minimum
        if batch.rows <= 1 or self._timeouts_at_minimum >= self.options.max_timeouts_at_minimum:
            raise BatchFailed(
                f"rows {batch.first_source_row}-{batch.last_source_row} kept exceeding the "
                f"batch deadline of {self.options.batch_deadline_s:g}s"
            ) from exc
        self.sizer.shrink()
        return list(batch.split())


class _Batches:
    """Cut the parser's chunks into batches of exactly `sizer.current` rows, or fewer when
    their text would exceed BATCH_TEXT_CHARS (read afresh for each batch, so the adaptive size
    applies however large the parser's chunks are; batches already waiting for the writer keep
    the size they were cut at). Remembers the first row not yet handed out, so damage met while
    reading is reported exactly there. Iterated in the reader's thread (ReadAhead): its
    attributes are read once the iteration has ended."""

    def __init__(self, chunks: Iterator[Chunk], sizer: AdaptiveBatchSize, after_row: int, *,
                 text_budget: int = BATCH_TEXT_CHARS):  # fmt: skip
        self.chunks, self.sizer, self.text_budget = chunks, sizer, text_budget
        self.next_row = after_row + 1
        self.read_any = False
        self.damage: FileUnreadable | None = None

    def __iter__(self) -> Iterator[Batch]:
        pending: list = []  # the records not yet handed out, as the chunks hold them
        count, last = 0, self.next_row - 1
        try:
            for chunk in self.chunks:
                self.read_any = True
                pending += chunk.items
                count += chunk.records
                last = chunk.last_source_row
                budget = _rows_within(self.text_budget, chunk)
                while count >= (size := min(self.sizer.current, budget)):
                    taken, pending = _take_records(pending, size)
                    count -= size
                    yield self._cut(taken, last_row_of(taken[-1]))
        except FileUnreadable as exc:
            self.damage = exc  # the rows read before it are still handed out below
        if last >= self.next_row:
            yield self._cut(pending, last)

    def _cut(self, items: list, last: int) -> Batch:
        batch = _batch_of(items, self.next_row, last)
        self.next_row = last + 1
        return batch


def _rows_within(text_budget: int, chunk: Chunk) -> int:
    """How many rows like the chunk's pairs hold ``text_budget`` characters (bytes of UTF-8,
    for pairs kept as columns)."""
    pairs = chars = 0
    for item in chunk.items:
        if type(item) is Pair:
            pairs, chars = pairs + 1, chars + len(item.question) + len(item.answer)
        elif type(item) is not RowError:
            pairs, chars = pairs + len(item), chars + item.text_bytes()
    return max(1, text_budget * pairs // chars) if chars else text_budget


def _take_records(items: list, wanted: int) -> tuple[list, list]:
    """The first ``wanted`` records of ``items`` and the rest; a PairBlock may be cut."""
    taken: list = []
    for position, item in enumerate(items):
        size = records_in(item)
        if size > wanted:
            return [*taken, item[:wanted]], [item[wanted:], *items[position + 1 :]]
        taken.append(item)
        wanted -= size
        if wanted == 0:
            return taken, items[position + 1 :]
    return taken, []


def _batch_of(items: list, first: int, last: int) -> Batch:
    """Pairs stay in file order (the first of two equal pairs in a batch is the one kept)."""
    blocks, loose, errors = [], [], []
    for item in items:
        if type(item) is RowError:
            errors.append(item)
        elif type(item) is Pair:
            loose.append(item)
        else:
            if loose:
                blocks.append(PairBlock.of(loose))
                loose = []
            blocks.append(item)
    if loose:
        blocks.append(PairBlock.of(loose))
    return Batch(PairBlock.joined(blocks), errors, first, last)


class FilePosition:
    """How far into the file the import has got, without asking the parsers: the position of
    this process's open handle on the file, capped (for CSV, TSV and JSON Lines) by the records
    committed times the bytes a record takes in a sample of the file, since a reader that reads
    far ahead (pyarrow's CSV reader reads the whole file ahead) is not where the import is."""

    def __init__(self, path: str | None, on_progress: ProgressObserver | None, summary=None):
        self.path = os.path.realpath(path) if path else None
        self.on_progress = on_progress
        self.total = _size(path)
        self.per_record = _bytes_per_record(path, summary) if summary else None
        self.position = 0
        self._looked_at, self._handle = -HANDLE_LOOKUP_S, self.total

    def probe(self, last_source_row: int) -> int:
        position = self.total if self.path is None else self._handle_position()
        if self.per_record is not None:
            position = min(position, int(last_source_row * self.per_record))
        self.position = max(self.position, min(position, self.total))
        return self.position

    def _handle_position(self) -> int:
        # psutil reads every open file's link and offset (milliseconds): where the per-record
        # estimate moves the figure in between, once a second is enough.
        now = time.monotonic()
        if self.per_record is None or now - self._looked_at >= HANDLE_LOOKUP_S:
            self._looked_at, self._handle = now, self.total
            with contextlib.suppress(psutil.Error, OSError):
                found = [f.position for f in psutil.Process().open_files() if f.path == self.path]
                self._handle = max(found, default=self.total)
        return self._handle

    def checkpoint(self, last_source_row: int) -> dict:
        """Stored with each batch's checkpoint, for `status` and the CLI's bar."""
        return {"bytes_read": self.probe(last_source_row), "bytes_total": self.total}

    def report(self, rows: int) -> None:
        if self.on_progress is not None:
            self.on_progress(ImportProgress(rows, self.position, self.total))

    def read_to_end(self, rows: int) -> None:
        """Every record is committed: the whole file is read, whatever the estimate said (a
        file whose later records are longer than its first MiB's stays short of its size)."""
        self.position = self.total
        self.report(rows)


SAMPLE_BYTES = 1024**2
HANDLE_LOOKUP_S = 1.0


def _bytes_per_record(path: str | None, summary) -> float | None:
    """Bytes per record in the file's first MiB (None for other formats, wide encodings and
    files small enough that the estimate does not matter)."""
    line_formats = ("csv", "tsv", "jsonl")
    if not path or summary.file_format not in line_formats or summary.encoding is None:
        return None
    if "16" in summary.encoding or "32" in summary.encoding:
        return None
    with open(path, "rb") as handle:
        sample = handle.read(SAMPLE_BYTES)
    sample = sample[: sample.rfind(b"\n") + 1]
    if len(sample) < SAMPLE_BYTES // 2:
        return None
    text = sample.decode(summary.encoding, errors="replace")
    if summary.file_format == "jsonl":
        records = text.count("\n")
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=summary.delimiter or ",")
        records = sum(1 for _ in reader)
    return len(sample) / records if records else None


def _size(path: str | None) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0
