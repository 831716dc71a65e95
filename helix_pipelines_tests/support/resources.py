"""The code location's resources for a test: its database, a home of its own, local embeddings."""

from __future__ import annotations

from pathlib import Path

from helix_pipelines.defs.resources import (
    DatabaseResource,
    EmbeddingResource,
    ImportSettingsResource,
)
from helix_pipelines_tests.support.db_fixtures import TEST_EMBEDDING_DIM


def local_resources(database_url: str, home: Path, **import_settings) -> dict:
    return {
        "database": DatabaseResource(
            helix_home=str(home), database_url=database_url, embedding_dim=TEST_EMBEDDING_DIM
        ),
        "import_settings": ImportSettingsResource(
            inbox_dir=str(home / "inbox"), files_dir=str(home / "files"), **import_settings
        ),
        "embedding": EmbeddingResource(provider="local", dim=TEST_EMBEDDING_DIM),
    }
