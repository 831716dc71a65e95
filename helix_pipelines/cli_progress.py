"""Progress bars of the command line (rich), on a terminal only: `--json` and pipes stay clean.

`import` runs the Dagster job in this process; a thread polls the job's row in PostgreSQL (the
reader's byte offset in `checkpoint_data`, the row counts, then the embedding counts), so the
Dagster layer knows nothing of the bars. `embed` feeds its bar from the pipeline's progress
callback."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from helix_pipelines.core.progress import Meter, format_bytes, format_duration
from helix_pipelines.db import jobs

if TYPE_CHECKING:  # rich itself loads with the first bar: `--json` and pipes never need it
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.table import Column

POLL_S = 0.25


def wanted(as_json: bool) -> bool:
    """Bars only for a person at a terminal."""
    return not as_json and sys.stdout.isatty() and sys.stderr.isatty()


def _progress(console: Console) -> Progress:
    """Name, percent and bar first, never dropped: on a narrow terminal only the detail is cut."""
    from rich.progress import BarColumn, Progress, TextColumn

    return Progress(
        TextColumn("{task.description}", table_column=_fixed(max_width=34)),
        TextColumn("{task.percentage:>5.1f}%", table_column=_fixed(min_width=6)),
        BarColumn(bar_width=30 if console.width >= 120 else 10),
        TextColumn("{task.fields[detail]}", table_column=_fixed(min_width=1, ratio=1)),
        console=console,
        transient=False,
        refresh_per_second=8,
        expand=True,
    )


def _fixed(**width) -> Column:
    from rich.table import Column

    return Column(no_wrap=True, overflow="ellipsis", **width)


@contextlib.contextmanager
def _terminal() -> Iterator[Console]:
    """A console on a copy of the terminal's stderr: while a step runs, Dagster's compute log
    capture points file descriptors 1 and 2 at its log files, which would swallow the bar."""
    from rich.console import Console

    sys.stderr.flush()
    with os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1) as stream:
        yield Console(file=stream)


@contextlib.contextmanager
def _logs_above_the_bar(console: Console) -> Iterator[None]:
    """Log lines written while a bar is live go through its console, above the bar."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    streams = [h.stream for h in handlers]
    for handler in handlers:
        handler.setStream(console.file)
    try:
        yield
    finally:
        for handler, stream in zip(handlers, streams, strict=True):
            handler.setStream(stream)


@contextlib.contextmanager
def watch_import(engine, job_id, name: str, *, enabled: bool, embed: bool) -> Iterator[None]:
    """While the body runs, show the import of `job_id` (then its embedding) as bars."""
    if not enabled:
        yield
        return
    stop = threading.Event()
    with _terminal() as console, _progress(console) as progress, _logs_above_the_bar(console):
        watcher = _ImportWatcher(engine, job_id, name, progress, embed)
        thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
            watcher.poll()  # the final counts


class _ImportWatcher:
    def __init__(self, engine, job_id, name: str, progress: Progress, embed: bool):
        self.engine, self.job_id, self.progress, self.embed = engine, job_id, progress, embed
        self.file_task = progress.add_task(f"{name[:30]} import", total=None, detail="starting")
        self.embed_task: TaskID | None = None
        self.file: Meter | None = None
        self.rows: Meter | None = None
        self.pairs: Meter | None = None

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(POLL_S):
            with contextlib.suppress(Exception):  # a bar must never break the import
                self.poll()

    def poll(self) -> None:
        job = jobs.get_job(self.engine, self.job_id)
        self._show_import(job)
        if self.embed and job.status not in ("pending", "processing"):
            self._show_embedding(jobs.embedding_counts(self.engine, self.job_id))

    def _show_import(self, job: jobs.Job) -> None:
        checkpoint = job.checkpoint_data or {}
        total = checkpoint.get("bytes_total") or 0
        done = checkpoint.get("bytes_read") or 0
        if job.status not in ("pending", "processing") and total:
            done = total
        if self.file is None:
            self.file = Meter(total or None, start=done)
            self.rows = Meter(None, start=job.rows_processed)
        file = self.file.update(done, total or None)
        rows = self.rows.update(job.rows_processed)
        detail = (
            f"{format_bytes(done)}/{format_bytes(total)} · {job.rows_processed:,} rows · "
            f"{job.pairs_created:,} pairs · {job.duplicates_skipped:,} dups · "
            f"{job.row_errors:,} errors · {rows.rate:,.0f} rows/s · "
            f"left {format_duration(file.eta_s) if job.status == 'processing' else '0s'}"
        )
        self.progress.update(self.file_task, completed=done, total=total or None, detail=detail)

    def _show_embedding(self, counts: dict) -> None:
        total = counts["completed"] + counts["failed"] + counts["pending"]
        done = total - counts["pending"]
        if self.embed_task is None:
            self.embed_task = self.progress.add_task("  embeddings", total=total, detail="")
            self.pairs = Meter(total, start=done)
        pairs = self.pairs.update(done, total)
        detail = (
            f"{done:,}/{total:,} pairs · {pairs.rate:,.0f} pairs/s · "
            f"left {format_duration(pairs.eta_s if counts['pending'] else 0)}"
        )
        self.progress.update(self.embed_task, completed=done, total=total or 1, detail=detail)


class EmbedBar:
    """The `embed` command's bar: pairs embedded of pending, rate, time left, why it waits."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = progress.add_task("embeddings", total=None, detail="starting")
        self.meter: Meter | None = None

    def __call__(self, update) -> None:
        if self.meter is None:
            self.meter = Meter(update.total)
        done = update.embedded + update.failed
        snap = self.meter.update(done, update.total)
        detail = (
            f"{done:,}/{update.total:,} pairs · {snap.rate:,.0f} pairs/s · "
            f"left {format_duration(snap.eta_s)}"
        )
        if update.waiting:
            detail += f" · waiting: {update.waiting}"
        self.progress.update(self.task, completed=done, total=update.total or 1, detail=detail)


@contextlib.contextmanager
def embed_bar(*, enabled: bool) -> Iterator[EmbedBar | None]:
    if not enabled:
        yield None
        return
    with _terminal() as console, _progress(console) as progress, _logs_above_the_bar(console):
        yield EmbedBar(progress)
