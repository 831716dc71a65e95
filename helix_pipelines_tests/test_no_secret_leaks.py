"""Planted secrets (a password holding '@', a ?password= parameter, an API key) never appear
in what the project writes: CLI output, last_error, the job summary, provider errors.
The embedding paths (401/500 from the API, embedding_error, /metrics) are covered elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helix_pipelines.db import jobs
from helix_pipelines.embedding.base import ProviderConfigError
from helix_pipelines.embedding.openai_provider import OpenAIProvider
from helix_pipelines_tests.support.db_fixtures import subprocess_env

PASSWORD = "Pl4nted@pw/Secret"
QUERY_PASSWORD = "Pl4ntedQuery@x"
API_KEY = "sk-proj-Pl4ntedApiKey0123456789"
FRAGMENTS = ("Pl4nted", "pw/Secret", "ApiKey0123")


def assert_clean(*texts: str) -> None:
    for text in texts:
        for fragment in FRAGMENTS:
            assert fragment not in text, text


def test_db_url_hides_a_password_with_at_and_a_password_parameter(settings):
    url = f"postgresql://app:{PASSWORD}@db.invalid/helix?password={QUERY_PASSWORD}"
    done = cli(subprocess_env(settings, HELIX_DATABASE_URL=url), "db", "url")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "app:***@" in done.stdout and "password=***" in done.stdout
    assert_clean(done.stdout, done.stderr)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "helix_pipelines.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_a_file_of_environment_variables_leaks_nothing(engine, settings, tmp_path):
    leaky = tmp_path / "settings.csv"
    leaky.write_text(
        f"OPENAI_API_KEY={API_KEY}\n"
        f"HELIX_DATABASE_URL=postgresql://app:{PASSWORD}@db/helix?password={QUERY_PASSWORD}\n"
        f"PGPASSWORD={PASSWORD}\n"
    )
    env = subprocess_env(settings)
    done = cli(env, "import", str(leaky), "--json", "--no-embed")
    [summary] = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert summary["status"] == "failed" and "found columns" in summary["last_error"]
    status = cli(env, "status", "--json")
    [job] = jobs.list_jobs(engine, limit=10)
    assert_clean(done.stdout, done.stderr, status.stdout, status.stderr, job.last_error or "")


def test_provider_errors_hide_credentials_in_the_base_url():
    provider = OpenAIProvider(
        api_key=API_KEY,
        base_url=f"https://user:{PASSWORD}@llm.invalid/v1?api_key={API_KEY}",
        model="m",
        dim=8,
        timeout_s=1,
    )
    error = ProviderConfigError(f"refused at {provider._base_url()} with key {API_KEY}")
    assert_clean(repr(provider), str(error), repr(error))
    assert_clean(str(ProviderConfigError(f"https://u:{PASSWORD}@h/v1 Bearer {API_KEY}")))
