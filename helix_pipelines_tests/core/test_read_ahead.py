"""The bounded hand-off between an import's reader thread and its writer."""

from __future__ import annotations

import threading
import time

import pytest

from helix_pipelines.core.read_ahead import ReadAhead

DEADLINE_S = 10.0


class Counted:
    """Items 0..n-1, counting how many the reader has produced."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at = n, fail_at
        self.produced = 0
        self.closed = threading.Event()

    def __iter__(self):
        try:
            for item in range(self.n):
                if item == self.fail_at:
                    raise ValueError(f"faq.csv row {item + 1}: cannot be read")
                self.produced += 1
                yield item
        finally:
            self.closed.set()


def wait_until(condition) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.01)


def test_items_arrive_in_order_and_all():
    with ReadAhead(Counted(1000), depth=3) as ahead:
        assert list(ahead) == list(range(1000))


def test_the_reader_stays_at_most_depth_items_ahead():
    items = Counted(100)
    with ReadAhead(items, depth=2) as ahead:
        for taken, _ in enumerate(ahead, start=1):
            # The reader fills the queue and then blocks on the item after it.
            wait_until(lambda: ahead.waiting == 2 or items.produced == items.n)
            assert items.produced - taken <= 2 + 1  # queued, plus the one it is holding
            if taken == 10:
                break
    assert items.produced <= 10 + 2 + 1


def test_a_reader_error_reaches_the_writer_with_its_message():
    items = Counted(50, fail_at=7)
    received = []
    failure = pytest.raises(ValueError, match=r"faq\.csv row 8: cannot be read")
    with failure, ReadAhead(items, depth=2) as ahead:
        received.extend(ahead)
    assert received == list(range(7))  # every item before the failure was handed over


def test_a_writer_failure_stops_the_reader():
    items = Counted(10**9)
    before = {thread.name for thread in threading.enumerate()}
    failure = pytest.raises(RuntimeError, match="database gone")
    with failure, ReadAhead(items, depth=2, name="reader-under-test") as ahead:
        for item in ahead:
            if item == 3:
                raise RuntimeError("database gone")
    assert items.closed.is_set()  # the reader's own clean-up ran
    assert items.produced <= 4 + 2 + 1
    names = {thread.name for thread in threading.enumerate()}
    assert "reader-under-test" not in names - before


def test_closing_before_reading_anything_ends_the_reader():
    items = Counted(10**9)
    ahead = ReadAhead(items, depth=1)
    with ahead:
        wait_until(lambda: ahead.waiting == 1)
    assert items.closed.is_set()
    assert items.produced <= 2


def test_depth_must_be_positive():
    with pytest.raises(ValueError):
        ReadAhead([], depth=0)
