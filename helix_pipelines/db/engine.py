"""Which database, and the engine that talks to it.

`HELIX_DATABASE_URL` when set; otherwise the embedded PostgreSQL under `$HELIX_HOME/pgdata`.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from helix_pipelines.core.redact import redact as redact_text
from helix_pipelines.db.embedded import APP_DATABASE, EmbeddedPostgres

log = logging.getLogger(__name__)

# The embedded server behind each URL this process resolved, for its engines to start it again
# when it died under them (see _start_again_when_dead).
_EMBEDDED: dict[str, EmbeddedPostgres] = {}


def resolve_database_url(database_url: str | None, home: Path) -> str:
    """The application's URL (psycopg 3 driver); starts the embedded server when none is set."""
    if database_url:
        return with_driver(database_url, "psycopg")
    server = EmbeddedPostgres(home)
    server.acquire()
    ensure_database(server.url("postgres"), APP_DATABASE)
    url = server.url(APP_DATABASE)
    _EMBEDDED[url] = server
    return url


def with_driver(url: str, driver: str) -> str:
    """SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; Dagster's storage needs psycopg2."""
    parsed = make_url(url)
    return parsed.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


def redact(url: str | URL) -> str:
    """The URL with any credential shown as ***: the only form that may reach logs or output.
    The one redaction (core.redact) does the work, on the URL as written."""
    if isinstance(url, URL):
        url = url.render_as_string(hide_password=False)
    return redact_text(url)


def ensure_database(server_url: str, name: str) -> None:
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            exists = conn.scalar(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            )
            if not exists:
                try:
                    conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
                except sa.exc.DBAPIError:
                    # Another process created it between our look and our CREATE.
                    if not conn.scalar(
                        sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                    ):
                        raise
    finally:
        engine.dispose()


def create_app_engine(url: str, *, pool_size: int = 5) -> Engine:
    engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=5,
        pool_pre_ping=True,  # a restarted server leaves dead pooled connections behind
        pool_recycle=1800,
    )
    server = _EMBEDDED.get(url)
    if server is not None:
        _start_again_when_dead(engine, server)
    return engine


def _start_again_when_dead(engine: Engine, server: EmbeddedPostgres) -> None:
    """A connection to the embedded server that fails because the server is gone (kill -9,
    the OOM killer) starts it again, through crash recovery, and connects once more: the
    retries of a running import or embedding then carry on instead of failing after their
    budget. This process is a registered user, so starting the server again is its right."""

    @sa.event.listens_for(engine, "do_connect")
    def connect(dialect, record, cargs, cparams):
        try:
            return dialect.connect(*cargs, **cparams)
        except dialect.loaded_dbapi.OperationalError:
            if server.is_running():
                raise
            log.warning("the embedded PostgreSQL in %s is gone: starting it again", server.pgdata)
            server.acquire()
            return dialect.connect(*cargs, **cparams)


@lru_cache(maxsize=8)
def cached_engine(url: str) -> Engine:
    """One engine per URL per process: Dagster resources are rebuilt for every step."""
    return create_app_engine(url)
