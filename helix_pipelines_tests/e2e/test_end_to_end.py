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
query($asset: [String!]!, $name: String!) { assetCheckExecutions(assetKey: {path: $asset},
    checkName: $name, limit: 20) { runId status partition evaluation { success partition } } }
"""
PAIRS_MATERIALIZATION = """
query($partition: String!) { assetOrError(assetKey: {path: ["qa_pairs"]}) {
    ... on Asset { assetMaterializations(partitions: [$partition], limit: 1) { runId
        metadataEntries { label __typename
            ... on TableMetadataEntry { table { records } }
            ... on IntMetadataEntry { intValue } } } } } }
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

        checks = [("qa_pairs", "import_accounting"), ("qa_embeddings", "embedding_coverage"),
                  ("qa_embeddings", "embedding_dimensions"),
                  ("qa_embeddings", "oldest_pending_embedding")]  # fmt: skip
        for asset, check in checks:
            variables = {"asset": [asset], "name": check}
            executions = graphql(port, CHECKS, variables)["data"]["assetCheckExecutions"]
            by_run = {e["runId"]: e for e in executions}
            for key in (clean_key, bad_key):
                assert by_run[runs[key]]["evaluation"]["success"], (check, key)
                assert by_run[runs[key]]["partition"] == key, (check, key)
        assert _row_error_table(port, bad_key) == [
            (2, "missing_question"),
            (3, "missing_answer"),
        ]

        _backfill_every_embedding_partition(port)

        figures = _metrics(metrics_port)
        assert figures['helix_import_jobs{status="completed"}'] == 1
        assert figures['helix_import_jobs{status="completed_with_errors"}'] == 1
        assert figures['helix_import_rows_total{outcome="error"}'] == 2
        assert figures['helix_import_rows_total{outcome="pair"}'] == 5
        assert figures["helix_embeddings_pending"] == 0
        assert figures['helix_embedding_requests_total{outcome="success"}'] >= 2
        assert figures['helix_import_batches_total{status="success"}'] >= 2

        _pictures(port, tmp_path, bad_key)
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


def _row_error_table(port: int, key: str) -> list[tuple[int, str]]:
    answer = graphql(port, PAIRS_MATERIALIZATION, {"partition": key})["data"]["assetOrError"]
    [materialization] = answer["assetMaterializations"]
    entries = {e["label"]: e for e in materialization["metadataEntries"]}
    assert entries["dagster/row_count"]["intValue"] == 2
    records = [json.loads(r) for r in entries["first_row_errors"]["table"]["records"]]
    return [(r["source_row"], r["error_code"]) for r in records]


def _pictures(port: int, tmp_path: Path, bad_key: str) -> None:
    """Screenshots an operator would look at, each checked for what it must show. Saved under
    HELIX_E2E_SCREENSHOTS when set (the README's picture comes from there)."""
    import os
    import shutil
    import urllib.parse

    base = f"http://127.0.0.1:{port}"
    partition = urllib.parse.quote(bad_key)
    pages = {
        "asset-graph": (f"{base}/asset-groups", ["qa_pairs", "qa_embeddings"]),
        "qa-pairs-partition": (
            f"{base}/assets/qa_pairs?view=partitions&partition={partition}",
            ["first_row_errors", "missing_question", "dagster/row_count"],
        ),
        "qa-embeddings-checks": (
            f"{base}/assets/qa_embeddings?view=checks",
            ["embedding_coverage", "embedding_dimensions", "oldest_pending_embedding"],
        ),
    }
    keep = os.environ.get("HELIX_E2E_SCREENSHOTS")
    for name, (url, expected) in pages.items():
        screenshot = tmp_path / f"{name}.png"
        dom = render(url, tmp_path / "chromium", screenshot)
        missing = [text for text in expected if text not in dom]
        assert not missing, (name, missing)
        assert screenshot.stat().st_size > 10_000, name
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(screenshot, Path(keep) / screenshot.name)
