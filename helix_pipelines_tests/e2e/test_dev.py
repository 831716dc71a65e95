"""`helix-pipelines dev` on a fresh HELIX_HOME: the UI lists the project's assets, and stopping
it leaves no process behind, the embedded database included."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from helix_pipelines_tests.support.db_fixtures import clean_environment
from helix_pipelines_tests.support.processes import (
    free_port,
    processes_using,
    try_graphql,
    wait_for,
)

ASSETS_QUERY = "{ assetNodes { assetKey { path } } }"

pytestmark = pytest.mark.slow


def test_dev_serves_the_assets_and_stops_cleanly(tmp_path_factory):
    home = tmp_path_factory.mktemp("dev")
    port = free_port()
    env = clean_environment()
    env["HELIX_HOME"] = str(home)
    dev = subprocess.Popen(
        [sys.executable, "-m", "helix_pipelines.cli", "dev", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        answer = wait_for(
            lambda: _asset_keys(try_graphql(port, ASSETS_QUERY)),
            timeout=180,
            what="the webserver to list the assets",
        )
        assert {"qa_pairs", "qa_embeddings"} <= answer
        assert processes_using(str(home)), "expected dagster and postgres processes"
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=90)
    wait_for(lambda: not processes_using(str(home)), 30, "every process to stop")


def _asset_keys(answer: dict | None) -> set[str]:
    if not answer or "data" not in answer:
        return set()
    return {"/".join(node["assetKey"]["path"]) for node in answer["data"]["assetNodes"]}
