"""Benchmark of a source version's swap: what replacing the previous version costs on top of
importing the file.

    .venv/bin/python bench/sync.py [--pairs 50000]

Starts its own embedded PostgreSQL in a temporary HELIX_HOME (stopped at the end). Version 1
holds --pairs pairs; version 2 holds 90% of them (5% of all with a changed answer) and 10% new
ones. Prints, each measured in this run:
- seconds to import version 2 as a plain import (no source: a second import beside the first),
  the reference;
- seconds to import it as version 2 of the source (the same import plus the swap: plan, change
  log, update in place, retire), and the ratio to the reference;
- seconds of the swap alone (the transaction that completes the import), and its share of the
  reference.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from helix_pipelines.db import jobs, migrate  # noqa: E402
from helix_pipelines.db.embedded import EmbeddedPostgres  # noqa: E402
from helix_pipelines.db.engine import create_app_engine, ensure_database  # noqa: E402
from helix_pipelines.pipeline.importing import import_file  # noqa: E402

DIM = 384


def write(path: Path, pairs: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("question", "answer"), *pairs])
    return path


def versions(n: int) -> tuple[list, list]:
    first = [(f"How do I do task {i}?", f"Open the menu, then step {i}.") for i in range(n)]
    kept = int(n * 0.9)
    changed = int(n * 0.05)
    second = [(q, a + " (corrected)") if i < changed else (q, a) for i, (q, a) in
              enumerate(first[:kept])]  # fmt: skip
    second += [(f"How do I do new task {i}?", f"See the guide, part {i}.") for i in range(n // 10)]
    return first, second


def empty(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE qa_pair, import_row_error, import_duplicate, qa_pair_change, import_job "
            "CASCADE"
        )


def timed_import(engine, path: Path, source: str | None) -> tuple[float, float, jobs.Job]:
    """(seconds of the import, seconds of its completing transaction, the job)."""
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    job, _ = jobs.register_job(engine, source_name=path.name, source_path=str(path), sha256=sha,
                               source_key=source)  # fmt: skip
    marks: dict[str, float] = {}

    def hook(point: str) -> None:
        marks[point] = time.perf_counter()

    began = time.perf_counter()
    done = import_file(engine, job.id, run_id=f"bench-{time.time_ns()}", hook=hook).job
    ended = time.perf_counter()
    return ended - began, marks.get("synced", ended) - marks["committed"], done


def second_import(engine, v1: Path, v2: Path, source: str | None):
    empty(engine)
    timed_import(engine, v1, source)
    with engine.begin() as conn:  # both start from the same planner statistics
        conn.exec_driver_sql("ANALYZE qa_pair")
    return timed_import(engine, v2, source)


def report(engine, work: Path, n: int) -> None:
    first, second = versions(n)
    v1, v2 = write(work / "faq.csv", first), write(work / "faq (2).csv", second)
    # Plain, source, plain again: the reference is the faster of the two plain runs.
    plain_s = second_import(engine, v1, v2, None)[0]
    sync_s, swap_s, job = second_import(engine, v1, v2, "faq")
    plain_s = min(plain_s, second_import(engine, v1, v2, None)[0])
    counts = {k: job.checkpoint_data["sync"][k] for k in ("kept", "updated", "added", "retired")}
    print(f"\nversion 1: {n:,} pairs; version 2: {len(second):,} rows; {counts}")
    print(f"{'plain import of version 2 (reference)':<48} {plain_s:8.2f} s")
    print(
        f"{'import as version 2 of the source':<48} {sync_s:8.2f} s  ratio {sync_s / plain_s:.2f}"
    )
    print(f"{'the swap alone':<48} {swap_s:8.2f} s  share {swap_s / plain_s:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=50_000)
    args = parser.parse_args()
    # The embedded server's guard may still be leaving the home as the directory is removed.
    with tempfile.TemporaryDirectory(prefix="helix-bench-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        server = EmbeddedPostgres(work / "home")
        server.acquire()
        try:
            ensure_database(server.url("postgres"), "bench")
            engine = create_app_engine(server.url("bench"))
            migrate.upgrade(engine, DIM)
            report(engine, work, args.pairs)
            engine.dispose()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
