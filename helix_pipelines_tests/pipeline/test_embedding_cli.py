"""`helix-pipelines embed --json` in a real process against the fake server; the API key never
shows, not even when the server refuses it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from dagster import instance_for_test, materialize

from helix_pipelines.db.embeddings import PARKED_PREFIX
from helix_pipelines.defs.assets import qa_embeddings
from helix_pipelines.defs.partitions import import_files
from helix_pipelines.defs.resources import (
    DatabaseResource,
    EmbeddingResource,
    ImportSettingsResource,
)
from helix_pipelines_tests.support.db_fixtures import TEST_EMBEDDING_DIM, subprocess_env
from helix_pipelines_tests.support.embed_driver import (
    insert_job,
    mismatched_vectors,
    sample_pairs,
    status_counts,
    stored_pairs,
)

DIM = TEST_EMBEDDING_DIM
WRONG_KEY = "sk-wrong-SECRET-0123456789abcdef"


def run_cli(settings, fake, api_key: str, *args: str) -> subprocess.CompletedProcess:
    env = subprocess_env(
        settings, OPENAI_API_KEY=api_key, OPENAI_BASE_URL=fake.base_url,
        HELIX_EMBEDDING_PROVIDER="openai",
    )  # fmt: skip
    command = [str(Path(sys.executable).parent / "helix-pipelines"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def run_embed(settings, fake, api_key: str, *args: str) -> subprocess.CompletedProcess:
    return run_cli(settings, fake, api_key, "embed", "--json", *args)


def test_embed_command_embeds_every_pending_pair(engine, settings, fake_openai):
    insert_job(engine, sample_pairs(30, tag="a "))
    insert_job(engine, sample_pairs(20, tag="b "))

    done = run_embed(settings, fake_openai, fake_openai.api_key)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["embedded"], result["failed"], result["pending"]) == (50, 0, 0)
    assert result["circuit_state"] == "closed"
    assert status_counts(engine) == {"completed": 50}
    assert mismatched_vectors(stored_pairs(engine), DIM) == []


def test_a_refused_key_never_shows_in_the_output(engine, settings, fake_openai):
    insert_job(engine, sample_pairs(5))

    done = run_embed(settings, fake_openai, WRONG_KEY)

    assert done.returncode != 0
    assert "401" in done.stderr
    for secret in (WRONG_KEY, "SECRET"):
        assert secret not in done.stdout + done.stderr
    assert status_counts(engine) == {"pending": 5}


def test_a_refused_key_never_shows_in_dagster_events(engine, database_url, tmp_path, fake_openai):
    _, key = insert_job(engine, sample_pairs(5))
    resources = {
        "database": DatabaseResource(
            helix_home=str(tmp_path), database_url=database_url, embedding_dim=DIM
        ),
        "embedding": EmbeddingResource(
            provider="openai", api_key=WRONG_KEY, base_url=fake_openai.base_url, dim=DIM
        ),
        "import_settings": ImportSettingsResource(
            inbox_dir=str(tmp_path / "inbox"), files_dir=str(tmp_path / "files")
        ),
    }
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(import_files.name, [key])
        result = materialize(
            [qa_embeddings], partition_key=key, instance=instance, resources=resources,
            raise_on_error=False,
        )  # fmt: skip
        logs = instance.all_logs(result.run_id)

    assert not result.success
    text = " ".join(str(entry) for entry in logs)
    assert "401" in text
    assert "SECRET" not in text


def fail_pairs(engine, job_id, error: str, count: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE qa_pair SET embedding_status = 'failed', embedding_error = :e, "
                "embedding_attempts = 5 WHERE id IN (SELECT id FROM qa_pair "
                "WHERE import_job_id = :j AND embedding_status = 'pending' ORDER BY id LIMIT :n)"
            ),
            {"e": error, "j": job_id, "n": count},
        )


def test_retry_failed_returns_one_imports_failed_pairs_and_embeds_them(
    engine, settings, fake_openai
):
    job_id, key = insert_job(engine, sample_pairs(6, tag="a "))
    other_id, _ = insert_job(engine, sample_pairs(2, tag="b "))
    fail_pairs(engine, job_id, PARKED_PREFIX + "server error (503): down", 3)
    fail_pairs(engine, job_id, "Invalid value for 'input'", 1)
    fail_pairs(engine, other_id, "Invalid value for 'input'", 2)

    done = run_embed(settings, fake_openai, fake_openai.api_key, "--retry-failed", key)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["requeued"], result["embedded"], result["failed"]) == (4, 6, 0)
    assert status_counts(engine, job_id) == {"completed": 6}
    assert status_counts(engine, other_id) == {"failed": 2}  # not asked for
    everything = run_embed(settings, fake_openai, fake_openai.api_key, "--retry-failed")
    assert json.loads(everything.stdout)["requeued"] == 2
    assert status_counts(engine) == {"completed": 8}


def test_status_shows_why_embeddings_are_blocked(engine, settings, fake_openai):
    insert_job(engine, sample_pairs(3))
    fake_openai.set_fault_rates({"429_quota": 1.0})
    assert run_embed(settings, fake_openai, fake_openai.api_key).returncode != 0

    listing = run_cli(settings, fake_openai, fake_openai.api_key, "status", "--json")
    text = run_cli(settings, fake_openai, fake_openai.api_key, "status")
    another_key = run_cli(settings, fake_openai, "sk-another", "status", "--json")

    [job] = json.loads(listing.stdout)
    assert job["embeddings_blocked"]["reason"] == "quota"
    assert job["embeddings"] == {"completed": 0, "failed": 0, "pending": 3}
    assert "embeddings blocked (quota)" in text.stdout
    assert json.loads(another_key.stdout)[0]["embeddings_blocked"] is None  # a new setup
    assert status_counts(engine) == {"pending": 3}
