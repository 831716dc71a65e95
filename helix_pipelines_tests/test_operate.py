"""What operators use besides imports: metrics across processes, the Launchpad jobs, search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import instance_for_test

from helix_pipelines.defs.ops import embed_pending_job, recover_stale_imports, rollback_import
from helix_pipelines_tests.support.db_fixtures import subprocess_env
from helix_pipelines_tests.support.embed_driver import insert_job, status_counts
from helix_pipelines_tests.support.resources import local_resources

COUNTING_CHILD = """
import sys
from helix_pipelines import metrics
for _ in range(int(sys.argv[1])):
    metrics.record_batch("success", 0.2, 100)
metrics.record_rows(pairs=7, duplicates=2, errors=1)
"""


def _sample_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the scrape")


def test_counters_from_dead_processes_add_up_and_their_files_are_folded(tmp_path, engine):
    from prometheus_client import generate_latest

    from helix_pipelines import metrics

    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    for batches in (3, 4, 5):
        subprocess.run([sys.executable, "-c", COUNTING_CHILD, str(batches)], env=env, check=True)
    assert len(list(metrics_dir.glob("counter_*.db"))) == 3

    folded = metrics.compact_dead_process_files(metrics_dir)

    assert folded == 6  # three counter files and three histogram files
    assert sorted(p.name for p in metrics_dir.glob("*.db")) == [
        "counter_archive.db",
        "histogram_archive.db",
    ]
    scrape = generate_latest(
        metrics.build_registry(metrics_dir, engine, lambda: {"state": "closed"})
    ).decode()
    assert _sample_value(scrape, 'helix_import_batches_total{status="success"}') == 12
    assert (
        _sample_value(scrape, 'helix_import_batch_duration_seconds_count{outcome="success"}') == 12
    )
    assert _sample_value(scrape, 'helix_import_rows_total{outcome="pair"}') == 21
    assert _sample_value(scrape, "helix_database_up") == 1
    assert _sample_value(scrape, "helix_circuit_breaker_state") == 0


def _resources(settings, tmp_path: Path) -> dict:
    return local_resources(settings.database_url.get_secret_value(), tmp_path)


def test_launchpad_jobs_with_typed_config(engine, settings, tmp_path):
    job_id, key = insert_job(engine, [(f"question {i}?", f"answer {i}") for i in range(12)])
    other_id, _ = insert_job(engine, [("another question?", "another answer")])
    resources = _resources(settings, tmp_path)
    with instance_for_test() as instance:
        embedded = embed_pending_job.execute_in_process(
            run_config={"ops": {"embed_pending_op": {"config": {"import_job": key}}}},
            instance=instance,
            resources=resources,
        )
        assert embedded.success
        assert status_counts(engine, job_id) == {"completed": 12}
        assert status_counts(engine, other_id) == {"pending": 1}

        rolled_back = rollback_import.execute_in_process(
            run_config={"ops": {"rollback_import_op": {"config": {"import_job": str(job_id)}}}},
            instance=instance,
            resources=resources,
        )
        assert rolled_back.success
        assert status_counts(engine, job_id) == {}
        assert status_counts(engine, other_id) == {"pending": 1}

        recovered = recover_stale_imports.execute_in_process(
            run_config={"ops": {"recover_stale_imports_op": {"config": {"stale_after_s": 1}}}},
            instance=instance,
            resources=resources,
        )
        assert recovered.success
    with engine.connect() as conn:
        status = conn.scalar(sa.text("SELECT status FROM import_job WHERE id = :i"), {"i": job_id})
    assert status == "rolled_back"


@pytest.mark.slow
def test_search_returns_the_pair_asked_for_first(engine, settings):
    pairs = [
        ("How do I reset my password?", "Use the link on the sign-in page."),
        ("Which payment methods do you accept?", "Cards, SEPA and PayPal."),
        ("Where is my order?", "Open Orders and follow the tracking link."),
        ("Can I get a refund?", "Within 14 days of payment."),
    ]
    insert_job(engine, pairs)
    env = subprocess_env(settings, HELIX_EMBEDDING_PROVIDER="local")
    cli = [sys.executable, "-m", "helix_pipelines.cli"]
    subprocess.run([*cli, "embed"], env=env, check=True, capture_output=True, timeout=120)

    done = subprocess.run(
        [*cli, "search", "which payment methods are accepted", "-k", "2", "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    hits = json.loads(done.stdout)
    assert len(hits) == 2
    assert hits[0]["question"] == "Which payment methods do you accept?"
    assert set(hits[0]) == {
        "question", "answer", "category", "import_job_id", "partition_key", "distance",
    }  # fmt: skip
    assert hits[0]["distance"] <= hits[1]["distance"]


TAKES_A_JOB_AND_DIES = """
import os, sys
from helix_pipelines.db import jobs
from helix_pipelines.db.engine import create_app_engine, with_driver
engine = create_app_engine(with_driver(os.environ["HELIX_DATABASE_URL"], "psycopg"))
jobs.start_job(engine, sys.argv[1], "run-of-a-dead-process", stale_after_s=300)
"""


def test_imports_whose_run_died_are_stalled_not_active(engine, settings, tmp_path):
    from prometheus_client import generate_latest

    from helix_pipelines import metrics
    from helix_pipelines.db import jobs

    live_id, _ = insert_job(engine, [("q1", "a1")], status="pending")
    dead_id, _ = insert_job(engine, [("q2", "a2")], status="pending")
    jobs.start_job(engine, live_id, "run-of-this-process", stale_after_s=300)
    subprocess.run([sys.executable, "-c", TAKES_A_JOB_AND_DIES, str(dead_id)],
                   env=subprocess_env(settings), check=True, timeout=60)  # fmt: skip
    (tmp_path / "metrics").mkdir()
    scrape = generate_latest(
        metrics.build_registry(tmp_path / "metrics", engine, lambda: {"state": "closed"})
    ).decode()
    assert _sample_value(scrape, "helix_import_active_jobs") == 1
    assert _sample_value(scrape, "helix_import_stalled_jobs") == 1
