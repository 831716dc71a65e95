"""A child process that submits batches, or runs a collection cycle, and stops at a named step
so that the parent can SIGKILL its whole process group right there.

    python -m helix_pipelines_tests.support.batch_child submit|cycle --stop-at STEP

At STEP it prints "AT STEP <batch id>" and waits forever; the parent kills it. The kill is the
parent's real os.killpg(SIGKILL): nothing here pretends to crash.
"""

from __future__ import annotations

import argparse
import os
import threading

from helix_pipelines.db.engine import create_app_engine, with_driver
from helix_pipelines.embedding.openai_batch import BatchClient
from helix_pipelines.pipeline import batch_collection as collection
from helix_pipelines.pipeline import batch_embedding as flow
from helix_pipelines_tests.support.embed_driver import MODEL


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["submit", "cycle"])
    parser.add_argument("--stop-at", required=True)
    args = parser.parse_args(argv)
    engine = create_app_engine(with_driver(os.environ["HELIX_DATABASE_URL"], "psycopg"))
    client = BatchClient(
        api_key=os.environ["OPENAI_API_KEY"], base_url=os.environ["OPENAI_BASE_URL"]
    )
    options = flow.BatchOptions(model=MODEL, dim=int(os.environ["HELIX_EMBEDDING_DIM"]))

    def stop_here(step: str, batch_id) -> None:
        if step == args.stop_at:
            print(f"AT {step} {batch_id}", flush=True)
            threading.Event().wait()

    if args.action == "submit":
        flow.submit_batches(engine, client, options, on_step=stop_here)
    else:
        collection.run_cycle(engine, client, options, on_step=stop_here)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
