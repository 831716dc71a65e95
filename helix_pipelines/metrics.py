"""Prometheus metrics.

Counters and histograms are written by the run processes (each run, and each step with the
multiprocess executor, is a process of its own) in prometheus-client's multiprocess mode: every
process writes its own file under PROMETHEUS_MULTIPROC_DIR and the metrics server adds them up.
Files of dead processes are merged into one archive file per type, so their counts survive and
the directory does not grow with every run. Gauges that describe the knowledge base (jobs by
status, pending embeddings, the circuit) are read from the database at scrape time, so they are
right after any restart.

PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is first imported: the CLI and the
dev server set it (to $HELIX_HOME/metrics) for themselves and every Dagster process.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import os
import threading
from pathlib import Path

import psutil
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger(__name__)

BATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}

import_batches = Counter(
    "helix_import_batches", "Import batches by outcome (success, error, timeout).", ["status"]
)
import_batch_duration = Histogram(
    "helix_import_batch_duration_seconds",
    "Time of each attempt to commit an import batch, by outcome (success, retry, error, timeout).",
    ["outcome"], buckets=BATCH_BUCKETS,
)  # fmt: skip
import_batch_retries = Counter(
    "helix_import_batch_retries", "Attempts to commit an import batch that failed and were retried."
)
import_rows = Counter(
    "helix_import_rows", "Input rows by outcome (pair, duplicate, error).", ["outcome"]
)
embedding_latency = Histogram(
    "helix_import_embedding_latency_seconds",
    "Latency of embedding requests, failed and timed-out ones included, by outcome.",
    ["outcome"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
embedding_requests = Counter(
    "helix_embedding_requests",
    "Embedding API requests by outcome (success, rate_limited, error, invalid_input).",
    ["outcome"],
)
embedding_inputs = Counter("helix_embedding_inputs", "Inputs sent in successful requests.")
rate_limit_wait = Counter(
    "helix_rate_limiter_wait_seconds", "Time spent waiting on the deployment-wide rate limiter."
)


def record_batch(status: str, seconds: float, rows: int) -> None:
    """One attempt at a batch (pipeline.importing's on_batch). A batch counts once in
    helix_import_batches_total, by its final outcome; its retries count on their own."""
    import_batch_duration.labels(outcome=status).observe(seconds)
    if status == "retry":
        import_batch_retries.inc()
    else:
        import_batches.labels(status=status).inc()


def record_rows(pairs: int, duplicates: int, errors: int) -> None:
    for outcome, count in (("pair", pairs), ("duplicate", duplicates), ("error", errors)):
        if count:
            import_rows.labels(outcome=outcome).inc(count)


class PrometheusEmbedObserver:
    """pipeline.embedding's observer hooks, counted in Prometheus."""

    def request(self, outcome: str, latency_s: float, inputs: int) -> None:
        embedding_requests.labels(outcome=outcome).inc()
        embedding_latency.labels(outcome=outcome).observe(latency_s)
        if outcome == "success":
            embedding_inputs.inc(inputs)

    def limiter_wait(self, seconds: float) -> None:
        if seconds > 0:
            rate_limit_wait.inc(seconds)


# -- the scrape side ----------------------------------------------------------------------------


class KnowledgeBaseCollector:
    """Gauges computed from the database at each scrape."""

    def __init__(self, engine, breaker_snapshot, stale_after_s: float = 300.0) -> None:
        self._engine = engine
        self._breaker_snapshot = breaker_snapshot
        self._stale_after_s = stale_after_s

    def collect(self):
        from helix_pipelines.db.embedding_batches import summary as batch_summary
        from helix_pipelines.db.embeddings import count_parked
        from helix_pipelines.db.stats import (
            embedding_status_counts,
            job_status_counts,
            processing_imports,
        )

        try:
            jobs = job_status_counts(self._engine)
            live, stalled = processing_imports(self._engine, self._stale_after_s)
            embeddings = embedding_status_counts(self._engine)
            snapshot = self._breaker_snapshot()
            circuit = snapshot["state"]
            parked = count_parked(self._engine)
            in_batches = batch_summary(self._engine)
        except Exception as exc:  # noqa: BLE001 - a scrape must answer even when the DB is down
            log.warning("metrics: the database is unavailable: %s", exc)
            up = GaugeMetricFamily("helix_database_up", "1 when the database answered.")
            up.add_metric([], 0)
            yield up
            return
        yield _gauge("helix_database_up", "1 when the database answered.", [([], 1)])
        yield _gauge("helix_import_jobs", "Import jobs by status.",
                     [([s], n) for s, n in jobs.items()], ["status"])  # fmt: skip
        yield _gauge("helix_import_active_jobs", "Imports a live run is processing now.",
                     [([], live)])  # fmt: skip
        yield _gauge("helix_import_stalled_jobs",
                     "Imports still `processing` whose run is dead (recovery resumes them).",
                     [([], stalled)])  # fmt: skip
        yield _gauge("helix_embeddings", "Pairs by embedding status.",
                     [([s], n) for s, n in embeddings.items()], ["status"])  # fmt: skip
        yield _gauge("helix_embeddings_pending", "Pairs waiting for an embedding.",
                     [([], embeddings.get("pending", 0))])  # fmt: skip
        yield _gauge("helix_circuit_breaker_state",
                     "Embeddings API circuit: 0 closed, 1 half-open, 2 open.",
                     [([], CIRCUIT_STATES.get(circuit, 2))])  # fmt: skip
        yield _blocked_gauge(snapshot.get("blocked"))
        yield _gauge("helix_embeddings_parked",
                     "Failed pairs whose attempts ran out on transient errors; they return to "
                     "pending once the API is healthy again.", [([], parked)])  # fmt: skip
        yield from _batch_gauges(in_batches)


def _batch_gauges(summary):
    yield _gauge("helix_embedding_batches_in_flight",
                 "Batch API batches submitted (or being submitted) and not yet collected.",
                 [([], summary.in_flight)])  # fmt: skip
    yield _gauge("helix_embedding_batch_pairs_waiting",
                 "Pairs waiting in Batch API batches for their vectors.",
                 [([], summary.pairs_waiting)])  # fmt: skip
    yield _gauge("helix_embedding_batch_oldest_age_seconds",
                 "Age of the oldest batch not yet collected (0 when none).",
                 [([], summary.oldest_age_s or 0.0)])  # fmt: skip


def _blocked_gauge(blocked: dict | None):
    """1 for the reason embeddings are blocked (quota, auth, model, dimensions), 0 for the
    others: alert on max(helix_embeddings_blocked) == 1."""
    from helix_pipelines.core.errors import Blocker

    current = blocked["reason"] if blocked else None
    return _gauge(
        "helix_embeddings_blocked",
        "1 while the embeddings API refuses the account or the setup, by reason.",
        [([reason.value], int(reason.value == current)) for reason in Blocker],
        ["reason"],
    )


def _gauge(name, documentation, samples, labels=()):
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    for label_values, value in samples:
        family.add_metric(label_values, value)
    return family


def build_registry(
    multiproc_dir: Path, engine, breaker_snapshot, stale_after_s: float = 300.0
) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiproc_dir))
    registry.register(KnowledgeBaseCollector(engine, breaker_snapshot, stale_after_s))
    return registry


def compact_dead_process_files(multiproc_dir: Path) -> int:
    """Fold the files of dead processes into one archive per metric type and delete them.
    Counter and histogram samples are sums, so adding them keeps every count."""
    merged = 0
    with _locked(multiproc_dir):
        for path in glob.glob(str(multiproc_dir / "*_*.db")):
            kind, _, rest = os.path.basename(path).partition("_")
            pid = rest[:-3]
            if kind not in ("counter", "histogram") or not pid.isdigit():
                continue
            if psutil.pid_exists(int(pid)):
                continue
            _add_into_archive(multiproc_dir / f"{kind}_archive.db", path)
            os.unlink(path)
            merged += 1
    return merged


def _add_into_archive(archive_path: Path, dead_file: str) -> None:
    archive = MmapedDict(str(archive_path))
    try:
        for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(dead_file):
            current, _ = archive.read_value(key)
            archive.write_value(key, current + value, timestamp)
    finally:
        archive.close()


@contextlib.contextmanager
def _locked(directory: Path):
    with open(directory / ".compact.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def serve(
    port: int,
    multiproc_dir: Path,
    engine,
    breaker_snapshot,
    host: str = "0.0.0.0",
    stale_after_s: float = 300.0,
):
    """Serve /metrics until interrupted, compacting dead processes' files every minute."""
    from prometheus_client import start_http_server

    multiproc_dir.mkdir(parents=True, exist_ok=True)
    registry = build_registry(multiproc_dir, engine, breaker_snapshot, stale_after_s)
    server, thread = start_http_server(port, addr=host, registry=registry)
    stop = threading.Event()
    try:
        while not stop.wait(60):
            compact_dead_process_files(multiproc_dir)
    finally:
        server.shutdown()
        thread.join(5)
