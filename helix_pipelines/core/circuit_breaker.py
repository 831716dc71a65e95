"""A circuit breaker shared by every process of a deployment.

closed --N consecutive failures--> open --recovery_s--> half_open --probe succeeds--> closed
                                     ^                       |
                                     +----probe fails--------+

In half_open exactly one caller (the probe) is let through; the others are refused until it
reports back, or until probe_timeout_s passes (the probe's process may have died), after which
the next caller becomes the probe. The state is a JSON dict changed only by the pure functions
below, applied atomically through a StateStore; times are wall-clock seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from helix_pipelines.core.shared_state import StateStore


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(Exception):
    """The call must not happen now; try again in `retry_in_s`."""

    transient = True  # the service is expected back; callers may wait and retry

    def __init__(self, name: str, retry_in_s: float) -> None:
        super().__init__(f"circuit {name!r} is open; retry in {retry_in_s:.1f}s")
        self.retry_in_s = retry_in_s
        self.retry_after_s = retry_in_s  # read by core.retry as a minimum wait


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 5
    recovery_s: float = 30.0
    probe_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.recovery_s < 0 or self.probe_timeout_s <= 0:
            raise ValueError(f"invalid circuit breaker settings: {self}")


# --- pure state transitions -------------------------------------------------------------------
# state: {"state": "closed"|"open"|"half_open", "consecutive_failures": int,
#         "opened_at": float | None, "probe_started_at": float | None}


def initial_state() -> dict[str, Any]:
    return {
        "state": CircuitState.CLOSED.value,
        "consecutive_failures": 0,
        "opened_at": None,
        "probe_started_at": None,
    }


def _current(state: dict | None) -> dict[str, Any]:
    return initial_state() | (state or {})


def effective_state(state: dict | None, now: float, config: BreakerConfig) -> CircuitState:
    """The stored state, except that open past recovery_s reads as half_open."""
    state = _current(state)
    stored = CircuitState(state["state"])
    if stored is CircuitState.OPEN and now - state["opened_at"] >= config.recovery_s:
        return CircuitState.HALF_OPEN
    return stored


def retry_in_s(state: dict | None, now: float, config: BreakerConfig) -> float:
    """Seconds until a call may be let through (0.0 when one may go now)."""
    state = _current(state)
    stored = CircuitState(state["state"])
    if stored is CircuitState.OPEN:
        return max(state["opened_at"] + config.recovery_s - now, 0.0)
    if stored is CircuitState.HALF_OPEN and state["probe_started_at"] is not None:
        return max(state["probe_started_at"] + config.probe_timeout_s - now, 0.0)
    return 0.0


def admit(state: dict | None, now: float, config: BreakerConfig) -> tuple[dict, float]:
    """Let a call through (wait 0.0, possibly as the half-open probe) or refuse it (wait > 0)."""
    state = _current(state)
    if effective_state(state, now, config) is CircuitState.CLOSED:
        return state, 0.0
    wait = retry_in_s(state, now, config)
    if wait > 0:
        return state, wait
    # Open past recovery, or half-open whose probe never reported back: this call probes.
    return state | {"state": CircuitState.HALF_OPEN.value, "probe_started_at": now}, 0.0


def on_success(state: dict | None, now: float) -> dict:
    """Any success shows the service answers: close and forget the failures."""
    return initial_state()


def on_failure(state: dict | None, now: float, config: BreakerConfig) -> dict:
    state = _current(state)
    failures = state["consecutive_failures"] + 1
    stored = CircuitState(state["state"])
    if stored is CircuitState.HALF_OPEN or (
        stored is CircuitState.CLOSED and failures >= config.failure_threshold
    ):
        return _opened(failures, now)
    # Closed under the threshold, or a late failure of a call started before the circuit opened:
    # count it, but do not push the recovery time further away.
    return state | {"consecutive_failures": failures}


def _opened(failures: int, now: float) -> dict[str, Any]:
    return {
        "state": CircuitState.OPEN.value,
        "consecutive_failures": failures,
        "opened_at": now,
        "probe_started_at": None,
    }


# --- the breaker over a shared store ----------------------------------------------------------


class CircuitBreaker:
    def __init__(
        self,
        store: StateStore,
        name: str = "embeddings_api",
        failure_threshold: int = 5,
        recovery_s: float = 30.0,
        probe_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.config = BreakerConfig(failure_threshold, recovery_s, probe_timeout_s)
        self._store = store
        self._clock = clock

    def before_call(self) -> None:
        """Raise CircuitOpenError when the call must not happen."""
        now = self._clock()
        wait = self._store.transact(self.name, lambda s: admit(s, now, self.config))
        if wait > 0:
            raise CircuitOpenError(self.name, wait)

    def record_success(self) -> None:
        now = self._clock()
        self._store.transact(self.name, lambda s: (on_success(s, now), None))

    def record_failure(self) -> None:
        now = self._clock()
        self._store.transact(self.name, lambda s: (on_failure(s, now, self.config), None))

    def state(self) -> CircuitState:
        return CircuitState(self.snapshot()["state"])

    def snapshot(self) -> dict[str, Any]:
        """state, consecutive_failures, opened_at, retry_in_s: for metadata and metrics."""
        now = self._clock()
        stored = self._store.transact(self.name, lambda s: (_current(s), _current(s)))
        return {
            "state": effective_state(stored, now, self.config).value,
            "consecutive_failures": stored["consecutive_failures"],
            "opened_at": stored["opened_at"],
            "retry_in_s": retry_in_s(stored, now, self.config),
        }
