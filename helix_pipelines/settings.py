"""Every environment variable the project reads, in one place.

Only the composition root (``definitions.py``) and the CLI build a ``Settings``; everything else
receives the values it needs as arguments, so nothing reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    # Only the HELIX_*/OPENAI_* names are read: matching by field name would pick up HOME.
    model_config = SettingsConfigDict(extra="ignore")

    home: Path = Field(Path(".helix"), validation_alias="HELIX_HOME")
    database_url: SecretStr | None = Field(None, validation_alias="HELIX_DATABASE_URL")
    inbox_dir_override: Path | None = Field(None, validation_alias="HELIX_INBOX_DIR")

    embedding_provider_override: Literal["openai", "local"] | None = Field(
        None, validation_alias="HELIX_EMBEDDING_PROVIDER"
    )
    openai_api_key: SecretStr | None = Field(None, validation_alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(None, validation_alias="OPENAI_BASE_URL")
    embedding_model: str = Field("text-embedding-3-small", validation_alias="HELIX_EMBEDDING_MODEL")
    embedding_dim: int = Field(1536, ge=1, le=16000, validation_alias="HELIX_EMBEDDING_DIM")
    embed_rpm: int = Field(3000, ge=1, validation_alias="HELIX_EMBED_RPM")
    embed_tpm: int = Field(1_000_000, ge=1, validation_alias="HELIX_EMBED_TPM")
    embed_max_concurrency: int = Field(
        4, ge=1, le=64, validation_alias="HELIX_EMBED_MAX_CONCURRENCY"
    )
    embed_batch_size: int = Field(256, ge=1, le=2048, validation_alias="HELIX_EMBED_BATCH_SIZE")
    embed_timeout_s: float = Field(30.0, gt=0, validation_alias="HELIX_EMBED_TIMEOUT_S")
    embed_max_attempts: int = Field(5, ge=1, validation_alias="HELIX_EMBED_MAX_ATTEMPTS")
    embed_truncate_long_inputs: bool = Field(True, validation_alias="HELIX_EMBED_TRUNCATE")
    embed_send_dimensions: bool = Field(
        True,
        validation_alias="HELIX_EMBED_SEND_DIMENSIONS",
        description="false for servers that reject the `dimensions` parameter",
    )
    embed_blocked_retry_s: float = Field(
        3600.0,
        ge=0,
        validation_alias="HELIX_EMBED_BLOCKED_RETRY_S",
        description="after a refused key, unknown model or exhausted quota, how long until a "
        "probe when the configuration has not changed",
    )
    embed_parked_retry_s: float = Field(
        900.0,
        ge=0,
        validation_alias="HELIX_EMBED_PARKED_RETRY_S",
        description="how long pairs whose attempts ran out on transient errors wait before "
        "another round when the API shows no recovery",
    )
    embed_mode: Literal["auto", "sync", "batch"] = Field(
        "auto",
        validation_alias="HELIX_EMBED_MODE",
        description="sync: the embeddings endpoint; batch: the OpenAI Batch API (half price, "
        "within 24 h); auto: a partition with more pending pairs than "
        "HELIX_EMBED_BATCH_THRESHOLD goes to batches, fresh imports stay synchronous",
    )
    embed_batch_threshold: int = Field(10_000, ge=1, validation_alias="HELIX_EMBED_BATCH_THRESHOLD")
    embed_batch_poll_s: float = Field(
        60.0,
        ge=0,
        validation_alias="HELIX_EMBED_BATCH_POLL_S",
        description="each live batch is asked about at most this often",
    )
    embed_batch_max_pairs: int = Field(
        50_000, ge=1, le=50_000, validation_alias="HELIX_EMBED_BATCH_MAX_PAIRS"
    )
    embed_batch_api: bool | None = Field(
        None,
        validation_alias="HELIX_EMBED_BATCH_API",
        description="whether OPENAI_BASE_URL has OpenAI's Batch API; unset: only OpenAI's own "
        "API is assumed to, so `auto` keeps other OpenAI-compatible servers synchronous",
    )
    embed_limit_window_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        validation_alias="HELIX_EMBED_LIMIT_WINDOW_S",
        description="the window the API counts HELIX_EMBED_RPM/TPM over: 60 for OpenAI; "
        "shorter only for a server that counts over a shorter one",
    )
    coverage_error_threshold: float = Field(
        0.99, ge=0, le=1, validation_alias="HELIX_COVERAGE_THRESHOLD"
    )

    pending_age_warn_s: float = Field(
        3600.0,
        gt=0,
        validation_alias="HELIX_PENDING_AGE_WARN_S",
        description="oldest-pending-embedding check: WARN once a pair has waited this long",
    )
    pending_age_error_s: float = Field(
        86400.0,
        gt=0,
        validation_alias="HELIX_PENDING_AGE_ERROR_S",
        description="oldest-pending-embedding check: ERROR once a pair has waited this long",
    )

    max_question_chars: int = Field(4000, ge=1, validation_alias="HELIX_MAX_QUESTION_CHARS")
    max_answer_chars: int = Field(32000, ge=1, validation_alias="HELIX_MAX_ANSWER_CHARS")
    max_file_bytes: int = Field(2 * 1024**3, ge=1, validation_alias="HELIX_MAX_FILE_BYTES")

    import_max_attempts: int = Field(3, ge=1, validation_alias="HELIX_IMPORT_MAX_ATTEMPTS")
    stale_after_s: float = Field(300.0, gt=0, validation_alias="HELIX_STALE_AFTER_S")
    # A run that started but never showed a heartbeat (it died loading code) is dead after this.
    run_start_grace_s: float = Field(60.0, ge=0, validation_alias="HELIX_RUN_START_GRACE_S")
    sync_max_retire_share: float = Field(
        0.5,
        ge=0,
        le=1,
        validation_alias="HELIX_SYNC_MAX_RETIRE_SHARE",
        description="a new version of a source that would retire more than this share of its "
        "pairs stops before changing anything, until confirmed (--allow-shrink)",
    )
    # How often a running import or embedding step logs its progress to the run's event log.
    progress_log_s: float = Field(5.0, gt=0, validation_alias="HELIX_PROGRESS_LOG_S")

    executor: Literal["in_process", "celery"] = Field(
        "in_process",
        validation_alias="HELIX_EXECUTOR",
        description="where the assets' steps run: in the run's own process, or on dagster-celery "
        "workers (deploy/celery)",
    )
    celery_broker_url: SecretStr | None = Field(None, validation_alias="HELIX_CELERY_BROKER_URL")
    file_store: str | None = Field(
        None,
        validation_alias="HELIX_FILE_STORE",
        description="where stored uploads live: a directory (default $HELIX_HOME/files), "
        "`postgres`, or an fsspec URL",
    )
    file_retention_days: float | None = Field(
        None,
        gt=0,
        validation_alias="HELIX_FILE_RETENTION_DAYS",
        description="remove the stored copy of a finished import this many days after it "
        "finished; unset: completed imports' files are kept",
    )

    @property
    def file_store_spec(self) -> str:
        """The store as a directory path, `postgres`, or an fsspec URL."""
        return self.file_store or str(self.files_dir)

    @property
    def inbox_dir(self) -> Path:
        return self.inbox_dir_override or self.home / "inbox"

    @property
    def files_dir(self) -> Path:
        return self.home / "files"

    @property
    def pgdata_dir(self) -> Path:
        return self.home / "pgdata"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def embedding_provider(self) -> Literal["openai", "local"]:
        if self.embedding_provider_override:
            return self.embedding_provider_override
        return "openai" if self.openai_api_key else "local"


def load_settings(**overrides) -> Settings:
    """Read the environment (the one place that does), with explicit overrides on top."""
    aliases = {name: field.validation_alias for name, field in Settings.model_fields.items()}
    settings = Settings(**{aliases.get(k, k): v for k, v in overrides.items()})
    return settings.model_copy(update={"home": settings.home.expanduser().absolute()})
