"""How far a long piece of work has got: percent, rate and time left, and a steady cadence for
reporting it. Pure (no Dagster, no database); the clock is injectable so tests need no sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True)
class Snapshot:
    done: float
    total: float | None
    elapsed_s: float
    rate: float  # units of `done` per second, since the meter started
    eta_s: float | None  # None while unknown (no total, or nothing done yet)

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, max(0.0, self.done / self.total))

    @property
    def percent(self) -> float | None:
        fraction = self.fraction
        return None if fraction is None else round(100.0 * fraction, 1)


class Meter:
    """Measures progress towards `total` from `start` (work already done before this run, such
    as a resumed import's checkpoint, counts towards percent but not towards the rate)."""

    def __init__(self, total: float | None, *, start: float = 0.0, clock: Clock = time.monotonic):
        self.total, self.start, self.clock = total, start, clock
        self.began = clock()
        self.done = start

    def update(self, done: float, total: float | None = None) -> Snapshot:
        # Never backwards: a reader that seeks back (a zip) must not make the bar jump.
        self.done = max(self.done, done)
        if total is not None:
            self.total = total
        return self.snapshot()

    def snapshot(self) -> Snapshot:
        elapsed = max(0.0, self.clock() - self.began)
        gained = self.done - self.start
        rate = gained / elapsed if elapsed > 0 else 0.0
        eta = None
        if self.total is not None and rate > 0:
            eta = max(0.0, self.total - self.done) / rate
        return Snapshot(self.done, self.total, elapsed, rate, eta)


class Cadence:
    """`due()` is true at most once every `every_s` seconds (and the first time it is asked
    after `every_s`), so a fast loop reports steadily rather than every iteration."""

    def __init__(self, every_s: float, *, clock: Clock = time.monotonic):
        self.every_s, self.clock = every_s, clock
        self.last = clock()

    def due(self) -> bool:
        now = self.clock()
        if now - self.last < self.every_s:
            return False
        self.last = now
        return True


def format_duration(seconds: float | None) -> str:
    """`42s`, `3m 05s`, `2h 07m`; `?` when unknown."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def format_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def describe_import(file: Snapshot, rows: Snapshot) -> str:
    """One log line: percent of the file, rows, rows/s and time left."""
    percent = "?" if file.percent is None else f"{file.percent:.1f}"
    size = format_bytes(file.total) if file.total else "?"
    return (
        f"progress: {percent}% of the file ({format_bytes(file.done)} of {size}), "
        f"{int(rows.done):,} rows, {rows.rate:,.0f} rows/s, "
        f"time left {format_duration(file.eta_s)}"
    )


def describe_embedding(pairs: Snapshot, waiting: str | None = None) -> str:
    percent = "?" if pairs.percent is None else f"{pairs.percent:.1f}"
    total = "?" if pairs.total is None else f"{int(pairs.total):,}"
    line = (
        f"progress: {percent}% embedded ({int(pairs.done):,} of {total} pairs), "
        f"{pairs.rate:,.0f} pairs/s, time left {format_duration(pairs.eta_s)}"
    )
    return f"{line}; waiting: {waiting}" if waiting else line


def estimate(done: float, total: float | None, elapsed_s: float) -> Snapshot:
    """A snapshot from outside the work (as `status` sees a job): the rate so far since it
    started."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    eta = max(0.0, total - done) / rate if total is not None and rate > 0 else None
    return Snapshot(done, total, max(0.0, elapsed_s), rate, eta)
