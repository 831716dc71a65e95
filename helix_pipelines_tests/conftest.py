"""Fixtures shared by the whole suite live in support/ and are registered here."""

pytest_plugins = [
    "helix_pipelines_tests.support.db_fixtures",
    "helix_pipelines_tests.support.openai_fixtures",
]
