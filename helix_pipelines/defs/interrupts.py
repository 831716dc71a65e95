"""An interrupt ends the step it strikes: Ctrl-C of a CLI import, SIGTERM of `dev` (its run
workers with it) or "Terminate" in the UI.

Dagster turns an interrupt of a step that has a RetryPolicy into a retry: the step started
again after its delay, so `import` went on to the end of the file after Ctrl-C, and a run
worker of `dev` went on embedding until it was killed. Nothing is lost by stopping: batches
are checkpointed, and the same command, recovery or the pending-embeddings sensor resumes
the work."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import TypeVar

from dagster import DagsterExecutionInterruptedError, Failure

from helix_pipelines.core.errors import exception_chain

T = TypeVar("T")

# Step failure metadata: the step stopped because it was interrupted, not because it failed.
INTERRUPTED = "helix/interrupted"
_INTERRUPT_ERRORS = (DagsterExecutionInterruptedError, KeyboardInterrupt)
_INTERRUPT_NAMES = {cls.__name__ for cls in _INTERRUPT_ERRORS}


@contextlib.contextmanager
def interrupts_end_the_step(work: str) -> Iterator[None]:
    """Around a step's own code (`work` names it in the failure): an interrupt fails the step
    for good instead of retrying it, also when cleaning up after it raised something else."""
    try:
        with _as_keyboard_interrupts():
            yield
    except BaseException as error:
        if not struck_by_interrupt(error):
            raise
        # Without the interrupt's traceback: where it struck (a COPY, a wait) tells nothing.
        raise Failure(
            description=f"{work} was interrupted; it resumes from where it stopped",
            allow_retries=False,
            metadata={INTERRUPTED: True},
        ) from None


def each_interruptibly(work: str, events: Iterator[T]) -> Iterator[T]:
    """A generator step's events, its code run under interrupts_end_the_step; Dagster's own
    handler is back while Dagster takes each event."""
    while True:
        with interrupts_end_the_step(work):
            try:
                event = next(events)
            except StopIteration:
                return
        yield event


def struck_by_interrupt(error: BaseException) -> bool:
    """Whether `error` is an interrupt, or was raised while one was being handled."""
    return any(isinstance(link, _INTERRUPT_ERRORS) for link in exception_chain(error))


def is_interrupt(failure) -> bool:
    """Whether a step failure (Dagster's StepFailureData) was an interrupt: the step's own
    failure above, or Dagster's interrupt error where it struck outside the step's code."""
    if failure is None:
        return False
    if flagged(failure.user_failure_data, INTERRUPTED):
        return True
    error = failure.error
    while error is not None:
        if error.cls_name in _INTERRUPT_NAMES:
            return True
        error = error.cause or error.context
    return False


def flagged(failure_data, key: str) -> bool:
    """Whether a step's Failure (Dagster's user failure data, or None) carries metadata `key`
    set true: `helix/interrupted` here, `helix/terminal` (defs.runs)."""
    entry = ((failure_data.metadata if failure_data else None) or {}).get(key)
    return bool(getattr(entry, "value", entry))


@contextlib.contextmanager
def _as_keyboard_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt while the step's code runs. psycopg cancels
    the statement in flight on KeyboardInterrupt and leaves its connection usable; on
    Dagster's own interrupt error it left a COPY in progress, and the rollback after it failed
    ("another command is already in progress"). Signals reach the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        number: handler
        for number in (signal.SIGINT, signal.SIGTERM)
        if (handler := signal.getsignal(number)) is not None  # None: set outside Python
    }
    for number in previous:
        signal.signal(number, signal.default_int_handler)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
