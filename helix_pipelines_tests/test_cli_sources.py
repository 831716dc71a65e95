"""`import --source KEY [--allow-shrink]` and `status JOB` as real processes: a shrinking
version is refused with a message saying what to do, confirmed by the same command with
`--allow-shrink`, and `status` lists the source's versions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from helix_pipelines.pipeline.importing import import_file
from helix_pipelines.pipeline.intake import intake_file
from helix_pipelines_tests.test_cli_import import cli, json_lines


def write(path: Path, n: int) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("question", "answer"))
        writer.writerows((f"Question {i}?", f"Answer {i}.") for i in range(n))
    return path


@pytest.mark.slow
def test_a_shrinking_version_is_refused_then_confirmed(engine, settings, tmp_path):
    first = write(tmp_path / "export.csv", 20)
    v1, _ = intake_file(engine, first, files_dir=tmp_path / "files", max_file_bytes=10**6,
                        move=False, source_key="help centre")  # fmt: skip
    assert import_file(engine, v1.id, run_id="v1").job.checkpoint_data["sync"]["added"] == 20

    shrunk = write(tmp_path / "export-2.csv", 4)
    refused = cli(settings, "import", str(shrunk), "--source", "help centre", "--no-embed")
    assert refused.returncode == 1
    assert "would retire 16 of the 20 pairs" in refused.stdout
    assert "--allow-shrink" in refused.stdout

    confirmed = cli(settings, "import", str(shrunk), "--source", "help centre", "--allow-shrink",
                    "--no-embed", "--json")  # fmt: skip
    assert confirmed.returncode == 0, confirmed.stderr[-3000:]
    [v2] = json_lines(confirmed)
    assert (v2["status"], v2["source_version"]) == ("completed", 2)
    assert {k: v2["sync"][k] for k in ("kept", "updated", "added", "retired")} == {
        "kept": 4, "updated": 0, "added": 0, "retired": 16,
    }  # fmt: skip

    status = cli(settings, "status", v2["partition_key"], "--json")
    versions = json.loads(status.stdout)["source_versions"]
    assert [(v["version"], v["current"]) for v in versions] == [(2, True), (1, False)]
