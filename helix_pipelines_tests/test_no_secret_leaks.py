"""Planted secrets (a password holding '@', a ?password= parameter, an API key) never appear
in what the project writes: CLI output, last_error, the job summary, provider errors.
And, through every command an operator runs, in nothing else either."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

import pytest
import sqlalchemy as sa

from helix_pipelines.db import jobs
from helix_pipelines.embedding.base import ProviderConfigError
from helix_pipelines.embedding.openai_provider import OpenAIProvider
from helix_pipelines_tests.support.db_fixtures import subprocess_env
from helix_pipelines_tests.support.fake_openai import running_fake_openai
from helix_pipelines_tests.support.generate import write_qa_csv
from helix_pipelines_tests.support.processes import free_port, try_graphql, wait_for

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


def planted(database_url: str) -> str:
    """The test database's URL with a password holding '@' and '/' and a ?password= parameter
    (the embedded server trusts local connections, so both are sent and ignored)."""
    scheme, rest = database_url.split("://", 1)
    user, rest = rest.split(":", 1)
    _, rest = rest.split("@", 1)
    encoded = PASSWORD.replace("@", "%40").replace("/", "%2F")
    query = QUERY_PASSWORD.replace("@", "%40")
    return f"{scheme}://{user}:{encoded}@{rest}&password={query}"


def forget_the_breaker(engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM pipeline_state"))


def every_byte_under(*roots) -> str:
    found = []
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            found.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(found)


def database_texts(engine) -> str:
    queries = (
        "SELECT coalesce(last_error, '') || coalesce(checkpoint_data::text, '') FROM import_job",
        "SELECT coalesce(embedding_error, '') FROM qa_pair",
        "SELECT message || coalesce(raw_excerpt, '') FROM import_row_error",
        "SELECT data::text FROM pipeline_state",
    )
    with engine.connect() as conn:
        return "\n".join(str(v) for q in queries for v in conn.execute(sa.text(q)).scalars())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_planted_secrets_reach_no_output_of_any_command(engine, settings, database_url, tmp_path):
    """import, embed through a 401, 500s and a configuration error, recover, status, db url,
    metrics and dev, with the password and the API key planted: every byte they wrote (stdout,
    stderr, Dagster's event log and run storage, metrics files, /metrics, last_error,
    embedding_error, the breaker's state) is free of them."""
    good = write_qa_csv(tmp_path / "good.csv", 40, seed=3, bad_every=10**9)
    outputs: list[str] = []
    with running_fake_openai(api_key=API_KEY, default_dim=settings.embedding_dim) as fake:
        env = subprocess_env(
            settings,
            HELIX_DATABASE_URL=planted(database_url),
            OPENAI_API_KEY=API_KEY,
            OPENAI_BASE_URL=fake.base_url,
            HELIX_EMBEDDING_PROVIDER="openai",
            HELIX_EMBED_MAX_ATTEMPTS="1",
        )

        def run(*args: str) -> None:
            done = cli(env, *args)
            outputs.extend([done.stdout, done.stderr])

        run("import", str(good.path), "--json", "--no-embed")
        for fault, args in (("404_model", ("embed", "--json")),
                            ("401", ("embed", "--retry-failed", "--json")),
                            ("500", ("embed", "--json"))):  # fmt: skip
            fake.script(fault)
            run(*args)
            forget_the_breaker(engine)  # each fault meets a closed circuit
        for args in (("recover", "--json"), ("status", "--json"), ("status", good.path.name),
                     ("db", "url")):  # fmt: skip
            run(*args)
        outputs.append(scrape_metrics(env))
        outputs.extend(dev_outputs(env))
    assert {"401", "500", "404_model"} <= set(fake.stats.by_outcome)
    stored = every_byte_under(settings.home / "dagster", settings.home / "metrics")
    assert_clean(*outputs, database_texts(engine), stored)


def scrape_metrics(env) -> str:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "helix_pipelines.cli", "metrics", "--port", str(port),
         "--host", "127.0.0.1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        return wait_for(lambda: fetch(f"http://127.0.0.1:{port}/metrics"), 60, "/metrics")
    finally:
        server.terminate()
        out, err = server.communicate(timeout=30)
        assert_clean(out, err)


def fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.read().decode()
    except OSError:
        return None


def dev_outputs(env) -> list[str]:
    port = free_port()
    dev = subprocess.Popen(
        [sys.executable, "-m", "helix_pipelines.cli", "dev", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: try_graphql(port, "{ version }"), 180, "the webserver")
    finally:
        dev.send_signal(signal.SIGTERM)
        out, _ = dev.communicate(timeout=120)
    return [out]
