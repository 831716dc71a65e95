"""The Celery side of the scale-out profile (deploy/celery): one place decides the broker, the
result backend and the Celery settings, for the runs that submit steps (the executor, through
definitions.py) and for the workers that run them:

    dagster-celery worker start -A helix_pipelines.celery_app -n worker1 -- --concurrency 2

An entry point of its own, like the CLI: it reads the settings (HELIX_CELERY_BROKER_URL) and
points this host's Prometheus counters at its metrics directory before any step is imported.
"""

from __future__ import annotations

from helix_pipelines.settings import Settings

# The broker URL reaches Dagster's run config as the variable's name, never its value (a
# password in it stays out of the UI).
BROKER_ENV = "HELIX_CELERY_BROKER_URL"
# Celery settings beyond dagster-celery's defaults.
CELERY_SETTINGS = {
    # One step at a time per worker process: a long import does not hold others back.
    "worker_prefetch_multiplier": 1,
    # A worker that starts before the broker waits for it instead of exiting.
    "broker_connection_retry_on_startup": True,
}


class BrokerNotConfigured(RuntimeError):
    transient = False


def result_backend(broker_url: str) -> str | dict:
    """`rpc://` answers through an AMQP broker (RabbitMQ); Redis keeps results itself."""
    if broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        return {"env": BROKER_ENV}
    return "rpc://"


def executor_config(settings: Settings) -> dict:
    """dagster_celery.celery_executor's configuration for these settings."""
    if settings.celery_broker_url is None:
        raise BrokerNotConfigured(
            f"HELIX_EXECUTOR=celery needs {BROKER_ENV} (e.g. pyamqp://guest@rabbitmq:5672// or "
            "redis://redis:6379/0)"
        )
    url = settings.celery_broker_url.get_secret_value()
    return {
        "broker": {"env": BROKER_ENV},
        "backend": result_backend(url),
        "config_source": dict(CELERY_SETTINGS),
    }


def _resolved(value: str | dict, settings: Settings) -> str:
    if isinstance(value, dict):
        return settings.celery_broker_url.get_secret_value()
    return value


def make_worker_app(settings: Settings):
    from dagster._core.execution.retries import RetryMode
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app

    config = executor_config(settings)
    executor = CeleryExecutor(
        retries=RetryMode.DISABLED,
        broker=_resolved(config["broker"], settings),
        backend=_resolved(config["backend"], settings),
        config_source=config["config_source"],
    )
    return make_app(executor.app_args())


def _worker_app():
    from dagster_celery.tasks import create_execute_job_task, create_resume_job_task, create_task

    from helix_pipelines.runtime import use_metrics_dir
    from helix_pipelines.settings import load_settings

    settings = load_settings()
    use_metrics_dir(settings)
    worker_app = make_worker_app(settings)
    create_task(worker_app)
    create_execute_job_task(worker_app)
    create_resume_job_task(worker_app)
    return worker_app


def __getattr__(name: str):
    # `-A helix_pipelines.celery_app` looks up `app`; built on first use, so that
    # definitions.py can import executor_config without starting a Celery app.
    if name in ("app", "celery"):
        globals()["app"] = built = _worker_app()
        return built
    raise AttributeError(name)
