import openai
import psycopg
import pytest
import sqlalchemy.exc
from psycopg import errors as pg

from helix_pipelines.core.errors import (
    Blocker,
    ErrorKind,
    blocker,
    classify,
    is_statement_timeout,
    is_transient,
)
from helix_pipelines.embedding.base import EmbeddingError
from helix_pipelines.embedding.openai_provider import OpenAIProvider

TRANSIENT, TERMINAL = ErrorKind.TRANSIENT, ErrorKind.TERMINAL


def wrapped(orig: BaseException, cls=sqlalchemy.exc.OperationalError, **kwargs):
    """How SQLAlchemy surfaces a driver error: the driver's exception as .orig."""
    return cls("SELECT 1", {}, orig, **kwargs)


class Psycopg2Style(Exception):
    """psycopg2 exposes the SQLSTATE as pgcode."""

    def __init__(self, pgcode):
        super().__init__(f"pgcode {pgcode}")
        self.pgcode = pgcode


@pytest.mark.parametrize(
    "error, kind",
    [
        (pg.SerializationFailure(), TRANSIENT),  # 40001
        (pg.DeadlockDetected(), TRANSIENT),  # 40P01
        (pg.TooManyConnections(), TRANSIENT),  # 53300
        (pg.DiskFull(), TRANSIENT),  # 53100
        (pg.AdminShutdown(), TRANSIENT),  # 57P01
        (pg.CrashShutdown(), TRANSIENT),  # 57P02
        (pg.CannotConnectNow(), TRANSIENT),  # 57P03
        (pg.QueryCanceled(), TRANSIENT),  # 57014
        (pg.LockNotAvailable(), TRANSIENT),  # 55P03
        (pg.ConnectionFailure(), TRANSIENT),  # 08006
        (pg.UniqueViolation(), TERMINAL),  # 23505
        (pg.NotNullViolation(), TERMINAL),  # 23502
        (pg.InvalidTextRepresentation(), TERMINAL),  # 22P02
        (pg.StringDataRightTruncation(), TERMINAL),  # 22001
        (pg.UndefinedTable(), TERMINAL),  # 42P01
        (pg.SyntaxError(), TERMINAL),  # 42601
        (Psycopg2Style("40P01"), TRANSIENT),
        (Psycopg2Style("08003"), TRANSIENT),
        (Psycopg2Style("23503"), TERMINAL),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_sqlstate_table(error, kind):
    assert classify(error) is kind
    assert classify(wrapped(error)) is kind  # found through SQLAlchemy's .orig


def test_integrity_error_wrapped_by_sqlalchemy_is_terminal():
    error = sqlalchemy.exc.DBAPIError.instance(
        "INSERT", {}, pg.UniqueViolation("duplicate key"), psycopg.Error
    )
    assert isinstance(error, sqlalchemy.exc.IntegrityError)
    assert classify(error) is TERMINAL


def test_sqlstate_found_through_cause_and_context():
    try:
        try:
            raise pg.DeadlockDetected()
        except pg.DeadlockDetected as first:
            raise RuntimeError("batch failed") from first
    except RuntimeError as error:
        assert is_transient(error)

    try:
        try:
            raise pg.AdminShutdown()
        except pg.AdminShutdown:
            raise RuntimeError("while cleaning up") from None
    except RuntimeError as error:
        assert not is_transient(error)  # the context was explicitly suppressed


def test_a_value_error_raised_while_handling_a_transient_error_stays_terminal():
    try:
        try:
            raise pg.SerializationFailure()
        except pg.SerializationFailure:
            raise ValueError("bad row") from None
    except ValueError as error:
        assert classify(error) is TERMINAL


@pytest.mark.parametrize(
    "message",
    [
        "server closed the connection unexpectedly\n\tThis probably means the server terminated",
        'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
        "Connection refused",
        "terminating connection due to administrator command",
        "the database system is starting up",
        "the database system is shutting down",
        'connection to server on socket "/tmp/.s.PGSQL.5432" failed: No such file or directory',
        "consuming input failed: server closed the connection unexpectedly",
        "connection socket closed",
    ],
)
def test_connection_lost_messages_without_sqlstate(message):
    driver_error = psycopg.OperationalError(message)
    assert driver_error.sqlstate is None
    assert is_transient(driver_error)
    assert is_transient(wrapped(driver_error))
    assert is_transient(psycopg.InterfaceError(message))


def test_a_failed_rollback_after_a_copy_lost_its_socket_is_transient():
    # As an import's writer met it when every process of the embedded server was killed during
    # its COPY: psycopg's wait found the socket gone, then SQLAlchemy's rollback of the broken
    # transaction failed on its own, raised while handling the first error.
    try:
        try:
            raise psycopg.OperationalError("connection socket closed")
        except psycopg.OperationalError:
            try:
                raise psycopg.OperationalError(
                    "sending query failed: another command is already in progress"
                )
            except psycopg.OperationalError as rollback:
                raise sqlalchemy.exc.OperationalError("ROLLBACK", {}, rollback) from rollback
    except sqlalchemy.exc.OperationalError as error:
        assert is_transient(error)


def test_operational_error_with_another_message_is_terminal():
    assert classify(psycopg.OperationalError("invalid dsn: missing '='")) is TERMINAL


def test_sqlalchemy_invalidated_connection_is_transient():
    error = wrapped(
        Exception("anything"), cls=sqlalchemy.exc.DBAPIError, connection_invalidated=True
    )
    assert is_transient(error)


def test_sqlalchemy_pool_timeout_and_disconnection_are_transient():
    assert is_transient(sqlalchemy.exc.TimeoutError("QueuePool limit reached"))
    assert is_transient(sqlalchemy.exc.DisconnectionError("stale connection"))


@pytest.mark.parametrize(
    "class_name", ["APITimeoutError", "APIConnectionError", "RemoteProtocolError", "ReadTimeout"]
)
def test_client_network_errors_by_class_name(class_name):
    assert is_transient(type(class_name, (Exception,), {})("network"))


def test_subclass_of_a_network_error_class_is_transient():
    base = type("APIConnectionError", (Exception,), {})
    assert is_transient(type("SomethingElse", (base,), {})())


@pytest.mark.parametrize(
    "error",
    [TimeoutError(), ConnectionResetError(), ConnectionRefusedError(), OSError()],
)
def test_network_builtins_are_transient(error):
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [FileNotFoundError(), PermissionError(), ValueError(), KeyError("x"), RuntimeError()],
)
def test_local_and_programming_errors_are_terminal(error):
    assert classify(error) is TERMINAL


def test_explicit_transient_flag_decides_first():
    class FlakyParse(ValueError):
        transient = True

    class NotWorthIt(Exception):
        transient = False
        status_code = 503

    assert is_transient(FlakyParse())
    assert not is_transient(NotWorthIt())


def test_unknown_errors_are_terminal():
    assert classify(Exception("who knows")) is TERMINAL


def test_statement_timeout_detection():
    assert is_statement_timeout(pg.QueryCanceled())
    assert is_statement_timeout(wrapped(pg.QueryCanceled()))
    assert not is_statement_timeout(pg.SerializationFailure())
    assert not is_statement_timeout(TimeoutError())


def test_cyclic_chains_terminate():
    first, second = RuntimeError("a"), RuntimeError("b")
    first.__context__, second.__context__ = second, first
    assert classify(first) is TERMINAL


# -- HTTP APIs: the exceptions the real openai client raises from the fake server's answers ----


def api_error(fake, fault: str | None = None, *, model="m", dimensions=None, **client):
    """What `openai` raises for one embeddings request the fake server answers with `fault`."""
    if fault:
        fake.script(fault)
    options = {"api_key": fake.api_key, "base_url": fake.base_url, "timeout": 2.0} | client
    extra = {"dimensions": dimensions} if dimensions else {}
    with openai.OpenAI(max_retries=0, **options) as api:
        try:
            api.embeddings.create(input=["question"], model=model, **extra)
        except openai.OpenAIError as exc:
            return exc
    raise AssertionError("the request succeeded")


@pytest.mark.parametrize(
    "fault", ["429_retry_after", "429_retry_after_ms", "429_bare", "500", "503", "drop"]
)
def test_rate_limits_server_errors_and_dropped_connections_are_transient(fake_openai, fault):
    error = api_error(fake_openai, fault)
    assert classify(error) is TRANSIENT
    assert blocker(error) is None


def test_a_timeout_is_transient(fake_openai):
    error = api_error(fake_openai, "hang", timeout=0.3)
    assert isinstance(error, openai.APITimeoutError)
    assert classify(error) is TRANSIENT


def test_an_invalid_input_is_terminal_and_blocks_nothing(fake_openai):
    fake_openai.set_poison("question")
    error = api_error(fake_openai)
    assert (error.status_code, classify(error), blocker(error)) == (400, TERMINAL, None)


@pytest.mark.parametrize(
    ("fault", "status", "expected"),
    [
        ("429_quota", 429, Blocker.QUOTA),
        ("401", 401, Blocker.AUTH),
        ("403", 403, Blocker.AUTH),
        ("404_model", 404, Blocker.MODEL),
    ],
)
def test_refusals_of_the_account_or_configuration_block(fake_openai, fault, status, expected):
    error = api_error(fake_openai, fault)
    assert error.status_code == status
    assert blocker(error) is expected
    assert classify(error) is TERMINAL  # the 429 quota rule decides before the status class


def test_a_wrong_key_and_an_unknown_url_block(fake_openai):
    wrong_key = api_error(fake_openai, api_key="sk-wrong")
    wrong_url = api_error(fake_openai, base_url=fake_openai.base_url + "/nope")
    assert (wrong_key.status_code, blocker(wrong_key)) == (401, Blocker.AUTH)
    assert (wrong_url.status_code, blocker(wrong_url)) == (404, Blocker.MODEL)


def test_a_server_that_rejects_dimensions_blocks(fake_openai):
    fake_openai.set_reject_dimensions()
    error = api_error(fake_openai, dimensions=8)
    assert (error.status_code, blocker(error), classify(error)) == (
        400, Blocker.DIMENSIONS, TERMINAL,
    )  # fmt: skip


def test_the_provider_keeps_the_verdict_of_the_client_error(fake_openai):
    """OpenAIProvider raises its own errors (without the client's, whose request holds the key):
    they carry the same verdict."""
    provider = OpenAIProvider(
        api_key=fake_openai.api_key, base_url=fake_openai.base_url, model="m", dim=8,
        timeout_s=2.0,
    )  # fmt: skip
    verdicts = {}
    for fault in ("429_quota", "429_bare", "401", "404_model", "503"):
        fake_openai.script(fault)
        with pytest.raises(EmbeddingError) as caught:
            provider.embed(["question"])
        verdicts[fault] = (classify(caught.value), blocker(caught.value))
    provider.close()
    assert verdicts == {
        "429_quota": (TERMINAL, Blocker.QUOTA),
        "429_bare": (TRANSIENT, None),
        "401": (TERMINAL, Blocker.AUTH),
        "404_model": (TERMINAL, Blocker.MODEL),
        "503": (TRANSIENT, None),
    }
