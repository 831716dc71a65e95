"""Requests-per-minute and tokens-per-minute limits for a whole deployment.

Why a sliding window of slots rather than token buckets: the server counts requests and tokens
over a sliding 60 s window. A token bucket of capacity C refilling at R per minute lets C + R
through in some 60 s window, so it can only keep under R per window by refilling at R - C: a
burst allowance of 10 % already costs 10 % of the throughput, and a full bucket at start lets
~2R through in the first minute. Instead every grant is recorded in a one-second slot (the time
axis cut into ``slot_s`` pieces) and a request is granted only if the usage of the last
``ceil(window_s / slot_s) + 1`` slots plus the request stays within the limit. Those slots cover
every instant of the 60 s before the grant, so no 60 s window ever holds more than the limit
(whichever process granted), and the steady state still reaches window / (window + slot) of the
ceiling: 98 % with the defaults. The extra slot is also a margin for network latency jitter and
small clock skew between machines. The state is at most ~62 small triples: cheap to keep in one
jsonb row.

Times are wall-clock seconds from an injectable clock, because several machines share the state.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from helix_pipelines.core.shared_state import StateStore

# A wait is never reported as zero when nothing was granted, so callers always make progress
# even when float rounding puts "now" a hair before a slot boundary.
MIN_WAIT_S = 0.001
REQUESTS, TOKENS = 1, 2  # positions in a slot triple [index, requests, tokens]


@dataclass(frozen=True)
class RateLimits:
    rpm: int
    tpm: int

    def __post_init__(self) -> None:
        if self.rpm < 1 or self.tpm < 1:
            raise ValueError(f"rate limits must be positive, got rpm={self.rpm} tpm={self.tpm}")


@dataclass(frozen=True)
class Window:
    """The geometry of the sliding window: its length and the width of one slot."""

    window_s: float = 60.0
    slot_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.slot_s <= self.window_s:
            raise ValueError("need 0 < slot_s <= window_s")

    @property
    def span(self) -> int:
        """Slots before the current one that may still hold grants from the last window_s."""
        return math.ceil(self.window_s / self.slot_s - 1e-9)

    def slot_of(self, t: float) -> int:
        return math.floor(t / self.slot_s)

    def released_at(self, slot: int) -> float:
        """When the usage recorded in `slot` stops counting."""
        return (slot + self.span + 1) * self.slot_s


class RateLimitTimeout(Exception):
    """The limiter could not grant before the caller's deadline."""

    transient = True

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"rate limit: next grant in {retry_after_s:.2f}s is past the deadline")
        self.retry_after_s = retry_after_s


# --- pure state transitions -------------------------------------------------------------------
# state: {"slot_s": float, "slots": [[index, requests, tokens], ...] ascending, "paused_until": t}


def _fresh_state(window: Window) -> dict[str, Any]:
    return {"slot_s": window.slot_s, "slots": [], "paused_until": 0.0}


def _live_state(state: dict | None, now: float, window: Window) -> dict[str, Any]:
    """A copy of `state` without the slots that no longer count."""
    if state is None:
        return _fresh_state(window)
    slots = [list(s) for s in state.get("slots", [])]
    if state.get("slot_s") != window.slot_s:
        # The slot width was reconfigured: keep the usage, conservatively, as if granted now.
        usage = [window.slot_of(now), sum(s[1] for s in slots), sum(s[2] for s in slots)]
        slots = [usage] if usage[1] or usage[2] else []
    oldest = window.slot_of(now) - window.span
    return {
        "slot_s": window.slot_s,
        "slots": [s for s in slots if s[0] >= oldest],
        "paused_until": float(state.get("paused_until", 0.0)),
    }


def _used(state: dict, kind: int) -> int:
    return sum(s[kind] for s in state["slots"])


def _wait_for(state: dict, now: float, window: Window, kind: int, need: int, limit: int) -> float:
    """Seconds until `need` more units fit under `limit` (0 when they fit now)."""
    excess = _used(state, kind) + need - limit
    if excess <= 0:
        return 0.0
    for slot in state["slots"]:  # oldest first: the first to stop counting
        excess -= slot[kind]
        if excess <= 0:
            return max(window.released_at(slot[0]) - now, MIN_WAIT_S)
    raise AssertionError("unreachable: need is clamped to the limit")


def _add_usage(state: dict, slot: int, requests: int, tokens: int) -> None:
    slots = state["slots"]
    for s in slots:
        if s[0] == slot:
            s[REQUESTS] += requests
            s[TOKENS] += tokens
            return
    slots.append([slot, requests, tokens])
    slots.sort(key=lambda s: s[0])


def try_grant(
    state: dict | None, *, now: float, limits: RateLimits, window: Window, tokens: int
) -> tuple[dict, float]:
    """Grant one request of `tokens` now (wait 0.0) or say how long to wait (nothing consumed).

    A request larger than the whole tpm could never fit: it is granted once the window holds no
    other tokens, and its real size is recorded, so the tokens after it wait until it has aged
    out. Splitting such requests is the batcher's job.
    """
    if tokens < 0:
        raise ValueError("tokens must be >= 0")
    state = _live_state(state, now, window)
    wait = max(
        state["paused_until"] - now,
        _wait_for(state, now, window, REQUESTS, 1, limits.rpm),
        _wait_for(state, now, window, TOKENS, min(tokens, limits.tpm), limits.tpm),
    )
    if wait > 0:
        return state, wait
    _add_usage(state, window.slot_of(now), 1, tokens)
    return state, 0.0


def pause(state: dict | None, *, now: float, window: Window, seconds: float) -> dict:
    state = _live_state(state, now, window)
    state["paused_until"] = max(state["paused_until"], now + max(seconds, 0.0))
    return state


def observe_remaining(
    state: dict | None,
    *,
    now: float,
    limits: RateLimits,
    window: Window,
    remaining_requests: int | None,
    remaining_tokens: int | None,
    reset_requests_s: float | None,
    reset_tokens_s: float | None,
) -> dict:
    """Align the window with what the server says remains.

    When the server has less left than we think (other clients on the key, a lower server
    limit), the difference is recorded as phantom usage placed so that it stops counting when the
    server says its counter resets (or a full window from now when it does not say). When nothing
    remains at all and the reset time is known, nobody is granted before it.
    """
    state = _live_state(state, now, window)
    for kind, limit, remaining, reset_s in (
        (REQUESTS, limits.rpm, remaining_requests, reset_requests_s),
        (TOKENS, limits.tpm, remaining_tokens, reset_tokens_s),
    ):
        if remaining is None:
            continue
        missing = (limit - _used(state, kind)) - max(remaining, 0)
        if missing > 0:
            reset = window.window_s if reset_s is None else reset_s
            ages_out_at = now + min(max(reset, 0.0), window.window_s)
            phantom_slot = window.slot_of(ages_out_at - window.window_s)
            usage = (missing, 0) if kind == REQUESTS else (0, missing)
            _add_usage(state, phantom_slot, *usage)
        if remaining <= 0 and reset_s is not None:
            state["paused_until"] = max(state["paused_until"], now + reset_s)
    return state


# --- the limiter over a shared store ----------------------------------------------------------


@dataclass
class LimiterStats:
    """Process-local counters for metrics: the shared state only holds the window itself."""

    grants: int = 0
    waits: int = 0  # grants that had to wait at least once
    total_wait_s: float = 0.0
    timeouts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, waited_s: float) -> None:
        with self._lock:
            self.grants += 1
            if waited_s > 0:
                self.waits += 1
                self.total_wait_s += waited_s

    def record_timeout(self) -> None:
        with self._lock:
            self.timeouts += 1


class RateLimiter:
    def __init__(
        self,
        limits: RateLimits,
        store: StateStore,
        name: str = "embeddings",
        clock: Callable[[], float] = time.time,
        window: Window = Window(),
    ) -> None:
        self.limits = limits
        self.name = name
        self.window = window
        self.stats = LimiterStats()
        self._store = store
        self._clock = clock

    def now(self) -> float:
        """The limiter's clock: deadlines passed to acquire() are on it."""
        return self._clock()

    def try_acquire(self, tokens: int) -> float:
        """0.0 when granted (1 request + tokens consumed); else seconds to wait, nothing used."""
        now = self._clock()
        return self._store.transact(
            self.name,
            lambda s: try_grant(s, now=now, limits=self.limits, window=self.window, tokens=tokens),
        )

    def acquire(
        self,
        tokens: int,
        sleep: Callable[[float], None] = time.sleep,
        deadline: float | None = None,
    ) -> float:
        """Block until granted; return the seconds waited.

        `deadline` is an absolute time on the limiter's clock (wall-clock seconds by default).
        When the next possible grant lies past it, RateLimitTimeout is raised at once rather
        than after a pointless sleep.
        """
        waited = 0.0
        while (wait := self.try_acquire(tokens)) > 0:
            if deadline is not None and self._clock() + wait > deadline:
                self.stats.record_timeout()
                raise RateLimitTimeout(wait)
            sleep(wait)
            waited += wait
        self.stats.record(waited)
        return waited

    def pause_for(self, seconds: float) -> None:
        """Honour a server's retry-after: nobody in the deployment is granted before then."""
        now = self._clock()
        self._store.transact(
            self.name, lambda s: (pause(s, now=now, window=self.window, seconds=seconds), None)
        )

    def observe(
        self,
        remaining_requests: int | None,
        remaining_tokens: int | None,
        reset_requests_s: float | None,
        reset_tokens_s: float | None,
    ) -> None:
        """Respect the server's x-ratelimit-remaining-* / x-ratelimit-reset-* headers."""
        now = self._clock()

        def transition(state: dict | None) -> tuple[dict, None]:
            new_state = observe_remaining(
                state,
                now=now,
                limits=self.limits,
                window=self.window,
                remaining_requests=remaining_requests,
                remaining_tokens=remaining_tokens,
                reset_requests_s=reset_requests_s,
                reset_tokens_s=reset_tokens_s,
            )
            return new_state, None

        self._store.transact(self.name, transition)


class NoLimit:
    """A RateLimiter's interface with no limits: for a provider that calls no API (the local
    one), where waiting on the deployment's API budget would only slow it down."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.stats = LimiterStats()
        self._clock = clock

    def now(self) -> float:
        return self._clock()

    def try_acquire(self, tokens: int) -> float:
        return 0.0

    def acquire(self, tokens: int, sleep=time.sleep, deadline: float | None = None) -> float:
        self.stats.record(0.0)
        return 0.0

    def pause_for(self, seconds: float) -> None:
        return None

    def observe(self, *remaining_and_resets) -> None:
        return None
