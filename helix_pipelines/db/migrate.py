"""Apply the Alembic migrations and check the schema against the configuration."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

REPO_ROOT = Path(__file__).resolve().parents[2]


class SchemaMismatch(RuntimeError):
    """The database was created for another configuration; one clear line, no trace."""


def alembic_config(connection: sa.Connection, embedding_dim: int) -> Config:
    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.attributes["connection"] = connection
    config.attributes["embedding_dim"] = embedding_dim
    return config


def upgrade(engine: Engine, embedding_dim: int, revision: str = "head") -> None:
    with engine.begin() as connection:
        # One migrator at a time: several processes may start together on a fresh database.
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(72110001)"))
        command.upgrade(alembic_config(connection, embedding_dim), revision)
    check_embedding_dim(engine, embedding_dim)


def downgrade(engine: Engine, embedding_dim: int, revision: str = "base") -> None:
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection, embedding_dim), revision)


def schema_embedding_dim(engine: Engine) -> int | None:
    """The width of qa_pair.embedding, or None before the schema exists."""
    with engine.connect() as connection:
        return connection.scalar(
            sa.text(
                "SELECT atttypmod FROM pg_attribute"
                " WHERE attrelid = to_regclass('qa_pair') AND attname = 'embedding'"
            )
        )


def check_embedding_dim(engine: Engine, embedding_dim: int) -> None:
    actual = schema_embedding_dim(engine)
    if actual is not None and actual != embedding_dim:
        raise SchemaMismatch(
            f"HELIX_EMBEDDING_DIM is {embedding_dim} but the database's qa_pair.embedding is "
            f"vector({actual}): set HELIX_EMBEDDING_DIM={actual}, or point HELIX_DATABASE_URL at "
            "a database created for this dimension"
        )
