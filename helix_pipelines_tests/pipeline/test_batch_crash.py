"""kill -9 of a real process at each step of a batch's life, then recovery through the
operator's command (`helix-pipelines batches --collect`, what the sensor's run does too):
every pair embedded exactly once, no batch created (paid) twice, no file uploaded twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from helix_pipelines import cli
from helix_pipelines.db import embedding_batches as batches
from helix_pipelines.embedding.openai_batch import BatchClient
from helix_pipelines.pipeline import batch_embedding as flow
from helix_pipelines_tests.support.db_fixtures import TEST_EMBEDDING_DIM, subprocess_env
from helix_pipelines_tests.support.embed_driver import (
    MODEL,
    insert_job,
    mismatched_vectors,
    sample_pairs,
    stored_pairs,
)

PAIRS = 30


def run_child_until(settings, server, action: str, step: str) -> None:
    """Start the child, wait until it reports `step`, SIGKILL its whole process group."""
    env = subprocess_env(settings, OPENAI_API_KEY=server.api_key, OPENAI_BASE_URL=server.base_url)
    child = subprocess.Popen(
        [sys.executable, "-m", "helix_pipelines_tests.support.batch_child", action,
         "--stop-at", step],
        env=env, stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        line = child.stdout.readline()  # blocks until the child is at the step (or exits)
        assert line.startswith(f"AT {step}"), f"child did not reach {step}: {line!r}"
        os.killpg(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        child.stdout.close()


def recover_through_cli(settings, server, monkeypatch, capsys) -> None:
    for name, value in subprocess_env(
        settings, OPENAI_API_KEY=server.api_key, OPENAI_BASE_URL=server.base_url,
        HELIX_EMBEDDING_PROVIDER="openai", HELIX_EMBEDDING_MODEL=MODEL,
    ).items():  # fmt: skip
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert cli.main(["batches", "--collect"]) == 0


@pytest.mark.parametrize(
    ("action", "step"),
    [("submit", "built"), ("submit", "uploaded"), ("submit", "created"), ("cycle", "writing")],
)
def test_kill_at_each_step_then_recover(
    engine, settings, fake_openai, action, step, monkeypatch, capsys
):
    fake_openai.default_dim = TEST_EMBEDDING_DIM
    job_id, _ = insert_job(engine, sample_pairs(PAIRS))
    if action == "cycle":  # submitted whole; the kill comes while collecting
        client = BatchClient(api_key=fake_openai.api_key, base_url=fake_openai.base_url)
        flow.submit_batches(engine, client, flow.BatchOptions(model=MODEL, dim=TEST_EMBEDDING_DIM))
        client.close()

    run_child_until(settings, fake_openai, action, step)
    recover_through_cli(settings, fake_openai, monkeypatch, capsys)

    pairs = stored_pairs(engine, job_id)
    assert [(p.status, p.attempts) for p in pairs] == [("completed", 1)] * PAIRS
    assert mismatched_vectors(pairs, TEST_EMBEDDING_DIM) == []
    assert fake_openai.batch.stats.batches_created == 1
    assert fake_openai.batch.stats.files_uploaded == 1
    (row,) = batches.list_batches(engine)
    assert row.state == "collected" and row.request_count == PAIRS


def test_cli_submits_lists_cancels_and_collects(engine, settings, fake_openai, monkeypatch, capsys):
    fake_openai.batch.delay_s = 1e9
    job_id, _ = insert_job(engine, sample_pairs(7))
    recover_through_cli(settings, fake_openai, monkeypatch, capsys)  # nothing to do yet
    capsys.readouterr()

    assert cli.main(["batches", "--submit", "--json"]) == 0
    submitted = json.loads(capsys.readouterr().out)
    (listed,) = submitted["batches"]
    assert submitted["pairs"] == 7 and submitted["estimated_cost_usd"] > 0
    assert (listed["state"], listed["pairs"], listed["id"]) == (
        "validating", 7, submitted["submitted"][0],
    )  # fmt: skip
    assert cli.main(["batches"]) == 0
    assert "validating" in capsys.readouterr().out

    assert cli.main(["batches", "--cancel", listed["id"][:8], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cancelled"] == [listed["id"]]
    assert cli.main(["batches", "--collect", "--json"]) == 0
    collected = json.loads(capsys.readouterr().out)
    assert collected["collected"] == [listed["id"]] and collected["batches"] == []
    assert cli.main(["batches", "--all", "--json"]) == 0
    assert [b["state"] for b in json.loads(capsys.readouterr().out)["batches"]] == ["collected"]
    assert {p.status for p in stored_pairs(engine, job_id)} == {"pending"}
