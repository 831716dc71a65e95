"""The Launchpad side of sources: `source` and `allow_shrink` in the qa_pairs config, and the
counts and first changes on each version's materialization."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from dagster import instance_for_test, materialize

from helix_pipelines.db import jobs
from helix_pipelines.defs.assets import qa_pairs
from helix_pipelines.defs.partitions import import_files
from helix_pipelines.pipeline.intake import intake_file
from helix_pipelines_tests.defs.test_partition_truth import PAIRS, latest_materialization
from helix_pipelines_tests.support.resources import local_resources


@pytest.fixture
def instance():
    with instance_for_test() as dagster_instance:
        yield dagster_instance


def write(path: Path, pairs: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("question", "answer"), *pairs])
    return path


def run_qa_pairs(engine, instance, resources, path: Path, config: dict) -> jobs.Job:
    job, _ = intake_file(engine, path, files_dir=path.parent / "files", max_file_bytes=10**6,
                         move=False)  # fmt: skip
    if not instance.has_dynamic_partition(import_files.name, job.partition_key):
        instance.add_dynamic_partitions(import_files.name, [job.partition_key])
    materialize(
        [qa_pairs], partition_key=job.partition_key, instance=instance, resources=resources,
        run_config={"ops": {"qa_pairs": {"config": config}}}, raise_on_error=False,
    )  # fmt: skip
    return jobs.get_job(engine, job.id)


def test_launchpad_source_and_allow_shrink(engine, settings, instance, tmp_path):
    resources = local_resources(settings.database_url.get_secret_value(), tmp_path)
    pairs = [(f"Question {i}?", f"Answer {i}.") for i in range(10)]
    v1 = run_qa_pairs(engine, instance, resources, write(tmp_path / "kb.csv", pairs),
                      {"source": "help"})  # fmt: skip
    assert (v1.status, v1.source_key, v1.source_version) == ("completed", "help", 1)

    # "help (2).csv" is a version of source "help" by its name; it would retire 8 of 10.
    shrunk = write(tmp_path / "help (2).csv", [pairs[0], ("Question 1?", "Answer 1, fixed.")])
    refused = run_qa_pairs(engine, instance, resources, shrunk, {})
    assert (refused.status, refused.source_version) == ("failed", 2)
    assert "would retire 8 of the 10 pairs" in refused.last_error

    confirmed = run_qa_pairs(engine, instance, resources, shrunk, {"allow_shrink": True})

    assert confirmed.status == "completed" and confirmed.id == refused.id
    shown = latest_materialization(instance, PAIRS, confirmed.partition_key)
    counts = {k: shown[f"sync_{k}"] for k in ("kept", "updated", "added", "retired")}
    assert counts == {"kept": 1, "updated": 1, "added": 0, "retired": 8}
    changes = [record.data for record in shown["first_changes"].records]
    assert changes[0] == {"change": "updated", "qa_pair_id": 2, "question": "Question 1?",
                          "old_answer": "Answer 1.", "new_answer": "Answer 1, fixed."}  # fmt: skip
    assert sorted(c["change"] for c in changes) == ["retired"] * 8 + ["updated"]
