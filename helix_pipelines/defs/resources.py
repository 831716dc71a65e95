"""Small Dagster resources; the composition root (definitions.py) fills them from the settings."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from dagster import ConfigurableResource
from sqlalchemy.engine import Engine

from helix_pipelines.db.engine import cached_engine, resolve_database_url
from helix_pipelines.db.migrate import check_embedding_dim


class DatabaseResource(ConfigurableResource):
    """The application database: `database_url` when given, else the embedded server."""

    helix_home: str
    database_url: str | None = None
    embedding_dim: int = 1536

    def get_engine(self) -> Engine:
        return _checked_engine(self.database_url, self.helix_home, self.embedding_dim)


@lru_cache(maxsize=8)
def _checked_engine(database_url: str | None, helix_home: str, embedding_dim: int) -> Engine:
    engine = cached_engine(resolve_database_url(database_url, Path(helix_home)))
    check_embedding_dim(engine, embedding_dim)
    return engine
