"""A circuit breaker shared by every process of a deployment.

closed --N consecutive failures--> open --recovery_s--> half_open --probe succeeds--> closed
                                     ^                       |
                                     +----probe fails--------+

In half_open exactly one caller (the probe) is let through; the others are refused until it
reports back, or until probe_timeout_s passes (the probe's process may have died), after which
the next caller becomes the probe. The state is a JSON dict changed only by the pure functions
below, applied atomically through a StateStore; times are wall-clock seconds.

Blocked: a refusal no wait can cure (an exhausted quota, a refused key, an unknown model, see
core.errors.Blocker) opens the circuit at once with its reason and the fingerprint of the setup
that was refused. It stays open for block_retry_s, not recovery_s, unless a caller with another
fingerprint (the key, model, URL or dimensions changed) comes: that caller probes at once.

The state also remembers, for pipeline.embedding, when pairs were last parked (failed after
their attempts ran out on transient errors) and when the circuit last closed after having been
open: parked pairs go back to pending once the API has recovered since (or a probe is due), or
after parked_retry_s.
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
    block_retry_s: float = 3600.0
    parked_retry_s: float = 900.0
    fingerprint: str = ""  # of the caller's setup; never a secret (see EmbeddingSetup)

    def __post_init__(self) -> None:
        if (
            self.failure_threshold < 1
            or min(self.recovery_s, self.block_retry_s, self.parked_retry_s) < 0
            or self.probe_timeout_s <= 0
        ):
            raise ValueError(f"invalid circuit breaker settings: {self}")


# --- pure state transitions -------------------------------------------------------------------
# state: {"state": "closed"|"open"|"half_open", "consecutive_failures": int,
#         "opened_at": float | None, "probe_started_at": float | None,
#         "blocked": {"reason", "message", "fingerprint", "at"} | None,
#         "recovered_at", "parked_at", "last_parked_at": float | None}


def _closed() -> dict[str, Any]:
    return {
        "state": CircuitState.CLOSED.value,
        "consecutive_failures": 0,
        "opened_at": None,
        "probe_started_at": None,
        "blocked": None,
    }


def initial_state() -> dict[str, Any]:
    return _closed() | {"recovered_at": None, "parked_at": None, "last_parked_at": None}


def _current(state: dict | None) -> dict[str, Any]:
    return initial_state() | (state or {})


def _open_until(state: dict, config: BreakerConfig) -> float:
    """When an open circuit lets a probe through: recovery_s after opening, or block_retry_s
    after a block, unless the setup has changed since (then at once)."""
    blocked = state["blocked"]
    if not blocked:
        return state["opened_at"] + config.recovery_s
    if blocked["fingerprint"] != config.fingerprint:
        return blocked["at"]
    return blocked["at"] + config.block_retry_s


def effective_state(state: dict | None, now: float, config: BreakerConfig) -> CircuitState:
    """The stored state, except that open past its time (see _open_until) reads as half_open."""
    state = _current(state)
    stored = CircuitState(state["state"])
    if stored is CircuitState.OPEN and now >= _open_until(state, config):
        return CircuitState.HALF_OPEN
    return stored


def blocked_reason(state: dict | None, now: float, config: BreakerConfig) -> dict | None:
    """{"reason", "message"} while a block holds every call back, else None."""
    state = _current(state)
    if state["blocked"] and effective_state(state, now, config) is CircuitState.OPEN:
        return {k: state["blocked"][k] for k in ("reason", "message")}
    return None


def retry_in_s(state: dict | None, now: float, config: BreakerConfig) -> float:
    """Seconds until a call may be let through (0.0 when one may go now)."""
    state = _current(state)
    stored = CircuitState(state["state"])
    if stored is CircuitState.OPEN:
        return max(_open_until(state, config) - now, 0.0)
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
    """Any success shows the service answers: close and forget the failures (and a block)."""
    state = _current(state)
    recovered = state["state"] != CircuitState.CLOSED.value
    return state | _closed() | ({"recovered_at": now} if recovered else {})


def on_block(state: dict | None, now: float, config: BreakerConfig, reason: str, message: str):
    """Open at once, for block_retry_s or until the setup's fingerprint changes."""
    state = _current(state)
    blocked = {"reason": reason, "message": message, "fingerprint": config.fingerprint, "at": now}
    return _opened(state, state["consecutive_failures"] + 1, now) | {"blocked": blocked}


def on_lift(state: dict | None) -> dict:
    """An operator says the setup or the account changed: a block gives way to one probe."""
    state = _current(state)
    if not state["blocked"] or state["state"] != CircuitState.OPEN.value:
        return state
    return state | {"state": CircuitState.HALF_OPEN.value, "probe_started_at": None,
                    "blocked": None}  # fmt: skip


def on_parked(state: dict | None, now: float) -> dict:
    state = _current(state)
    return state | {"parked_at": state["parked_at"] or now, "last_parked_at": now}


def release_due(state: dict | None, now: float, config: BreakerConfig) -> bool:
    """Parked pairs may go back to pending: the circuit closed after having been open since they
    were parked, or it is half-open with no probe out (a probe is due, and with nothing else
    pending only they can be it), or parked_retry_s has passed."""
    state = _current(state)
    parked_at = state["parked_at"]
    if parked_at is None:
        return False
    current = effective_state(state, now, config)
    recovered = state["recovered_at"] is not None and state["recovered_at"] >= parked_at
    return (
        (current is CircuitState.CLOSED and recovered)
        or (current is CircuitState.HALF_OPEN and retry_in_s(state, now, config) == 0.0)
        or now - parked_at >= config.parked_retry_s
    )


def on_released(state: dict | None, checked_at: float) -> dict:
    """The pairs parked up to checked_at are pending again; later parkings stay remembered."""
    state = _current(state)
    later = state["last_parked_at"] is not None and state["last_parked_at"] > checked_at
    return state | {
        "parked_at": state["last_parked_at"] if later else None,
        "last_parked_at": state["last_parked_at"] if later else None,
    }


def on_failure(state: dict | None, now: float, config: BreakerConfig) -> dict:
    state = _current(state)
    failures = state["consecutive_failures"] + 1
    stored = CircuitState(state["state"])
    if stored is CircuitState.HALF_OPEN or (
        stored is CircuitState.CLOSED and failures >= config.failure_threshold
    ):
        return _opened(state, failures, now)
    # Closed under the threshold, or a late failure of a call started before the circuit opened:
    # count it, but do not push the recovery time further away.
    return state | {"consecutive_failures": failures}


def _opened(state: dict, failures: int, now: float) -> dict[str, Any]:
    return state | {
        "state": CircuitState.OPEN.value,
        "consecutive_failures": failures,
        "opened_at": now,
        "probe_started_at": None,
        "blocked": None,
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
        *,
        block_retry_s: float = 3600.0,
        parked_retry_s: float = 900.0,
        fingerprint: str = "",
    ) -> None:
        self.name = name
        self.config = BreakerConfig(
            failure_threshold, recovery_s, probe_timeout_s, block_retry_s, parked_retry_s,
            fingerprint,
        )  # fmt: skip
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

    def block(self, reason: str, message: str) -> None:
        """A refusal no wait cures (core.errors.Blocker): hold every call back."""
        now = self._clock()
        self._store.transact(
            self.name, lambda s: (on_block(s, now, self.config, reason, message), None)
        )

    def lift_block(self) -> None:
        self._store.transact(self.name, lambda s: (on_lift(s), None))

    def note_parked(self) -> None:
        now = self._clock()
        self._store.transact(self.name, lambda s: (on_parked(s, now), None))

    def release_due(self) -> float | None:
        """The time of this check when parked pairs may go back to pending, else None; call
        released(that time) once they are."""
        now = self._clock()
        stored = self._store.transact(self.name, lambda s: (_current(s), _current(s)))
        return now if release_due(stored, now, self.config) else None

    def released(self, checked_at: float) -> None:
        self._store.transact(self.name, lambda s: (on_released(s, checked_at), None))

    def state(self) -> CircuitState:
        return CircuitState(self.snapshot()["state"])

    def snapshot(self) -> dict[str, Any]:
        """state, consecutive_failures, opened_at, retry_in_s and blocked ({reason, message}
        while a block holds calls back, else None): for sensors, metadata and metrics."""
        now = self._clock()
        stored = self._store.transact(self.name, lambda s: (_current(s), _current(s)))
        return {
            "state": effective_state(stored, now, self.config).value,
            "consecutive_failures": stored["consecutive_failures"],
            "opened_at": stored["opened_at"],
            "retry_in_s": retry_in_s(stored, now, self.config),
            "blocked": blocked_reason(stored, now, self.config),
        }
