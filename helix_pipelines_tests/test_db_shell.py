"""`db shell` and `db url --keep` on a home where nothing else runs: they start the embedded
server, keep it up while they run, and leave nothing behind."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from helix_pipelines.db.embedded import EmbeddedPostgres, client_program
from helix_pipelines.dbshell import libpq_url
from helix_pipelines_tests.support.db_fixtures import TEST_EMBEDDING_DIM, clean_environment
from helix_pipelines_tests.support.processes import wait_for

CLI = [sys.executable, "-m", "helix_pipelines.cli"]


def fresh_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("sh")  # short: the server's socket lives under it
    env = clean_environment() | {
        "HELIX_HOME": str(home),
        "HELIX_EMBEDDING_DIM": str(TEST_EMBEDDING_DIM),
    }
    return EmbeddedPostgres(home), env


def stopped(server: EmbeddedPostgres) -> bool:
    return not server.is_running() and not server.server_pids()


@pytest.mark.slow
def test_db_shell_answers_and_the_server_stops_after(tmp_path_factory):
    server, env = fresh_home(tmp_path_factory)
    assert stopped(server)
    done = subprocess.run(
        [*CLI, "db", "shell", "-c", "select count(*) from qa_pair"],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"^\s*count\s*$", done.stdout, re.M)
    assert re.search(r"^\s*0\s*$", done.stdout, re.M), done.stdout
    wait_for(lambda: stopped(server), 30, "the embedded server to stop after the shell")


@pytest.mark.slow
def test_db_url_keep_holds_the_server_until_sigterm(tmp_path_factory):
    server, env = fresh_home(tmp_path_factory)
    keeper = subprocess.Popen(
        [*CLI, "db", "url", "--keep"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        url = keeper.stdout.readline().strip()
        assert url.startswith("postgresql+psycopg://"), keeper.stderr.read()
        # Another client, on its own, while only the keeper holds the server.
        conninfo, _ = libpq_url(url)
        answer = subprocess.run(
            [str(client_program("psql")), conninfo, "-At", "-c", "select 1"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert answer.stdout.strip() == "1", answer.stderr
        assert server.is_running()
        keeper.send_signal(signal.SIGTERM)
        assert keeper.wait(timeout=60) == 0
    finally:
        if keeper.poll() is None:
            keeper.kill()
    wait_for(lambda: stopped(server), 30, "the embedded server to stop after the keeper")
