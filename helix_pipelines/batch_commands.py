"""`helix-pipelines batches`: embedding batches submitted to the Batch API and their state;
`--submit` sends the pending pairs to batches, `--collect` does what the sensor's run does
(finish abandoned submissions, poll, collect finished batches), `--cancel [ID]` cancels."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from helix_pipelines.settings import Settings


def register(verbs, *, add_json_flag) -> None:
    cmd = verbs.add_parser(
        "batches", help="embedding batches submitted to the Batch API and their state"
    )
    cmd.add_argument("--all", action="store_true", help="also list collected batches")
    action = cmd.add_mutually_exclusive_group()
    action.add_argument(
        "--submit", action="store_true", help="send every pending pair to batches now"
    )
    action.add_argument(
        "--collect", action="store_true",
        help="resume abandoned submissions, poll live batches, collect the finished ones",
    )  # fmt: skip
    action.add_argument(
        "--cancel", nargs="?", const="", default=None, metavar="ID",
        help="cancel one live batch (a prefix of its id or remote id), or all",
    )  # fmt: skip
    add_json_flag(cmd)
    cmd.set_defaults(handler=cmd_batches)


def cmd_batches(settings: Settings, args: argparse.Namespace) -> int:
    from helix_pipelines import runtime
    from helix_pipelines.cli import print_json

    app = runtime.open_app(settings)
    result: dict = {}
    if args.submit or args.collect or args.cancel is not None:
        result = _act(settings, app.engine, args)
    rows = _listing(app.engine, include_collected=args.all)
    if args.json:
        print_json(result | {"batches": rows})
        return 0
    for key, value in result.items():
        print(f"{key}: {value}")
    _print_table(rows)
    return 0


def _act(settings: Settings, engine, args) -> dict:
    from helix_pipelines.cli import CliError
    from helix_pipelines.core.embed_mode import BatchModeUnavailable
    from helix_pipelines.db import embedding_batches as batches
    from helix_pipelines.pipeline import batch_collection as collection
    from helix_pipelines.pipeline import batch_embedding as flow
    from helix_pipelines.pipeline.embedding_setup import setup_from_settings

    setup = setup_from_settings(settings)
    try:
        client = setup.batch_client()
    except BatchModeUnavailable as exc:
        raise CliError(str(exc)) from exc
    options = setup.batch_options()
    try:
        if args.submit:
            report = flow.submit_batches(engine, client, options)
            return {"submitted": [str(b) for b in report.batches], "pairs": report.pairs,
                    "estimated_cost_usd": round(report.estimated_cost_usd, 6)}  # fmt: skip
        if args.collect:
            cycle = collection.run_cycle(engine, client, options)
            return {
                "resumed": [str(b) for b in cycle.resumed],
                "collected": [str(c.batch_id) for c in cycle.collected if not c.skipped],
                "embedded": sum(c.embedded for c in cycle.collected),
                "failed": sum(c.failed for c in cycle.collected),
                "returned_to_pending": sum(c.returned + c.retried for c in cycle.collected),
            }
        target = None
        if args.cancel:
            found = [b for b in batches.find(engine, args.cancel) if b.state != "collected"]
            if len(found) != 1:
                raise CliError(f"{len(found)} live batches match {args.cancel!r}: name one")
            target = found[0].id
        return {"cancelled": [str(b) for b in flow.cancel_batches(engine, client, target)]}
    finally:
        client.close()


def _listing(engine, *, include_collected: bool) -> list[dict]:
    from helix_pipelines.db import embedding_batches as batches

    states = (
        None
        if include_collected
        else batches.UNSUBMITTED + batches.LIVE_REMOTE + (batches.FINISHED_REMOTE)
    )
    now = datetime.now(UTC)
    return [
        {
            "id": str(b.id),
            "remote_batch_id": b.remote_batch_id,
            "state": b.state,
            "pairs": b.request_count,
            "completed": b.completed_count,
            "failed": b.failed_count,
            "token_estimate": b.token_estimate,
            "input_file_id": b.input_file_id,
            "output_file_id": b.output_file_id,
            "error_file_id": b.error_file_id,
            "created_at": b.created_at.isoformat(),
            "submitted_at": b.submitted_at.isoformat() if b.submitted_at else None,
            "expires_at": b.expires_at.isoformat() if b.expires_at else None,
            "finished_at": b.finished_at.isoformat() if b.finished_at else None,
            "collected_at": b.collected_at.isoformat() if b.collected_at else None,
            "age_s": round((now - b.created_at).total_seconds(), 1),
            "errors": b.errors,
        }
        for b in batches.list_batches(engine, states)
    ]


def _print_table(rows: list[dict]) -> None:
    if not rows:
        print("no embedding batches in flight")
        return
    print(f"{'batch':<10} {'remote':<22} {'state':<12} {'pairs':>7} {'done':>7} {'failed':>6} age")
    for r in rows:
        print(
            f"{r['id'][:8]:<10} {(r['remote_batch_id'] or '-'):<22} {r['state']:<12} "
            f"{r['pairs']:>7} {r['completed']:>7} {r['failed']:>6} {_age(r['age_s'])}"
        )


def _age(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
