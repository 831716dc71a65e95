"""The whole thing as an operator sees it: `helix-pipelines dev`, two files dropped in the inbox,
imports and embeddings finishing on their own, checks and metrics, the asset graph in a real
browser, and nothing left running afterwards."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from helix_pipelines.core.naming import partition_key_for
from helix_pipelines_tests.support.browser import render
from helix_pipelines_tests.support.db_fixtures import clean_environment
from helix_pipelines_tests.support.processes import (
    free_port,
    graphql,
    processes_using,
    try_graphql,
    wait_for,
)

# Installing Debian's chromium on a fresh machine takes minutes on top of the journey itself.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CLEAN = (
    "question,answer,category\n"
    "How do I reset my password?,Use the link on the sign-in page.,account\n"
    "Can I pay by invoice?,Yes on annual plans.,billing\n"
    "Where is my order?,Open Orders and follow the tracking link.,orders\n"
)
WITH_BAD_ROWS = (
    "Question;Response;Topic\n"
    "How do I export my data?;Settings, then Export.;data\n"
    ";An answer without a question;data\n"
    "A question without an answer;;data\n"
    "Is there an API?;Yes, documented at /docs/api.;developers\n"
)
MATERIALIZATIONS = """
{ assetOrError(assetKey: {path: ["qa_embeddings"]}) {
    ... on Asset { assetMaterializations(limit: 20) { partition runId } } } }
"""
CHECKS = """
query($name: String!) { assetCheckExecutions(assetKey: {path: ["qa_embeddings"]},
    checkName: $name, limit: 20) { runId status evaluation { success } } }
"""

BACKFILL = """
mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
    __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }
"""
BACKFILL_STATUS = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status } } }
"""


def _drop(inbox: Path, name: str, text: str) -> str:
    """Write-then-rename, as an upload tool would; returns the partition key to expect."""
    staging = inbox / f".{name}.part"
    staging.write_text(text, encoding="utf-8")
    staging.rename(inbox / name)
    return partition_key_for(name, hashlib.sha256(text.encode()).hexdigest())


def _embedded_partitions(port: int) -> dict[str, str]:
    answer = try_graphql(port, MATERIALIZATIONS) or {}
    asset = (answer.get("data") or {}).get("assetOrError") or {}
    return {m["partition"]: m["runId"] for m in asset.get("assetMaterializations", [])}


def _cli_json(env: dict, *args: str):
    result = subprocess.run(
        [sys.executable, "-m", "helix_pipelines.cli", *args, "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(result.stdout)


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    samples = (line.rpartition(" ") for line in lines if line and not line.startswith("#"))
    return {name: float(value) for name, _, value in samples}


def test_operator_journey(tmp_path_factory, tmp_path):
    home = tmp_path_factory.mktemp("e2e")
    port, metrics_port = free_port(), free_port()
    env = clean_environment()
    env.update(HELIX_HOME=str(home), HELIX_EMBEDDING_DIM="256")
    dev = subprocess.Popen(
        [sys.executable, "-m", "helix_pipelines.cli", "dev", "--port", str(port),
         "--metrics-port", str(metrics_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: try_graphql(port, "{ assetNodes { id } }"), 180, "the webserver")
        inbox = home / "inbox"
        inbox.mkdir(exist_ok=True)
        clean_key = _drop(inbox, "clean.csv", CLEAN)
        bad_key = _drop(inbox, "with bad rows.csv", WITH_BAD_ROWS)

        runs = wait_for(
            lambda: (p := _embedded_partitions(port)).keys() >= {clean_key, bad_key} and p,
            300,
            "both imports and their embeddings",
        )
        jobs = {j["partition_key"]: j for j in _cli_json(env, "status")}
        assert jobs[clean_key]["status"] == "completed"
        assert jobs[clean_key]["embeddings"] == {"completed": 3, "failed": 0, "pending": 0}
        assert jobs[bad_key]["status"] == "completed_with_errors"
        assert (jobs[bad_key]["pairs_created"], jobs[bad_key]["row_errors"]) == (2, 2)
        detail = _cli_json(env, "status", bad_key)
        assert [(e["source_row"], e["error_code"]) for e in detail["errors"]] == [
            (2, "missing_question"),
            (3, "missing_answer"),
        ]

        for check in ("embedding_coverage", "embedding_dimensions", "import_accounting"):
            executions = graphql(port, CHECKS, {"name": check})["data"]["assetCheckExecutions"]
            by_run = {e["runId"]: e for e in executions}
            for key in (clean_key, bad_key):
                assert by_run[runs[key]]["evaluation"]["success"], (check, key)

        _backfill_every_embedding_partition(port)

        figures = _metrics(metrics_port)
        assert figures['helix_import_jobs{status="completed"}'] == 1
        assert figures['helix_import_jobs{status="completed_with_errors"}'] == 1
        assert figures['helix_import_rows_total{outcome="error"}'] == 2
        assert figures['helix_import_rows_total{outcome="pair"}'] == 5
        assert figures["helix_embeddings_pending"] == 0
        assert figures['helix_embedding_requests_total{outcome="success"}'] >= 2
        assert figures['helix_import_batches_total{status="success"}'] >= 2

        screenshot = tmp_path / "asset-graph.png"
        dom = render(f"http://127.0.0.1:{port}/asset-groups", tmp_path / "chromium", screenshot)
        assert "qa_pairs" in dom and "qa_embeddings" in dom
        assert screenshot.stat().st_size > 10_000
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=90)
    wait_for(lambda: not processes_using(str(home)), 30, "every process to stop")


def _backfill_every_embedding_partition(port: int) -> None:
    """What an operator does from the UI to re-embed everything: a backfill of qa_embeddings
    over all partitions, one run per partition."""
    params = {"assetSelection": [{"path": ["qa_embeddings"]}], "allPartitions": True}
    launched = graphql(port, BACKFILL, {"params": params})["data"]["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    done = ("COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED", "COMPLETED")

    def status():
        answer = try_graphql(port, BACKFILL_STATUS, {"id": launched["backfillId"]}) or {}
        found = ((answer.get("data") or {}).get("partitionBackfillOrError") or {}).get("status")
        return found if found in done else None

    assert wait_for(status, 300, "the backfill") in ("COMPLETED_SUCCESS", "COMPLETED")
