"""What the asset checks conclude, as plain values: the Dagster layer (defs/reporting.py) only
turns these outcomes into check results and events.

Every path that changes a partition's pairs (the assets, the Launchpad jobs, the CLI) reports
through the same outcomes, so the UI shows the same truth whoever did the work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from helix_pipelines.db.embeddings import Coverage
from helix_pipelines.db.health import VectorHealth
from helix_pipelines.db.jobs import Job

Severity = Literal["warn", "error"]

COVERAGE_CHECK = "embedding_coverage"
DIMENSION_CHECK = "embedding_dimensions"
PENDING_AGE_CHECK = "oldest_pending_embedding"
ACCOUNTING_CHECK = "import_accounting"
EMBEDDING_CHECKS = (COVERAGE_CHECK, DIMENSION_CHECK, PENDING_AGE_CHECK)
ROLLED_BACK = ("rolling_back", "rolled_back")


@dataclass(frozen=True)
class CheckLimits:
    dim: int
    coverage_error_threshold: float = 0.99
    pending_age_warn_s: float = 3600.0
    pending_age_error_s: float = 86400.0


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    severity: Severity = "error"
    metadata: dict = field(default_factory=dict)
    description: str | None = None


def accounting(job: Job) -> CheckOutcome:
    """rows_total = pairs_created + duplicates_skipped + row_errors, once the import finished.
    A rolled-back import fails it on purpose (WARN): its pairs are gone."""
    accounted = job.pairs_created + job.duplicates_skipped + job.row_errors
    metadata = {
        "rows_total": job.rows_total, "pairs_created": job.pairs_created,
        "duplicates_skipped": job.duplicates_skipped, "row_errors": job.row_errors,
        "status": job.status,
    }  # fmt: skip
    if job.status in ROLLED_BACK:
        return CheckOutcome(ACCOUNTING_CHECK, False, "warn", metadata, _rolled_back(job))
    passed = job.finished and job.rows_total == accounted
    return CheckOutcome(ACCOUNTING_CHECK, passed, "error", metadata)


def embedding_checks(
    job: Job, cov: Coverage, vectors: VectorHealth, limits: CheckLimits, blocked: dict | None
) -> list[CheckOutcome]:
    """Coverage, the dimensions of the stored vectors, and the age of the oldest pending pair.
    On a rolled-back import all three fail (WARN) and say so."""
    if job.status in ROLLED_BACK:
        metadata = {"status": job.status, "total": cov.total}
        return [
            CheckOutcome(name, False, "warn", metadata, _rolled_back(job))
            for name in EMBEDDING_CHECKS
        ]
    return [
        _coverage(cov, limits, blocked),
        _dimensions(vectors, limits),
        _pending_age(vectors, limits),
    ]


def _rolled_back(job: Job) -> str:
    verb = "is being" if job.status == "rolling_back" else "was"
    return f"import {job.partition_key} {verb} rolled back: its pairs are removed"


def _coverage(cov: Coverage, limits: CheckLimits, blocked: dict | None) -> CheckOutcome:
    return CheckOutcome(
        COVERAGE_CHECK,
        passed=cov.ratio >= 1.0,
        # Pairs waiting in a live batch are on their way: alone they only WARN.
        severity="error" if _ratio_with_batched(cov) < limits.coverage_error_threshold else "warn",
        metadata={
            "coverage": round(cov.ratio, 6),
            "total": cov.total,
            "completed": cov.completed,
            "pending": cov.pending,
            "in_batches": cov.batched,
            "oldest_batch_age_s": round(cov.oldest_batched_age_s or 0.0, 1),
            "failed": cov.failed,
            "commonest_failures": [{"reason": r, "pairs": n} for r, n in cov.top_errors],
            "embeddings_blocked": f"{blocked['reason']}: {blocked['message']}" if blocked else "",
        },
    )


def _ratio_with_batched(cov: Coverage) -> float:
    return (cov.completed + cov.batched) / cov.total if cov.total else 1.0


def _dimensions(vectors: VectorHealth, limits: CheckLimits) -> CheckOutcome:
    """Checked against the vectors themselves: the status column is not trusted alone."""
    bad = vectors.completed_without_vector + vectors.wrong_dimension
    return CheckOutcome(
        DIMENSION_CHECK,
        passed=bad == 0,
        metadata={
            "expected_dim": limits.dim,
            "completed": vectors.completed,
            "completed_without_vector": vectors.completed_without_vector,
            "wrong_dimension": vectors.wrong_dimension,
        },
    )


def _pending_age(vectors: VectorHealth, limits: CheckLimits) -> CheckOutcome:
    age = vectors.oldest_pending_age_s
    metadata = {
        "pending": vectors.pending,
        "oldest_pending_age_s": round(age, 1) if age is not None else 0.0,
        "warn_after_s": limits.pending_age_warn_s,
        "error_after_s": limits.pending_age_error_s,
    }
    if age is None or age < limits.pending_age_warn_s:
        return CheckOutcome(PENDING_AGE_CHECK, True, "warn", metadata)
    severity: Severity = "error" if age >= limits.pending_age_error_s else "warn"
    return CheckOutcome(PENDING_AGE_CHECK, False, severity, metadata)


def touched(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """Partition keys whose embedding fingerprint (db.health.embedding_fingerprints) changed."""
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
