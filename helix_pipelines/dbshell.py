"""`db shell` (psql on the application database) and `db url --keep`: both keep the embedded
server up while they run, as a registered user of it like every other process of the project."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence

from sqlalchemy.engine import make_url

from helix_pipelines.db.embedded import EmbeddedPostgres, client_program
from helix_pipelines.settings import Settings


class NoPsql(RuntimeError):
    pass


def libpq_url(url: str) -> tuple[str, dict[str, str]]:
    """(conninfo URL without the password, environment holding it): a password never shows on
    a command line (`ps` would show it)."""
    parsed = make_url(url).set(drivername="postgresql")
    env = {"PGPASSWORD": parsed.password} if parsed.password else {}
    return parsed.set(password=None).render_as_string(hide_password=False), env


@contextlib.contextmanager
def kept_up(settings: Settings) -> Iterator[str]:
    """The application database's URL, the embedded server held up (this process registered as
    its user) until the block ends; then stopped at once if nobody else uses it. The embedded
    database is migrated first (it is the project's own; an external one is left as it is)."""
    from helix_pipelines import runtime

    embedded = None if settings.database_url else EmbeddedPostgres(settings.home)
    try:
        yield runtime.open_app(settings, migrate_schema=embedded is not None).url
    finally:
        if embedded is not None:
            embedded.release(stop_when_unused=True)


def run_psql(settings: Settings, psql_args: Sequence[str]) -> int:
    with kept_up(settings) as url:
        psql = _psql(external=bool(settings.database_url))
        conninfo, env = libpq_url(url)
        # Ctrl-C belongs to psql (it cancels the query): this process only waits. A handler,
        # not SIG_IGN, so that psql starts with the default.
        previous = signal.signal(signal.SIGINT, lambda *_: None)
        try:
            return subprocess.call([psql, conninfo, *psql_args], env=os.environ | env)
        finally:
            signal.signal(signal.SIGINT, previous)


def _psql(*, external: bool) -> str:
    bundled = client_program("psql")
    if not external and bundled.exists():
        return str(bundled)
    found = shutil.which("psql") or (str(bundled) if bundled.exists() else None)
    if found is None:
        raise NoPsql("no psql found: install the PostgreSQL client (psql)")
    return found


def keep_url(settings: Settings) -> int:
    """Print the URL and hold the server up until Ctrl-C or SIGTERM."""
    from helix_pipelines.db.engine import redact

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with kept_up(settings) as url:
        print(redact(url), flush=True)
        conninfo, _ = libpq_url(url)
        print(f"keeping the database up until Ctrl-C; psql: psql '{conninfo}'",
              file=sys.stderr, flush=True)  # fmt: skip
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0
