"""The test database: one embedded PostgreSQL for the session, in a temporary HELIX_HOME (never
the developer's), a migrated database, and a cheap clean slate (TRUNCATE) for every test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from helix_pipelines.db import migrate
from helix_pipelines.db.embedded import EmbeddedPostgres
from helix_pipelines.db.engine import create_app_engine, ensure_database
from helix_pipelines.settings import Settings, load_settings

TEST_EMBEDDING_DIM = 384
TEST_DATABASE = "helix_test"
APP_TABLES = (
    "embedding_batch_pair",
    "embedding_batch",
    "qa_pair",
    "import_row_error",
    "import_duplicate",
    "qa_pair_change",
    "import_job",
    "pipeline_state",
    "run_heartbeat",
    "stored_file",
)
# Variables that must not leak from the developer's shell into the tests.
ISOLATED_VARIABLES = (
    "HELIX_HOME", "HELIX_DATABASE_URL", "HELIX_INBOX_DIR", "HELIX_EMBEDDING_PROVIDER",
    "HELIX_EMBEDDING_MODEL", "HELIX_EMBEDDING_DIM", "OPENAI_API_KEY", "OPENAI_BASE_URL",
    "DAGSTER_HOME", "PROMETHEUS_MULTIPROC_DIR", "HELIX_FILE_STORE", "HELIX_EXECUTOR",
    "HELIX_CELERY_BROKER_URL",
)  # fmt: skip


@pytest.fixture(scope="session")
def helix_home(tmp_path_factory) -> Path:
    # Short: the server's unix socket lives under it and socket paths are limited to ~100 bytes.
    return tmp_path_factory.mktemp("hx")


@pytest.fixture(scope="session")
def embedded_pg(helix_home) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(helix_home)
    server.acquire()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def database_url(embedded_pg) -> str:
    ensure_database(embedded_pg.url("postgres"), TEST_DATABASE)
    url = embedded_pg.url(TEST_DATABASE)
    engine = create_app_engine(url)
    migrate.upgrade(engine, TEST_EMBEDDING_DIM)
    engine.dispose()
    return url


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(helix_home) -> Iterator[None]:
    """Every test sees a HELIX_HOME of its own session; nothing of the developer's."""
    saved = {name: os.environ.pop(name) for name in ISOLATED_VARIABLES if name in os.environ}
    os.environ["HELIX_HOME"] = str(helix_home)
    os.environ["HELIX_EMBEDDING_DIM"] = str(TEST_EMBEDDING_DIM)
    yield
    for name in ISOLATED_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(saved)


@pytest.fixture(scope="session")
def session_engine(database_url) -> Iterator[sa.Engine]:
    engine = create_app_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(session_engine) -> sa.Engine:
    """The test database, emptied before the test."""
    truncate_all(session_engine)
    return session_engine


def truncate_all(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {', '.join(APP_TABLES)} RESTART IDENTITY CASCADE"))


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    """Settings of a test: the shared test database, a HELIX_HOME of the test's own for files."""
    return load_settings(
        home=tmp_path / "home", database_url=database_url, embedding_dim=TEST_EMBEDDING_DIM
    )


def clean_environment() -> dict[str, str]:
    """This process's environment without any of the variables the tests isolate."""
    return {k: v for k, v in os.environ.items() if k not in ISOLATED_VARIABLES}


def subprocess_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment for a child process that must use the test's database and home."""
    env = clean_environment()
    env.update(
        HELIX_HOME=str(settings.home),
        HELIX_DATABASE_URL=settings.database_url.get_secret_value(),
        HELIX_EMBEDDING_DIM=str(settings.embedding_dim),
        DAGSTER_HOME=str(settings.home / "dagster"),
    )
    env.update(extra)
    return env
