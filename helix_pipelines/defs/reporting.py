"""What happened to a partition, as Dagster events: the same materializations and check results
whether an asset run, a Launchpad job or the CLI (runless events) did the work.

The conclusions come from pipeline.health; this module only reads the state they need and turns
them into Dagster's types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    MetadataValue,
    job,
    op,
)

from helix_pipelines.db import jobs
from helix_pipelines.db.embeddings import coverage
from helix_pipelines.db.health import embedding_fingerprints, vector_health
from helix_pipelines.pipeline import health
from helix_pipelines.pipeline.embedding import EmbedReport
from helix_pipelines.pipeline.health import CheckLimits, CheckOutcome

QA_PAIRS = AssetKey("qa_pairs")
QA_EMBEDDINGS = AssetKey("qa_embeddings")
SEVERITY = {"warn": AssetCheckSeverity.WARN, "error": AssetCheckSeverity.ERROR}

Emit = Callable[[AssetMaterialization | AssetCheckEvaluation], object]


def metadata_values(values: dict) -> dict:
    """Plain values as the UI shows them best: floats as floats, lists and dicts as JSON."""
    out = {}
    for key, value in values.items():
        if isinstance(value, (list, dict)):
            value = MetadataValue.json(value)
        elif isinstance(value, float):
            value = MetadataValue.float(value)
        out[key] = value
    return out


def check_result(outcome: CheckOutcome) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=outcome.name, passed=outcome.passed, severity=SEVERITY[outcome.severity],
        metadata=metadata_values(outcome.metadata), description=outcome.description,
    )  # fmt: skip


def check_evaluation(
    asset_key: AssetKey, outcome: CheckOutcome, partition: str
) -> AssetCheckEvaluation:
    return AssetCheckEvaluation(
        asset_key=asset_key, check_name=outcome.name, passed=outcome.passed,
        severity=SEVERITY[outcome.severity], metadata=metadata_values(outcome.metadata),
        description=outcome.description, partition=partition,
    )  # fmt: skip


def embedding_state(
    engine, job: jobs.Job, limits: CheckLimits, blocked: dict | None
) -> tuple[dict, list[CheckOutcome]]:
    """The partition's embeddings as they stand in the database: metadata and check outcomes."""
    cov = coverage(engine, job.id, limits.dim)
    vectors = vector_health(engine, job.id, limits.dim)
    metadata = {
        "dagster/row_count": 0 if job.status in health.ROLLED_BACK else cov.completed,
        "import_status": job.status,
        "pairs": cov.total,
        "completed": cov.completed,
        "pending": cov.pending,
        "in_batches": cov.batched,
        "failed": cov.failed,
        "coverage": round(cov.ratio, 6),
    }
    return metadata, health.embedding_checks(job, cov, vectors, limits, blocked)


def run_metadata(report: EmbedReport, circuit_state: str) -> dict:
    """What one embedding run did (the asset's own run, or a Launchpad or CLI run)."""
    return {
        "embedded": report.embedded,
        "failed_now": report.failed,
        "still_pending": report.pending,
        "requests": report.requests,
        "retries": report.retries,
        "rate_limited_429": report.rate_limited,
        "tokens": report.tokens,
        "latency_p50_s": round(report.latency_percentile(50), 4),
        "latency_p95_s": round(report.latency_percentile(95), 4),
        "estimated_cost_usd": round(report.cost_usd, 6),
        "circuit_state": circuit_state,
        "reset_for_model_change": report.reset_for_model,
        "parked": report.parked,
        "released_from_parking": report.released,
        "stopped_early": bool(report.stopped_reason),
        "stopped_reason": report.stopped_reason or "",
    }


def report_embeddings(
    emit: Emit,
    engine,
    partition_keys: Iterable[str],
    limits: CheckLimits,
    blocked: dict | None,
    extra: dict | None = None,
) -> list[str]:
    """A materialization of qa_embeddings, then its check evaluations, for each partition whose
    embeddings an operator run (Launchpad, CLI) changed; returns the keys reported."""
    reported = []
    for key in partition_keys:
        try:
            job = jobs.get_job(engine, key)
        except jobs.JobNotFound:
            continue  # rolled back and removed since
        metadata, checks = embedding_state(engine, job, limits, blocked)
        emit(
            AssetMaterialization(
                QA_EMBEDDINGS, partition=key, metadata=metadata_values(metadata | (extra or {}))
            )
        )
        for outcome in checks:
            emit(check_evaluation(QA_EMBEDDINGS, outcome, key))
        reported.append(key)
    return reported


def fingerprints(engine) -> dict[str, tuple]:
    """Take before an operator's embedding run; `report_touched` compares after it."""
    return embedding_fingerprints(engine)


def report_touched(
    emit: Emit,
    engine,
    before: dict[str, tuple],
    limits: CheckLimits,
    blocked: dict | None,
    extra: dict | None = None,
    known: Callable[[str], bool] = lambda key: True,
) -> list[str]:
    """Report every partition whose embeddings changed since `before` (and that Dagster knows:
    `known`), whichever import the run was asked for: a release of parked pairs or a re-queue
    touches others too."""
    keys = [key for key in health.touched(before, embedding_fingerprints(engine)) if known(key)]
    return report_embeddings(emit, engine, keys, limits, blocked, extra)


def report_rollback(
    emit: Emit, engine, job: jobs.Job, limits: CheckLimits, extra: dict | None = None
) -> None:
    """A rolled-back import stays visible as such: materializations of qa_pairs and
    qa_embeddings whose status is `rolled_back` and row count 0, and failing (WARN) checks that
    say why. The partition is kept, so its history stays readable."""
    job = jobs.get_job(engine, job.id)
    common = {"status": job.status, "dagster/row_count": 0} | (extra or {})
    emit(AssetMaterialization(QA_PAIRS, partition=job.partition_key, metadata=common))
    emit(check_evaluation(QA_PAIRS, health.accounting(job), job.partition_key))
    report_embeddings(emit, engine, [job.partition_key], limits, None, common)


def record_in_a_run(
    instance: DagsterInstance, job_name: str, events: list, tags: dict | None = None
) -> str | None:
    """Log events recorded outside Dagster (the CLI's work) in a small run of their own, named
    after the command: the UI shows who changed the partition and when. Not runless events:
    Dagster keeps one runless check evaluation per check and partition, ever, so a second
    report on the same partition (embed, then rollback) would fail to store."""
    if not events:
        return None

    @op(name="record")
    def record(context) -> None:  # no annotation: a string under `annotations` confuses @op
        for event in events:
            context.log_event(event)

    @job(name=job_name, description="Records what a helix-pipelines command changed.")
    def recording_job():
        record()

    return recording_job.execute_in_process(
        instance=instance, tags=tags or {}, run_config=console_log_config()
    ).run_id


def console_log_config(verbose: bool = False) -> dict:
    """The console logger of a run a CLI command executes in process: Dagster's event lines
    (DEBUG and INFO) only with `-v`, so the command's own output stays its summary; the run's
    log, with its progress lines, is in the UI either way."""
    return {"loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "WARNING"}}}}
