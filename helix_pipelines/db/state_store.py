"""The limiter's and the breaker's shared state in PostgreSQL: one jsonb row per name, changed
under its row lock, so every run on every machine sees and respects the same limits.

Why PostgreSQL rather than a Dagster pool: a pool caps concurrent steps, not requests or tokens
per minute, and it knows nothing of retry-after or an open circuit; the database is already
shared by every process of the deployment and each change is one short transaction.
"""

from __future__ import annotations

import json
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from helix_pipelines.core.shared_state import Transition

T = TypeVar("T")

_SELECT = sa.text("SELECT data FROM pipeline_state WHERE name = :name FOR UPDATE")
_CREATE = sa.text(
    "INSERT INTO pipeline_state (name, data) VALUES (:name, 'null'::jsonb) "
    "ON CONFLICT (name) DO NOTHING"
)
_SAVE = sa.text(
    "UPDATE pipeline_state SET data = CAST(:data AS jsonb), updated_at = now() WHERE name = :name"
)


class PostgresStateStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def transact(self, name: str, fn: Transition[T]) -> T:
        with self._engine.begin() as conn:
            row = conn.execute(_SELECT, {"name": name}).first()
            if row is None:
                conn.execute(_CREATE, {"name": name})
                row = conn.execute(_SELECT, {"name": name}).one()
            new_state, result = fn(row.data)
            conn.execute(_SAVE, {"name": name, "data": json.dumps(new_state)})
            return result

    def read(self, name: str) -> dict | None:
        with self._engine.connect() as conn:
            return conn.scalar(
                sa.text("SELECT data FROM pipeline_state WHERE name = :n"), {"n": name}
            )
