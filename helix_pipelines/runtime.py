"""What the CLI and the dev server open: settings, database engine, schema check."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from helix_pipelines.db import migrate
from helix_pipelines.db.engine import cached_engine, redact, resolve_database_url
from helix_pipelines.settings import Settings


@dataclass(frozen=True)
class App:
    settings: Settings
    engine: Engine
    url: str

    @property
    def redacted_url(self) -> str:
        return redact(self.url)


def open_app(settings: Settings, *, migrate_schema: bool = False) -> App:
    url = resolve_database_url(_secret_url(settings), settings.home)
    engine = cached_engine(url)
    if migrate_schema:
        migrate.upgrade(engine, settings.embedding_dim)
    else:
        migrate.check_embedding_dim(engine, settings.embedding_dim)
    return App(settings=settings, engine=engine, url=url)


def use_metrics_dir(settings: Settings) -> None:
    """Counters of this process and of the processes it starts add up in one directory per
    host, which that host's `helix-pipelines metrics` reads. Must run before prometheus_client
    is first imported; an operator's PROMETHEUS_MULTIPROC_DIR wins."""
    import os

    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or str(settings.home / "metrics")
    os.makedirs(metrics_dir, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir


def database_url_for_display(settings: Settings) -> str:
    return redact(resolve_database_url(_secret_url(settings), settings.home))


def recover_on_start(app: App) -> int:
    """Return stale imports to pending before the daemon starts; its sensor then re-runs them."""
    import os

    from dagster import DagsterInstance

    from helix_pipelines.defs.runs import recover_dead_runs
    from helix_pipelines.devserver import dagster_environment

    os.environ["DAGSTER_HOME"] = dagster_environment(app.settings)["DAGSTER_HOME"]
    with DagsterInstance.get() as instance:
        report = recover_dead_runs(app.engine, instance, recovery_policy(app.settings))
    return len(report.resumed)


def recovery_policy(settings: Settings, stale_after_s: float | None = None):
    """The recovery policy the code location uses, from the same settings."""
    from helix_pipelines.definitions import build_resources

    return build_resources(settings)["import_settings"].recovery_policy(stale_after_s)


def _secret_url(settings: Settings) -> str | None:
    return settings.database_url.get_secret_value() if settings.database_url else None
