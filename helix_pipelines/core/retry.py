"""Retry helpers on tenacity: one budget shape, one backoff, one transient/terminal rule.

Usage::

    for attempt in retrying(RetryBudget(attempts=4)):
        with attempt:
            do_the_call()

or ``retrying(budget)(do_the_call, *args)``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import tenacity

from helix_pipelines.core.errors import is_transient

OnRetry = Callable[[BaseException, int, float], None]  # (error, attempt that failed, wait_s)


@dataclass(frozen=True)
class RetryBudget:
    attempts: int = 6
    initial_s: float = 0.5
    max_s: float = 20.0
    jitter_s: float = 0.5
    deadline_s: float | None = 120.0  # no sleep is started that would end past it

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_s < 0 or self.max_s < 0 or self.jitter_s < 0:
            raise ValueError(f"invalid retry budget: {self}")


def retry_after_of(exc: BaseException | None) -> float:
    """The minimum wait an error asks for (a server's retry-after, an open circuit), or 0."""
    value = getattr(exc, "retry_after_s", None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return max(float(value), 0.0)


class _wait_backoff_or_retry_after(tenacity.wait.wait_base):
    """Exponential backoff with jitter, but never shorter than the error's retry_after_s."""

    def __init__(self, budget: RetryBudget) -> None:
        self._budget = budget

    def backoff(self, attempt: int) -> float:
        # tenacity's wait_exponential_jitter, written out: its arguments changed within 9.x.
        b = self._budget
        exponential = b.initial_s * 2 ** min(attempt - 1, 64)
        return min(exponential + random.uniform(0, b.jitter_s), b.max_s)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        return max(self.backoff(retry_state.attempt_number), retry_after_of(error))


class _stop_before_deadline(tenacity.stop.stop_base):
    """Stop when the coming sleep would end past the deadline.

    Elapsed time is the larger of real time and the time slept: with an injected fake sleep no
    real time passes, and the deadline must still hold.
    """

    def __init__(self, deadline_s: float) -> None:
        self._deadline_s = deadline_s

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        elapsed = max(retry_state.seconds_since_start or 0.0, retry_state.idle_for)
        return elapsed + retry_state.upcoming_sleep > self._deadline_s


def retrying(
    budget: RetryBudget,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: OnRetry | None = None,
    retry_if: Callable[[BaseException], bool] = is_transient,
) -> tenacity.Retrying:
    """A tenacity.Retrying that retries only errors `retry_if` accepts, within `budget`, and
    re-raises the last error itself (not a RetryError) when it gives up."""
    stop = tenacity.stop_after_attempt(budget.attempts)
    if budget.deadline_s is not None:
        stop = stop | _stop_before_deadline(budget.deadline_s)
    return tenacity.Retrying(
        stop=stop,
        wait=_wait_backoff_or_retry_after(budget),
        retry=tenacity.retry_if_exception(retry_if),
        reraise=True,
        sleep=sleep,
        before_sleep=_notify(on_retry) if on_retry is not None else None,
    )


def _notify(on_retry: OnRetry) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        error = retry_state.outcome.exception() if retry_state.outcome is not None else None
        if error is not None:
            on_retry(error, retry_state.attempt_number, retry_state.upcoming_sleep)

    return before_sleep
