"""A child process that imports one job, and can SIGKILL itself at a chosen point.

    python -m helix_pipelines_tests.support.import_driver JOB --run-id R \
        [--batch-size 2000] [--kill-at POINT:BATCH]

The database is HELIX_DATABASE_URL. POINT is a hook point of pipeline.importing ("locked",
"pairs_copied", "errors_copied", "before_commit", "committed"); BATCH counts the batches this
process reaches that point, from 1. Prints the import's report as one JSON line when it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from collections import Counter

from helix_pipelines.core.adaptive import AdaptiveBatchSize
from helix_pipelines.db.engine import create_app_engine, with_driver
from helix_pipelines.pipeline.importing import ImportOptions, import_file


def kill_hook(point: str, batch: int):
    """A hook that kills this process the `batch`-th time it reaches `point`."""
    reached: Counter = Counter()

    def hook(name: str) -> None:
        reached[name] += 1
        if name == point and reached[name] == batch:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("job")
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--kill-at", help="POINT:BATCH")
    args = parser.parse_args(argv)
    hook = None
    if args.kill_at:
        point, batch = args.kill_at.split(":")
        hook = kill_hook(point, int(batch))
    engine = create_app_engine(with_driver(os.environ["HELIX_DATABASE_URL"], "psycopg"))
    options = ImportOptions(batch_size=AdaptiveBatchSize(initial=args.batch_size, fixed=True))
    report = import_file(engine, args.job, run_id=args.run_id, options=options, hook=hook)
    print(json.dumps({"status": report.job.status, "batches": report.batches}), flush=True)


if __name__ == "__main__":
    main()
