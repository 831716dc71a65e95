"""Alembic environment: the URL and the vector dimension come from the caller or the settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config


def _connectable():
    connection = config.attributes.get("connection")
    if connection is not None:
        return connection
    from helix_pipelines.db.engine import resolve_database_url
    from helix_pipelines.settings import load_settings

    settings = load_settings()
    url = resolve_database_url(
        settings.database_url.get_secret_value() if settings.database_url else None,
        settings.home,
    )
    return create_engine(url, poolclass=pool.NullPool)


def run_migrations_online() -> None:
    connectable = _connectable()
    if hasattr(connectable, "connect"):
        with connectable.connect() as connection:
            context.configure(connection=connection, transaction_per_migration=True)
            with context.begin_transaction():
                context.run_migrations()
    else:
        context.configure(connection=connectable, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported: the dimension check needs a database")
run_migrations_online()
