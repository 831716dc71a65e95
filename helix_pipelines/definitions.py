"""The one composition root: reads the environment and wires the Dagster definitions."""

from __future__ import annotations

from dagster import Definitions, EnvVar

from helix_pipelines.defs.assets import qa_embeddings, qa_pairs
from helix_pipelines.defs.resources import DatabaseResource
from helix_pipelines.settings import Settings, load_settings


def build_definitions(settings: Settings) -> Definitions:
    return Definitions(
        assets=[qa_pairs, qa_embeddings],
        resources={"database": _database_resource(settings)},
    )


def _database_resource(settings: Settings) -> DatabaseResource:
    # EnvVar keeps the URL (and any password in it) out of the UI and the run config.
    url = EnvVar("HELIX_DATABASE_URL") if settings.database_url else None
    return DatabaseResource(
        helix_home=str(settings.home), database_url=url, embedding_dim=settings.embedding_dim
    )


defs = build_definitions(load_settings())
