"""Benchmark of the import path (--no-embed semantics) against raw COPY, by batch size, and its
memory at two file sizes.

    .venv/bin/python bench/import.py [--rows 200000] [--batch-rows 20000] [--rss-rows 1000000]

Starts its own embedded PostgreSQL in a temporary HELIX_HOME (stopped at the end), generates
seeded CSVs (helix_pipelines_tests.support.generate: ~780 bytes a row, 1% bad rows, 2%
duplicates) and prints:
- rows/s of import_file() with the default adaptive batch size, end to end (parse, validate,
  dedupe, COPY, checkpoint), and of a raw COPY of the same parsed pairs (10,000 a batch) into an
  empty table shaped like qa_pair, without indexes and with qa_pair's own indexes; the ratio
  end-to-end / raw-without-indexes (target >= 0.40);
- rows/s at fixed batch sizes 50, 500, 5,000 and 20,000 next to the adaptive default;
- peak RSS (ru_maxrss) of an import of 10,000 and of --rss-rows rows, each in a fresh child
  process, and their ratio (target <= 1.25).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from helix_pipelines.core.adaptive import AdaptiveBatchSize  # noqa: E402
from helix_pipelines.core.parsing import open_source  # noqa: E402
from helix_pipelines.db import jobs, migrate  # noqa: E402
from helix_pipelines.db.batches import PAIR_COLUMNS  # noqa: E402
from helix_pipelines.db.embedded import EmbeddedPostgres  # noqa: E402
from helix_pipelines.db.engine import create_app_engine, ensure_database  # noqa: E402
from helix_pipelines.pipeline.importing import ImportOptions, import_file  # noqa: E402
from helix_pipelines_tests.support.generate import write_qa_csv  # noqa: E402

SPEED_TARGET = 0.40
MEMORY_TARGET = 1.25
FIXED_SIZES = (50, 500, 5_000, 20_000)
COPY_BATCH = 10_000
DIM = 384


def empty(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE qa_pair, import_row_error, import_job CASCADE")
        conn.exec_driver_sql("DROP TABLE IF EXISTS bench_copy")


def import_rows_per_s(engine: sa.Engine, path: Path, options: ImportOptions | None) -> float:
    empty(engine)
    with open(path, "rb") as handle:  # streamed: the file is never held whole
        sha = hashlib.file_digest(handle, "sha256").hexdigest()
    job, _ = jobs.register_job(engine, source_name=path.name, source_path=str(path), sha256=sha)
    began = time.perf_counter()
    report = import_file(engine, job.id, run_id="bench", options=options)
    elapsed = time.perf_counter() - began
    assert report.job.status in ("completed", "completed_with_errors"), report.job.last_error
    total = report.job
    assert total.rows_total == total.pairs_created + total.duplicates_skipped + total.row_errors
    return total.rows_total / elapsed


def raw_copy_rows_per_s(engine: sa.Engine, path: Path, *, with_indexes: bool) -> float:
    """Parse first (not timed), then time COPY of every row's pair into bench_copy."""
    empty(engine)
    with open_source(path) as source:
        pairs = [p for chunk in source.chunks() for p in chunk.pairs]
    like = "INCLUDING ALL" if with_indexes else "INCLUDING DEFAULTS INCLUDING IDENTITY"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE bench_copy (LIKE qa_pair {like})")
    job_id = jobs.uuid.uuid4()
    began = time.perf_counter()
    for start in range(0, len(pairs), COPY_BATCH):
        with engine.begin() as conn:
            cursor = conn.connection.driver_connection.cursor()
            with cursor.copy(f"COPY bench_copy ({PAIR_COLUMNS}) FROM STDIN") as copy:
                for p in pairs[start : start + COPY_BATCH]:
                    row = (job_id, p.source_row, p.question, p.answer, p.category, p.content_hash)
                    copy.write_row(row)
    return len(pairs) / (time.perf_counter() - began)


def fixed(size: int) -> ImportOptions:
    return ImportOptions(batch_size=AdaptiveBatchSize(initial=size, minimum=1, fixed=True))


def child_peak_rss_mb(url: str, path: Path) -> float:
    command = [sys.executable, __file__, "--child-rss", str(path), "--url", url]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def child_main(path: Path, url: str) -> None:
    engine = create_app_engine(url)
    rows_per_s = import_rows_per_s(engine, path, None)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak_mb, "rows_per_s": rows_per_s}))


def row(label: str, value: str, note: str = "") -> None:
    print(f"{label:<46} {value:>14}  {note}")


def run(args: argparse.Namespace, work: Path) -> None:
    server = EmbeddedPostgres(work / "home")
    server.acquire()
    try:
        ensure_database(server.url("postgres"), "bench")
        url = server.url("bench")
        engine = create_app_engine(url)
        migrate.upgrade(engine, DIM)
        report(args, work, engine, url)
        engine.dispose()
    finally:
        server.stop()


def report(args, work: Path, engine: sa.Engine, url: str) -> None:
    big = write_qa_csv(work / "big.csv", args.rows, seed=1).path
    end_to_end = import_rows_per_s(engine, big, None)
    raw = raw_copy_rows_per_s(engine, big, with_indexes=False)
    raw_indexed = raw_copy_rows_per_s(engine, big, with_indexes=True)
    print(f"\nimport of {args.rows:,} generated rows ({big.stat().st_size / 1e6:.0f} MB), rows/s")
    row("import_file, adaptive default (end to end)", f"{end_to_end:,.0f}")
    row("raw COPY, 10,000 a batch, no indexes", f"{raw:,.0f}")
    row("raw COPY, 10,000 a batch, qa_pair's indexes", f"{raw_indexed:,.0f}")
    ratio = end_to_end / raw
    row("ratio end to end / raw COPY (no indexes)", f"{ratio:.2f}", _verdict(ratio >= SPEED_TARGET))
    row("ratio end to end / raw COPY (with indexes)", f"{end_to_end / raw_indexed:.2f}")
    small = write_qa_csv(work / "batches.csv", args.batch_rows, seed=2).path
    print(f"\nbatch size on {args.batch_rows:,} rows, rows/s")
    for size in FIXED_SIZES:
        row(f"fixed {size:,}", f"{import_rows_per_s(engine, small, fixed(size)):,.0f}")
    row("adaptive default", f"{import_rows_per_s(engine, small, None):,.0f}")
    rss_small = write_qa_csv(work / "rss_small.csv", 10_000, seed=3).path
    rss_big = write_qa_csv(work / "rss_big.csv", args.rss_rows, seed=3).path
    small_mb, big_mb = child_peak_rss_mb(url, rss_small), child_peak_rss_mb(url, rss_big)
    empty(engine)
    print("\npeak RSS of an import (fresh process)")
    row("10,000 rows", f"{small_mb:,.0f} MB")
    row(f"{args.rss_rows:,} rows", f"{big_mb:,.0f} MB")
    memory = big_mb / small_mb
    row("ratio", f"{memory:.2f}", _verdict(memory <= MEMORY_TARGET))


def _verdict(ok: bool) -> str:
    return "ok" if ok else "BELOW TARGET"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-rows", type=int, default=20_000)
    parser.add_argument("--rss-rows", type=int, default=1_000_000)
    parser.add_argument("--child-rss", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rss:
        child_main(args.child_rss, args.url)
        return
    with tempfile.TemporaryDirectory(prefix="hxb-", ignore_cleanup_errors=True) as work:
        run(args, Path(work))


if __name__ == "__main__":
    main()
