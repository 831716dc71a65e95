"""Small Dagster resources; the composition root (definitions.py) fills them from the settings."""

from dataclasses import fields
from functools import lru_cache
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field
from sqlalchemy.engine import Engine

from helix_pipelines.core.parsing import ParseOptions
from helix_pipelines.db.engine import cached_engine, resolve_database_url
from helix_pipelines.db.migrate import check_embedding_dim
from helix_pipelines.pipeline.embedding_setup import EmbeddingSetup
from helix_pipelines.pipeline.file_store import FileStore, open_store
from helix_pipelines.pipeline.health import CheckLimits
from helix_pipelines.pipeline.importing import ImportOptions
from helix_pipelines.pipeline.recovery import RecoveryPolicy


class DatabaseResource(ConfigurableResource):
    """The application database: `database_url` when given, else the embedded server."""

    helix_home: str
    database_url: str | None = None
    embedding_dim: int = 1536

    def get_engine(self) -> Engine:
        return _checked_engine(self.database_url, self.helix_home, self.embedding_dim)


@lru_cache(maxsize=8)
def _checked_engine(database_url: str | None, helix_home: str, embedding_dim: int) -> Engine:
    engine = cached_engine(resolve_database_url(database_url, Path(helix_home)))
    check_embedding_dim(engine, embedding_dim)
    return engine


class ImportSettingsResource(ConfigurableResource):
    """Where files arrive and are kept, and the limits an import works within."""

    inbox_dir: str
    files_dir: str  # staging on the host that takes a file; also the default store
    file_store: str | None = None  # HELIX_FILE_STORE: a directory, `postgres`, or an fsspec URL
    file_retention_days: float | None = None
    max_question_chars: int = 4000
    max_answer_chars: int = 32000
    max_file_bytes: int = 2 * 1024**3
    stale_after_s: float = 300.0
    run_start_grace_s: float = 60.0
    max_attempts: int = 3
    batch_deadline_s: float = 60.0
    inbox_files_per_tick: int = 50
    progress_log_s: float = 5.0  # cadence of the progress lines in a running step's log
    sync_max_retire_share: float = 0.5  # HELIX_SYNC_MAX_RETIRE_SHARE
    steps_elsewhere: bool = False  # steps run on Celery workers, not in the run worker

    def file_store_for(self, engine: Engine) -> FileStore:
        return open_store(self.file_store or self.files_dir, engine)

    def recovery_policy(self, stale_after_s: float | None = None) -> RecoveryPolicy:
        return RecoveryPolicy(
            stale_after_s=self.stale_after_s if stale_after_s is None else stale_after_s,
            start_grace_s=self.run_start_grace_s,
            max_deaths=self.max_attempts,
        )

    def import_options(self, job_options: dict | None = None) -> ImportOptions:
        job_options = job_options or {}
        parse = ParseOptions(
            max_question_chars=self.max_question_chars,
            max_answer_chars=self.max_answer_chars,
            max_file_bytes=self.max_file_bytes,
            column_mapping=job_options.get("column_mapping") or None,
        )
        return ImportOptions(
            parse=parse,
            keep_duplicates=bool(job_options.get("keep_duplicates", False)),
            batch_deadline_s=self.batch_deadline_s,
            stale_after_s=self.stale_after_s,
            max_retire_share=self.sync_max_retire_share,
        )


class EmbeddingResource(ConfigurableResource):
    """The embeddings API and its deployment-wide limits. The key arrives as an EnvVar, so the
    UI and run configs show the variable's name, never its value."""

    provider: str = "local"
    model: str = "text-embedding-3-small"
    dim: int = 1536
    api_key: str | None = None
    base_url: str | None = None
    rpm: int = 3000
    tpm: int = 1_000_000
    max_concurrency: int = 4
    batch_size: int = 256
    timeout_s: float = 30.0
    max_attempts: int = 5
    truncate: bool = True
    coverage_error_threshold: float = 0.99
    pending_age_warn_s: float = 3600.0
    pending_age_error_s: float = 86400.0

    breaker_failures: int = 5
    breaker_recovery_s: float = 30.0
    send_dimensions: bool = True
    blocked_retry_s: float = 3600.0
    parked_retry_s: float = 900.0
    mode: str = Field("auto", description="auto | sync | batch (HELIX_EMBED_MODE)")
    batch_threshold: int = Field(
        10_000, description="auto mode: more pending pairs than this in a partition go to batches"
    )
    batch_poll_s: float = Field(60.0, description="each live batch is polled at most this often")
    batch_max_pairs: int = Field(50_000, description="pairs (requests) per Batch API batch")
    batch_api: bool | None = Field(
        None, description="the API has a Batch API (HELIX_EMBED_BATCH_API; unset: OpenAI's only)"
    )
    limit_window_s: float = 60.0

    def check_limits(self) -> CheckLimits:
        return CheckLimits(
            dim=self.dim,
            coverage_error_threshold=self.coverage_error_threshold,
            pending_age_warn_s=self.pending_age_warn_s,
            pending_age_error_s=self.pending_age_error_s,
        )

    def setup(self) -> EmbeddingSetup:
        return EmbeddingSetup(**{f.name: getattr(self, f.name) for f in fields(EmbeddingSetup)})
