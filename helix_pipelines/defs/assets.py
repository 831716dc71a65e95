"""The partitioned assets: thin wrappers over the plain functions in helix_pipelines.pipeline."""

import contextlib
import warnings

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetSpec,
    BackfillPolicy,
    Backoff,
    Config,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
    multi_asset,
)
from pydantic import Field

from helix_pipelines import metrics
from helix_pipelines.core.errors import is_transient
from helix_pipelines.db import jobs
from helix_pipelines.db.embeddings import count_pending
from helix_pipelines.defs.interrupts import (
    each_interruptibly,
    interrupts_end_the_step,
    struck_by_interrupt,
)
from helix_pipelines.defs.partitions import import_files
from helix_pipelines.defs.progress import EmbedProgressLog, ImportProgressLog
from helix_pipelines.defs.reporting import (
    QA_EMBEDDINGS,
    QA_PAIRS,
    check_evaluation,
    check_result,
    embedding_state,
    metadata_values,
    run_metadata,
)
from helix_pipelines.defs.resources import (
    DatabaseResource,
    EmbeddingResource,
    ImportSettingsResource,
)
from helix_pipelines.defs.runs import TERMINAL, keep_alive
from helix_pipelines.embedding.base import ProviderConfigError
from helix_pipelines.pipeline import health
from helix_pipelines.pipeline.batch_embedding import submit_batches
from helix_pipelines.pipeline.health import (
    ACCOUNTING_CHECK,
    COVERAGE_CHECK,
    DIMENSION_CHECK,
    PENDING_AGE_CHECK,
)
from helix_pipelines.pipeline.importing import BatchFailed, ImportReport, import_file
from helix_pipelines.pipeline.row_errors import first_errors

# Partitioned asset checks work in Dagster 1.13 but are marked preview (STACK.md, pitfall 10):
# known and intended, so the warning stays out of every CLI command's output.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec")

# A step retry resumes from the job's checkpoint; run retries do not stack on it (dagster.yaml).
IMPORT_RETRY = RetryPolicy(
    max_retries=2, delay=5, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)


class QaPairsConfig(Config):
    """Launchpad options of one import, merged into the job's stored options (import_job.options)
    so that a resumed or retried run reads the file the same way. Empty: the stored options."""

    column_mapping: dict[str, str] | None = Field(
        default=None,
        description="Which column holds what: role (question, answer, category) to the file's "
        'header, e.g. {"question": "Frage", "answer": "Antwort"}. Unset: headers are '
        "recognised by name and alias.",
    )
    keep_duplicates: bool | None = Field(
        default=None,
        description="Keep pairs already stored (same content) instead of skipping them. "
        "Unset: the job's stored option (false unless given at import).",
    )

    source: str | None = Field(
        default=None,
        description="The source this file is a new version of (its pairs replace the source's "
        "current ones once the import completes). Unset: the source chosen at import, by "
        "default the file name without dates and copy markers.",
    )
    allow_shrink: bool | None = Field(
        default=None,
        description="Confirm a version that retires more of its source than "
        "HELIX_SYNC_MAX_RETIRE_SHARE (a version refused for that is tried again).",
    )

    def options(self) -> dict:
        given = {
            "column_mapping": self.column_mapping,
            "keep_duplicates": self.keep_duplicates,
            "allow_shrink": self.allow_shrink,
        }
        return {key: value for key, value in given.items() if value is not None}


OWNERS = ["team:knowledge-base"]
# Bump when the logic changes what a materialization means (Dagster then shows it as changed).
PAIRS_CODE_VERSION = "2"
EMBEDDINGS_CODE_VERSION = "2"
ROW_ERRORS_SHOWN = 20


@asset(
    partitions_def=import_files,
    group_name="knowledge_base",
    kinds={"postgres", "pandas"},
    owners=OWNERS,
    tags={"format": "csv-tsv-json-jsonl-xlsx", "layer": "import"},
    code_version=PAIRS_CODE_VERSION,
    retry_policy=IMPORT_RETRY,
    check_specs=[
        AssetCheckSpec(
            ACCOUNTING_CHECK,
            asset="qa_pairs",
            blocking=True,
            partitions_def=import_files,
            description=(
                "The import accounted for every row: rows_total = pairs_created + "
                "duplicates_skipped + row_errors. Blocking: a broken import does not flow on "
                "to embedding. A rolled-back import fails it (WARN) and says so."
            ),
        )
    ],
    description=(
        "Question/answer pairs parsed from one imported file (one partition per file), "
        "validated, deduplicated and committed to qa_pair in checkpointed batches. Rejected "
        "rows go to import_row_error with their row number and reason; the first of them are "
        "listed on each materialization."
    ),
)
def qa_pairs(
    context: AssetExecutionContext,
    config: QaPairsConfig,
    database: DatabaseResource,
    import_settings: ImportSettingsResource,
) -> MaterializeResult:
    with interrupts_end_the_step(f"the import of {context.partition_key}"):
        return _import_partition(context, config, database.get_engine(), import_settings)


def _import_partition(
    context: AssetExecutionContext,
    config: QaPairsConfig,
    engine,
    import_settings: ImportSettingsResource,
) -> MaterializeResult:
    job = jobs.get_job(engine, context.partition_key)
    if config.options():
        job = jobs.merge_options(engine, job.id, config.options())
    if config.source:
        job = jobs.set_source(engine, job.id, config.source)
    job = jobs.reopen_refused(engine, job.id)
    try:
        report = import_file(
            engine,
            job.id,
            run_id=context.run.run_id,
            options=import_settings.import_options(job.options),
            on_batch=metrics.record_batch,
            on_progress=ImportProgressLog(context, import_settings.progress_log_s),
        )
    except jobs.JobBusy as exc:
        raise terminal_failure(str(exc)) from exc
    except Exception as exc:
        if struck_by_interrupt(exc):
            raise  # an interrupt, whatever cleaning up after it raised: not an error of the job
        _note_error(engine, job.id, exc)
        if isinstance(exc, BatchFailed) or is_transient(exc):
            raise  # the RetryPolicy resumes from the checkpoint
        raise terminal_failure(f"{type(exc).__name__}: {exc}") from exc
    _count_rows(job, report.job)
    accounting = health.accounting(report.job)
    if report.job.status == "failed":
        context.log_event(check_evaluation(QA_PAIRS, accounting, context.partition_key))
        raise terminal_failure(report.job.last_error or "the file could not be read")
    return MaterializeResult(
        metadata=import_metadata(report, first_row_errors(engine, report.job)),
        check_results=[check_result(accounting)],
        tags={"helix/format": report.job.format or "unknown"},
    )


def terminal_failure(description: str) -> Failure:
    """A failure that retrying cannot mend: no step retry, and the run-failure sensor fails the
    import rather than re-requesting it."""
    return Failure(description=description, allow_retries=False, metadata={TERMINAL: True})


def first_row_errors(engine, job: jobs.Job) -> list[dict]:
    """The first rejected rows, for the UI. A job without any (its counter and its rows are
    committed together) skips the query."""
    if not job.row_errors:
        return []
    return first_errors(engine, job.id, ROW_ERRORS_SHOWN)


def import_metadata(report: ImportReport, first_errors: list[dict] | None = None) -> dict:
    job = report.job
    summary = report.summary or (job.checkpoint_data or {}).get("summary") or {}
    metadata = {
        "import_job_id": str(job.id),
        "source_name": job.source_name,
        "stored_file": MetadataValue.path(job.source_path or ""),
        "source_sha256": job.source_sha256 or "",
        "status": job.status,
        "format": job.format or "",
        "encoding": str(summary.get("encoding") or ""),
        "rows": job.rows_total,
        "pairs_created": job.pairs_created,
        "duplicates_skipped": job.duplicates_skipped,
        "row_errors": job.row_errors,
        "dagster/row_count": job.pairs_created,
        "dagster/column_schema": column_schema(summary),
        "batches": report.batches,
        "batch_size": report.batch_size,
        "batch_retries": report.retries,
        "duration_s": MetadataValue.float(round(report.duration_s, 3)),
        "rows_per_s": MetadataValue.float(round(report.rows_per_s, 1)),
        "columns": MetadataValue.json(summary.get("columns") or {}),
        "options": MetadataValue.json(job.options or {}),
    }
    if first_errors is not None:
        metadata["first_row_errors"] = row_error_table(first_errors)
    return metadata | sync_metadata(job)


SYNC_COUNTS = ("kept", "updated", "added", "retired", "repeated_questions")
CHANGE_SCHEMA = TableSchema(
    columns=[
        TableColumn("change", "string", description="updated, added or retired"),
        TableColumn("qa_pair_id", "int"),
        TableColumn("question", "string"),
        TableColumn("old_answer", "string"),
        TableColumn("new_answer", "string"),
    ]
)


def sync_metadata(job: jobs.Job) -> dict:
    """What a source version did to its source: counts, and a table of its first changes."""
    sync = (job.checkpoint_data or {}).get("sync")
    if not sync:
        return {}
    metadata = {
        "source_key": job.source_key or "",
        "source_version": job.source_version or 0,
        "previous_version": sync.get("previous_version") or 0,
    }
    metadata |= {f"sync_{name}": int(sync.get(name, 0)) for name in SYNC_COUNTS}
    records = [TableRecord(change) for change in sync.get("first_changes") or []]
    metadata["first_changes"] = MetadataValue.table(records=records, schema=CHANGE_SCHEMA)
    return metadata


def column_schema(summary: dict) -> TableSchema:
    """The columns found in the file and what each became (the mapping used)."""
    columns = [
        TableColumn(name=str(header), type="text", description=f"qa_pair.{role}")
        for role, header in (summary.get("columns") or {}).items()
    ]
    columns += [
        TableColumn(name=str(header), type="text", description="ignored")
        for header in summary.get("ignored_columns") or []
    ]
    return TableSchema(columns=columns)


ROW_ERROR_SCHEMA = TableSchema(
    columns=[
        TableColumn("source_row", "int", description="row number in the file"),
        TableColumn("error_code", "string"),
        TableColumn("message", "string"),
        TableColumn("raw_excerpt", "string", description="control characters escaped"),
    ]
)


def row_error_table(rows: list[dict]) -> MetadataValue:
    records = [TableRecord(record) for record in rows]
    return MetadataValue.table(records=records, schema=ROW_ERROR_SCHEMA)


def _count_rows(before: jobs.Job, after: jobs.Job) -> None:
    metrics.record_rows(
        pairs=after.pairs_created - before.pairs_created,
        duplicates=after.duplicates_skipped - before.duplicates_skipped,
        errors=after.row_errors - before.row_errors,
    )


def _note_error(engine, job_id, exc: BaseException) -> None:
    # Best effort: the database may be the thing that is down.
    with contextlib.suppress(Exception):
        jobs.note_error(engine, job_id, f"{type(exc).__name__}: {exc}"[:2000])


# Run tag choosing the embedding mode of a run (a backfill's tags reach each of its runs).
EMBED_MODE_TAG = "helix/embed_mode"


class EmbedRunConfig(Config):
    """Launchpad option of an embedding run."""

    mode: str | None = Field(
        default=None,
        description="sync: the embeddings endpoint now; batch: the OpenAI Batch API (half "
        "price, within 24 h; the embedding-batches sensor collects); auto: batch for a "
        f"backlog above HELIX_EMBED_BATCH_THRESHOLD. Unset: the {EMBED_MODE_TAG} run tag, "
        "else HELIX_EMBED_MODE.",
    )


EMBED_RETRY = RetryPolicy(
    max_retries=3, delay=10, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)
# A backfill of many small imports runs this many partitions per run, one after another.
EMBED_PARTITIONS_PER_RUN = 25


def _embedding_check(name: str, description: str) -> AssetCheckSpec:
    return AssetCheckSpec(
        name, asset="qa_embeddings", partitions_def=import_files, description=description
    )


# A multi_asset of one asset: `can_subset` makes the check outputs optional, so that a run over
# a range of partitions records each partition's checks as evaluations of its own (below)
# instead of one result for the whole range.
@multi_asset(
    name="qa_embeddings",
    specs=[
        AssetSpec(
            "qa_embeddings",
            deps=[qa_pairs],
            group_name="knowledge_base",
            kinds={"postgres", "openai"},
            owners=OWNERS,
            tags={"format": "pgvector", "layer": "embedding"},
            code_version=EMBEDDINGS_CODE_VERSION,
            partitions_def=import_files,
            description=(
                "Embeddings of the partition's pairs in qa_pair.embedding (pgvector), through "
                "the configured provider under the deployment-wide rate limiter and circuit "
                "breaker. Pairs left pending by an outage or a rate limit are picked up by the "
                "pending-embeddings sensor; a run that stopped early for that reason fails, "
                "after recording what it did. Backfills run up to "
                f"{EMBED_PARTITIONS_PER_RUN} partitions per run."
            ),
        )
    ],
    partitions_def=import_files,
    can_subset=True,
    pool="embedding_api",
    retry_policy=EMBED_RETRY,
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=EMBED_PARTITIONS_PER_RUN),
    check_specs=[
        _embedding_check(
            COVERAGE_CHECK,
            "Share of the partition's pairs with a completed embedding: ERROR under the "
            "configured threshold (default 0.99), WARN under 1.0.",
        ),
        _embedding_check(
            DIMENSION_CHECK,
            "Read from the stored vectors, not the status column: every completed pair has a "
            "vector, and every vector has the configured width (vector_dims).",
        ),
        _embedding_check(
            PENDING_AGE_CHECK,
            "How long the oldest pending pair has waited: WARN after HELIX_PENDING_AGE_WARN_S, "
            "ERROR after HELIX_PENDING_AGE_ERROR_S.",
        ),
    ],
)
def qa_embeddings(
    context: AssetExecutionContext,
    config: EmbedRunConfig,
    database: DatabaseResource,
    embedding: EmbeddingResource,
    import_settings: ImportSettingsResource,
):
    events = _embed_partitions(context, config, database.get_engine(), embedding, import_settings)
    yield from each_interruptibly("embedding", events)


def _embed_partitions(
    context: AssetExecutionContext,
    config: EmbedRunConfig,
    engine,
    embedding: EmbeddingResource,
    import_settings: ImportSettingsResource,
):
    keys = context.partition_keys
    single = len(keys) == 1
    stopped: dict[str, str] = {}
    for key in keys:
        job = jobs.get_job(engine, key)
        if job.status in health.ROLLED_BACK:
            if single:
                raise terminal_failure(f"import {key} {_rolled_back_verb(job)} rolled back")
            context.log.warning(f"import {key} {_rolled_back_verb(job)} rolled back: skipped")
            _record(context, engine, job, embedding, single=False, run={"skipped": True})
            continue
        override = config.mode or context.run.tags.get(EMBED_MODE_TAG)
        if _mode(embedding, engine, job, override) == "batch":
            result = _record(
                context, engine, job, embedding, single, _submit(engine, job, embedding)
            )
            if single:
                yield result
            continue
        try:
            with keep_alive(context, engine, import_settings, kind="embed", partition_key=key):
                report, circuit_state = embedding.setup().embed(
                    engine, job_id=job.id, observer=metrics.PrometheusEmbedObserver(),
                    on_progress=EmbedProgressLog(context, import_settings.progress_log_s),
                )  # fmt: skip
        except ProviderConfigError as exc:
            raise _blocked(context, engine, key, embedding, exc) from exc
        if report.stopped_reason:
            context.log.warning(f"{key}: stopped early: {report.stopped_reason}")
            stopped[key] = report.stopped_reason
        result = _record(
            context, engine, job, embedding, single, run_metadata(report, circuit_state)
        )
        if single:
            yield result
        if stopped:
            break  # the API is in trouble: the rest waits for the sensor or the next run
    if not single:
        # Per-partition metadata and checks were recorded above.
        yield MaterializeResult(asset_key=QA_EMBEDDINGS)
    if stopped:
        raise stopped_early(stopped, [k for k in keys if k not in stopped])


def _mode(embedding: EmbeddingResource, engine, job: jobs.Job, override: str | None) -> str:
    try:
        return embedding.setup().mode_for(count_pending(engine, job.id), override)
    except ValueError as exc:  # an unknown mode, or batch without a Batch API
        raise terminal_failure(str(exc)) from exc


def _submit(engine, job: jobs.Job, embedding: EmbeddingResource) -> dict:
    """Batch mode: the partition's pending pairs go to the Batch API; what the run did."""
    setup = embedding.setup()
    client = setup.batch_client()
    try:
        report = submit_batches(engine, client, setup.batch_options(), job_id=job.id)
    finally:
        client.close()
    return {
        "embed_mode": "batch",
        "batches_submitted": len(report.batches),
        "pairs_batched": report.pairs,
        "rejected_inputs": report.rejected,
        "token_estimate": report.token_estimate,
        "estimated_cost_usd": round(report.estimated_cost_usd, 6),
    }


def _rolled_back_verb(job: jobs.Job) -> str:
    return "is being" if job.status == "rolling_back" else "was"


def _record(context, engine, job, embedding: EmbeddingResource, single: bool, run: dict):
    """The partition's embeddings as they now stand: a MaterializeResult of a one-partition
    run, or partition-scoped metadata and check evaluations of a run over a range."""
    blocked = embedding.setup().blocked(engine)
    metadata, checks = embedding_state(engine, job, embedding.check_limits(), blocked)
    metadata = metadata_values(metadata | run)
    if single:
        selected = {key.name for key in context.selected_asset_check_keys}
        results = [check_result(c) for c in checks if c.name in selected]
        return MaterializeResult(asset_key=QA_EMBEDDINGS, metadata=metadata, check_results=results)
    context.add_asset_metadata(metadata, partition_key=job.partition_key)
    for outcome in checks:
        context.log_event(check_evaluation(QA_EMBEDDINGS, outcome, job.partition_key))
    return None


def stopped_early(stopped: dict[str, str], not_reached: list[str]) -> Failure:
    """After the materialization is recorded: the run fails, so that the run list shows the
    trouble. No step retry (the circuit or the rate limit needs time, not an immediate retry);
    the pending-embeddings sensor requests the rest when the API is healthy again."""
    reasons = "; ".join(f"{key}: {reason}" for key, reason in stopped.items())
    return Failure(
        description=f"embedding stopped early ({reasons}); the pending pairs wait for the "
        "pending-embeddings sensor",
        metadata={"stopped_early": MetadataValue.json(stopped), "not_reached": len(not_reached)},
        allow_retries=False,
    )


def _blocked(context, engine, key: str, embedding: EmbeddingResource, exc) -> Failure:
    """The checks still report (coverage says why nothing was embedded); the run fails without
    retries: no retry can succeed until the configuration or the account changes."""
    job = jobs.get_job(engine, key)
    blocked = embedding.setup().blocked(engine)
    _, checks = embedding_state(engine, job, embedding.check_limits(), blocked)
    for outcome in checks:
        context.log_event(check_evaluation(QA_EMBEDDINGS, outcome, key))
    metadata = {"embeddings_blocked": str(exc.blocker or ""), TERMINAL: True}
    return Failure(description=exc.message, metadata=metadata, allow_retries=False)


def embedding_checks(engine, job_id, embedding: EmbeddingResource) -> list[AssetCheckResult]:
    """The partition's embedding checks as they stand now (tests and tools)."""
    job = jobs.get_job(engine, job_id)
    blocked = embedding.setup().blocked(engine)
    _, checks = embedding_state(engine, job, embedding.check_limits(), blocked)
    return [check_result(c) for c in checks]
