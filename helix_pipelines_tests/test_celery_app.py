"""The Celery profile's wiring: one decision for the runs' executor and the workers' app."""

from __future__ import annotations

import pytest

from helix_pipelines.celery_app import BrokerNotConfigured, executor_config, make_worker_app
from helix_pipelines.settings import load_settings


@pytest.fixture(autouse=True)
def build_executor(monkeypatch, tmp_path):
    # Importing the composition root points this process's metrics at a directory: the test's.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    from helix_pipelines.definitions import build_executor

    return build_executor


def test_in_process_by_default(tmp_path, build_executor):
    assert build_executor(load_settings(home=tmp_path)).name == "in_process"


def test_celery_without_a_broker_is_one_clear_error(tmp_path, build_executor):
    with pytest.raises(BrokerNotConfigured, match="HELIX_CELERY_BROKER_URL"):
        build_executor(load_settings(home=tmp_path, executor="celery"))


@pytest.mark.parametrize(
    ("broker", "backend"),
    [
        ("pyamqp://helix:s3cret@rabbit:5672//", "rpc://"),
        ("redis://:s3cret@redis:6379/0", "redis://:s3cret@redis:6379/0"),
    ],
)
def test_runs_and_workers_agree_and_the_run_config_holds_no_password(
    tmp_path, build_executor, broker, backend
):
    settings = load_settings(home=tmp_path, executor="celery", celery_broker_url=broker)

    config = executor_config(settings)
    app = make_worker_app(settings)

    assert build_executor(settings).name == "celery"
    assert "s3cret" not in repr(config)  # the variable's name reaches the UI, not its value
    assert config["broker"] == {"env": "HELIX_CELERY_BROKER_URL"}
    assert app.conf.broker_url == broker
    assert app.conf.result_backend == backend
    assert app.conf.worker_prefetch_multiplier == 1
