"""The one composition root: reads the environment and wires the Dagster definitions.

Every process that runs steps loads this module (the code server, the run workers it launches,
dagster-celery workers), so it is where such a process learns where its Prometheus counters go:
before the metrics module, hence prometheus_client, is first imported.
"""

# ruff: noqa: E402 - the metrics directory must be set before the imports below load
# prometheus_client.
from helix_pipelines.runtime import use_metrics_dir
from helix_pipelines.settings import Settings, load_settings

_SETTINGS = load_settings()
use_metrics_dir(_SETTINGS)

import warnings
from dataclasses import asdict

from dagster import Definitions, EnvVar, ExecutorDefinition, in_process_executor

from helix_pipelines.defs.assets import qa_embeddings, qa_pairs
from helix_pipelines.defs.batches import (
    cancel_embedding_batches,
    collect_embedding_batches,
    embedding_batches_sensor,
    submit_embedding_batches,
)
from helix_pipelines.defs.jobs import embed_job, import_job
from helix_pipelines.defs.ops import embed_pending_job, recover_stale_imports, rollback_import
from helix_pipelines.defs.resources import (
    DatabaseResource,
    EmbeddingResource,
    ImportSettingsResource,
)
from helix_pipelines.defs.sensors import (
    import_run_failure_sensor,
    inbox_sensor,
    pending_embeddings_sensor,
    stale_imports_sensor,
    stored_files_sensor,
)
from helix_pipelines.pipeline.embedding_setup import setup_from_settings

# import_job runs one partition per run (the smaller of its assets' backfill policies, which is
# what an import wants); qa_embeddings alone batches partitions in backfills. Dagster warns
# about the mix each time it resolves the job: known and intended.
warnings.filterwarnings(
    "ignore", message="Asset job import_job materializes assets with varying BackfillPolicies"
)


def build_definitions(settings: Settings) -> Definitions:
    return Definitions(
        assets=[qa_pairs, qa_embeddings],
        jobs=[
            import_job,
            embed_job,
            recover_stale_imports,
            embed_pending_job,
            rollback_import,
            submit_embedding_batches,
            collect_embedding_batches,
            cancel_embedding_batches,
        ],  # fmt: skip
        sensors=[
            inbox_sensor,
            stale_imports_sensor,
            import_run_failure_sensor,
            pending_embeddings_sensor,
            embedding_batches_sensor,
            stored_files_sensor,
        ],
        resources=build_resources(settings),
        executor=build_executor(settings),
    )


def build_executor(settings: Settings) -> ExecutorDefinition:
    """In the run's own process (the default), or on dagster-celery workers (HELIX_EXECUTOR=
    celery, deploy/celery). Either way the heartbeat that recovery reads is kept by the process
    that runs the step (db.liveness): with Celery, the worker's child, so a killed worker is
    seen dead and its import resumed from the checkpoint in a new run."""
    if settings.executor != "celery":
        return in_process_executor
    from dagster_celery import celery_executor

    from helix_pipelines.celery_app import executor_config

    return celery_executor.configured(executor_config(settings), name="celery")


def build_resources(settings: Settings) -> dict:
    return {
        "database": _database_resource(settings),
        "import_settings": ImportSettingsResource(
            inbox_dir=str(settings.inbox_dir),
            files_dir=str(settings.files_dir),
            file_store=settings.file_store,
            file_retention_days=settings.file_retention_days,
            max_question_chars=settings.max_question_chars,
            max_answer_chars=settings.max_answer_chars,
            max_file_bytes=settings.max_file_bytes,
            stale_after_s=settings.stale_after_s,
            run_start_grace_s=settings.run_start_grace_s,
            max_attempts=settings.import_max_attempts,
            progress_log_s=settings.progress_log_s,
            sync_max_retire_share=settings.sync_max_retire_share,
            steps_elsewhere=settings.executor == "celery",
        ),
        "embedding": _embedding_resource(settings),
    }


def _embedding_resource(settings: Settings) -> EmbeddingResource:
    values = asdict(setup_from_settings(settings))
    # EnvVar: the UI and run configs show the variable's name, never the key.
    values["api_key"] = EnvVar("OPENAI_API_KEY") if settings.openai_api_key else None
    return EmbeddingResource(
        **values,
        coverage_error_threshold=settings.coverage_error_threshold,
        pending_age_warn_s=settings.pending_age_warn_s,
        pending_age_error_s=settings.pending_age_error_s,
    )


def _database_resource(settings: Settings) -> DatabaseResource:
    # EnvVar keeps the URL (and any password in it) out of the UI and the run config.
    url = EnvVar("HELIX_DATABASE_URL") if settings.database_url else None
    return DatabaseResource(
        helix_home=str(settings.home), database_url=url, embedding_dim=settings.embedding_dim
    )


defs = build_definitions(_SETTINGS)
