"""Named JSON states shared by every process of a deployment.

The rate limiter and the circuit breaker keep their state as plain JSON dicts and change it only
through pure functions ``(state | None) -> (new_state, result)``. A ``StateStore`` applies such a
function atomically: in one process (``MemoryStateStore``) or across machines (a PostgreSQL row
locked with ``SELECT ... FOR UPDATE``). Because the state travels between machines, the times
stored in it are wall-clock seconds (``time.time``), never a process-local monotonic clock.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

State = dict[str, Any]
Transition = Callable[[State | None], tuple[State, T]]


class StateStore(Protocol):
    def transact(self, name: str, fn: Transition[T]) -> T:
        """Atomically read the JSON state `name` (None if absent), apply fn, persist the new
        state, return fn's result."""
        ...


class MemoryStateStore:
    """Thread-safe in-process store, for tests and single-process use.

    States are kept serialised, so a state that would not survive the trip through jsonb fails
    here too, and no caller can alias (and mutate) the stored copy.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, str] = {}

    def transact(self, name: str, fn: Transition[T]) -> T:
        with self._lock:
            raw = self._states.get(name)
            new_state, result = fn(None if raw is None else json.loads(raw))
            self._states[name] = json.dumps(new_state)
            return result

    def read(self, name: str) -> State | None:
        """The stored state, for inspection in tests and diagnostics."""
        with self._lock:
            raw = self._states.get(name)
        return None if raw is None else json.loads(raw)
