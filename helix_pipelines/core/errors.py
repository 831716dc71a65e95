"""The one place that decides whether an error is worth retrying.

Everything is duck-typed, so this module imports neither sqlalchemy, psycopg nor openai:
- an explicit ``transient: bool`` attribute (the project's own exceptions) decides first;
- PostgreSQL errors by SQLSTATE: ``sqlstate`` (psycopg 3) or ``pgcode`` (psycopg 2), found by
  walking the chain (``.orig`` of SQLAlchemy's DBAPIError, ``__cause__``, ``__context__``);
- SQLAlchemy's ``connection_invalidated`` and driver OperationalError/InterfaceError messages
  that say the connection is gone;
- HTTP APIs by ``status_code`` (or ``response.status_code``) and by exception class names;
- network-level builtins (TimeoutError, ConnectionError, OSError).

Some API refusals are about the deployment, not the request: an exhausted quota (429 with code
``insufficient_quota``), a refused key (401, 403), an unknown model (404), a server that rejects
the ``dimensions`` parameter (400). `blocker` names them; they are terminal for the request and
decide before anything else (a rate-limit class's ``transient`` flag included), so that waiting
never spends anything on them.

Unknown errors are terminal: retrying what we cannot name burns the retry budget and hides
bugs, while the failures known to pass are listed here. Dagster's RetryPolicy still re-runs a
failed step, which resumes from its checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum


class ErrorKind(StrEnum):
    TRANSIENT = "transient"
    TERMINAL = "terminal"


class Blocker(StrEnum):
    """Why no request can succeed until the configuration or the account changes."""

    QUOTA = "quota"  # 429 insufficient_quota: out of credit
    AUTH = "auth"  # 401, 403: the key is refused or lacks access
    MODEL = "model"  # 404: unknown model (or URL)
    DIMENSIONS = "dimensions"  # 400 about the `dimensions` parameter


AUTH_STATUSES = frozenset({401, 403})


STATEMENT_TIMEOUT = "57014"

TRANSIENT_SQLSTATE_CLASSES = (
    "08",  # connection exception
    "53",  # insufficient resources: disk full, out of memory, too_many_connections (53300)
)
TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, recovering)
        "57P05",  # idle_session_timeout: the server closed an idle session
        "25P03",  # idle_in_transaction_session_timeout: the session was terminated
        STATEMENT_TIMEOUT,  # query_canceled: the caller retries with a smaller batch
    }
)

TRANSIENT_HTTP_STATUSES = frozenset({408, 409, 429})

# Class names of client-side network failures (openai, httpx, httpcore, requests, urllib3).
TRANSIENT_CLASS_NAME_PARTS = (
    "Timeout",
    "ConnectionError",
    "ConnectError",
    "APIConnectionError",
    "RemoteProtocolError",
    "NetworkError",
    "DisconnectionError",  # SQLAlchemy's "this pooled connection is dead, get another"
)

# Driver errors whose message says the connection was lost or never made.
DB_CONNECTION_CLASS_NAMES = frozenset({"OperationalError", "InterfaceError"})
CONNECTION_LOST_PHRASES = (
    "server closed the connection",
    "connection refused",
    "terminating connection",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "no such file or directory",  # the unix socket is gone: the server is down or restarting
    "consuming input failed",
    "connection socket closed",  # psycopg's wait, when the socket went away (a killed server)
    "connection is closed",
    "connection already closed",
    "connection to server",  # "connection to server at ... failed" / "... was lost"
    "could not receive data from server",
    "could not send data to server",
    "ssl syscall error",
    "ssl connection has been closed unexpectedly",
)

# OSError subclasses about local files: retrying will not make a missing file appear.
TERMINAL_OS_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)

# Programming and data errors: terminal, and decisive, so that a ValueError raised while
# handling a transient error is not retried because of its __context__.
TERMINAL_BUILTINS = (ValueError, TypeError, KeyError, IndexError, AttributeError, AssertionError)


def classify(exc: BaseException) -> ErrorKind:
    if blocker(exc) is not None:
        return ErrorKind.TERMINAL
    for link in exception_chain(exc):
        verdict = _verdict(link)
        if verdict is not None:
            return verdict
    return ErrorKind.TERMINAL


def is_transient(exc: BaseException) -> bool:
    return classify(exc) is ErrorKind.TRANSIENT


def blocker(exc: BaseException) -> Blocker | None:
    """The deployment-wide refusal this error is, if any (see Blocker)."""
    for link in exception_chain(exc):
        found = _blocker_of(link)
        if found is not None:
            return found
    return None


def _blocker_of(exc: BaseException) -> Blocker | None:
    explicit = getattr(exc, "blocker", None)
    if isinstance(explicit, Blocker):
        return explicit
    status = _status_code(exc)
    if status == 429 and _api_field(exc, "code") == "insufficient_quota":
        return Blocker.QUOTA
    if status in AUTH_STATUSES:
        return Blocker.AUTH
    if status == 404:
        return Blocker.MODEL
    if status == 400 and _about_dimensions(exc):
        return Blocker.DIMENSIONS
    return None


def _api_field(exc: BaseException, name: str) -> str | None:
    """`code`/`param` as the openai client exposes them, or from its error body."""
    value = getattr(exc, name, None)
    if value is None and isinstance(getattr(exc, "body", None), dict):
        value = exc.body.get(name)
    return value if isinstance(value, str) else None


def _about_dimensions(exc: BaseException) -> bool:
    """OpenAI says "This model does not support specifying dimensions." with no param; other
    servers name the param. An input's own text is never echoed with param `dimensions`."""
    if _api_field(exc, "param") == "dimensions":
        return True
    if _api_field(exc, "param") not in (None, ""):
        return False
    message = getattr(exc, "message", None) or str(exc)
    return "dimensions" in message.lower()


def is_statement_timeout(exc: BaseException) -> bool:
    return any(_sqlstate(link) == STATEMENT_TIMEOUT for link in exception_chain(exc))


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then what it wraps: .orig, __cause__, then an unsuppressed __context__."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [getattr(current, "orig", None), current.__cause__]
        if not current.__suppress_context__:
            wrapped.append(current.__context__)
        # Reversed onto the stack so that .orig is visited first.
        pending.extend(w for w in reversed(wrapped) if isinstance(w, BaseException))


def _verdict(exc: BaseException) -> ErrorKind | None:
    """What this one exception says on its own, or None if it says nothing."""
    for decide in (_by_flag, _by_sqlstate, _by_invalidated, _by_status, _by_type, _by_message):
        verdict = decide(exc)
        if verdict is not None:
            return verdict
    return None


def _kind(transient: bool) -> ErrorKind:
    return ErrorKind.TRANSIENT if transient else ErrorKind.TERMINAL


def _by_flag(exc: BaseException) -> ErrorKind | None:
    flag = getattr(exc, "transient", None)
    return _kind(flag) if isinstance(flag, bool) else None


def _sqlstate(exc: BaseException) -> str | None:
    for attribute in ("sqlstate", "pgcode"):
        code = getattr(exc, attribute, None)
        if isinstance(code, str) and len(code) == 5:
            return code.upper()
    return None


def _by_sqlstate(exc: BaseException) -> ErrorKind | None:
    code = _sqlstate(exc)
    if code is None:
        return None
    return _kind(code in TRANSIENT_SQLSTATES or code.startswith(TRANSIENT_SQLSTATE_CLASSES))


def _by_invalidated(exc: BaseException) -> ErrorKind | None:
    return ErrorKind.TRANSIENT if getattr(exc, "connection_invalidated", False) is True else None


def _status_code(exc: BaseException) -> int | None:
    for holder in (exc, getattr(exc, "response", None)):
        code = getattr(holder, "status_code", None)
        if isinstance(code, int) and 100 <= code <= 599:
            return code
    return None


def _by_status(exc: BaseException) -> ErrorKind | None:
    code = _status_code(exc)
    if code is None:
        return None
    return _kind(code in TRANSIENT_HTTP_STATUSES or code >= 500)


def _by_type(exc: BaseException) -> ErrorKind | None:
    names = [cls.__name__ for cls in type(exc).__mro__]
    if any(part in name for name in names for part in TRANSIENT_CLASS_NAME_PARTS):
        return ErrorKind.TRANSIENT
    if isinstance(exc, TERMINAL_OS_ERRORS + TERMINAL_BUILTINS):
        return ErrorKind.TERMINAL
    if isinstance(exc, OSError):  # builtin network-level errors: resets, unreachable hosts
        return ErrorKind.TRANSIENT
    return None


def _by_message(exc: BaseException) -> ErrorKind | None:
    if not DB_CONNECTION_CLASS_NAMES.intersection(cls.__name__ for cls in type(exc).__mro__):
        return None
    message = str(exc).lower()
    return ErrorKind.TRANSIENT if any(p in message for p in CONNECTION_LOST_PHRASES) else None
