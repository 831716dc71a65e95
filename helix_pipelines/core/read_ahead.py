"""Run an iterator in a thread of its own, a bounded number of items ahead of its consumer.

An import parses the next batch while the database writes the current one: the parser's
numpy, pyarrow and hashlib work and the wait on PostgreSQL release the GIL, so on two cores the
two overlap. The hand-off holds at most ``depth`` finished items, so memory stays bounded
whatever the file's size, and a slow writer simply makes the reader wait.

Failure either side ends both: an exception raised by the iterator is re-raised to the consumer
at the point it would have received the next item (with its own traceback); a consumer that
stops early (an exception, a ``break``) tells the reader to stop and waits for it, so no thread
outlives the ``with`` block. The reader checks between items only: an item being produced is
finished first, which a bounded item size keeps short.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

# How often a reader blocked on a full queue looks whether the consumer has gone.
_POLL_S = 0.05


class _Done:
    """Put by the reader after the last item."""


class _Raised:
    """Put by the reader when the iterator raised."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ReadAhead(Generic[T]):
    """``with ReadAhead(items, depth=2) as ahead: for item in ahead: ...``"""

    def __init__(self, items: Iterable[T], *, depth: int = 2, name: str = "read-ahead") -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self.depth = depth

    def __enter__(self) -> ReadAhead[T]:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if isinstance(item, _Done):
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item

    @property
    def waiting(self) -> int:
        """Finished items not yet taken by the consumer (at most ``depth``)."""
        return self._queue.qsize()

    def close(self) -> None:
        """Stop the reader and wait for it (it finishes the item it is producing)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()  # a reader blocked on a full queue sees the stop within _POLL_S
        self._drain()  # release the items nobody will take

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    def _produce(self) -> None:
        iterator = iter(self._items)
        try:
            for item in iterator:
                if not self._put(item) or self._stop.is_set():
                    return
            self._put(_Done())
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, who re-raises
            self._put(_Raised(error))
        finally:
            close = getattr(iterator, "close", None)
            if callable(close):
                close()  # a generator's own finally blocks run here, in the reader's thread

    def _put(self, item: object) -> bool:
        """False once the consumer has stopped."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False
