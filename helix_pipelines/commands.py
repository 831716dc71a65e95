"""The operator verbs beyond `dev` and `db`: import, status, recover, rollback, embed, search,
metrics. Imports and embeddings run through the Dagster instance, so they show in the UI."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from helix_pipelines.db import jobs, liveness
from helix_pipelines.settings import Settings


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: `helix-pipelines -v import` and `helix-pipelines import -v` both count.
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
        help="also show Dagster's own event lines and debug logs",
    )  # fmt: skip


def register(verbs, *, add_json_flag) -> None:
    imp = verbs.add_parser("import", help="import files now, through the Dagster instance")
    imp.add_argument("files", nargs="+", type=Path, metavar="FILE")
    imp.add_argument("--no-embed", action="store_true", help="import only; embed later")
    imp.add_argument("--keep-duplicates", action="store_true", help="keep pairs seen before")
    imp.add_argument(
        "--source", metavar="KEY",
        help="the source this file is a new version of (default: from the file name)",
    )  # fmt: skip
    imp.add_argument(
        "--allow-shrink", action="store_true",
        help="confirm a version that retires more of its source than HELIX_SYNC_MAX_RETIRE_SHARE",
    )  # fmt: skip
    add_json_flag(imp)
    add_verbose_flag(imp)
    imp.set_defaults(handler=cmd_import)

    status = verbs.add_parser("status", help="import jobs and their counts")
    status.add_argument("job", nargs="?", help="a job id or partition key")
    status.add_argument(
        "--errors-csv", type=Path, metavar="FILE", help="write JOB's rejected rows to FILE as CSV"
    )
    add_json_flag(status)
    status.set_defaults(handler=cmd_status)

    recover = verbs.add_parser("recover", help="resume imports whose run died")
    recover.add_argument("--stale-after", type=float, default=None, metavar="SECONDS")
    recover.add_argument(
        "--resume",
        action="store_true",
        help="run the recovered imports now (their embeddings are left to the sensor or `embed`)",
    )
    add_json_flag(recover)
    recover.set_defaults(handler=cmd_recover)

    rollback = verbs.add_parser("rollback", help="remove the pairs an import created")
    rollback.add_argument("job", help="a job id or partition key")
    add_json_flag(rollback)
    rollback.set_defaults(handler=cmd_rollback)

    embed = verbs.add_parser("embed", help="embed every pending pair now")
    embed.add_argument(
        "--retry-failed", nargs="?", const="", default=None, metavar="JOB",
        help="first return failed pairs (of JOB, or all) to pending",
    )  # fmt: skip
    add_json_flag(embed)
    add_verbose_flag(embed)
    embed.set_defaults(handler=cmd_embed)

    search = verbs.add_parser("search", help="nearest pairs by embedding")
    search.add_argument("text")
    search.add_argument("-k", type=int, default=5, help="how many pairs (default 5)")
    add_json_flag(search)
    search.set_defaults(handler=cmd_search)

    from helix_pipelines import batch_commands

    batch_commands.register(verbs, add_json_flag=add_json_flag)

    metrics = verbs.add_parser("metrics", help="serve Prometheus metrics")
    metrics.add_argument("--port", type=int, default=9464)
    metrics.add_argument("--host", default="0.0.0.0")
    metrics.set_defaults(handler=cmd_metrics)


# -- import -------------------------------------------------------------------------------------


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    source = _source_arg(args.source)
    with _StagedAhead(settings, args.files[0]) as first:
        app, instance = _open_with_instance(settings)
        # A job whose run died (this file imported before, killed) resumes at once.
        _recover(app, instance, settings)
        return _import_all(app, instance, settings, args, source, first)


def _import_all(app, instance, settings: Settings, args, source, first: _StagedAhead) -> int:
    from helix_pipelines import cli_progress
    from helix_pipelines.cli import print_json
    from helix_pipelines.pipeline.file_store import open_store
    from helix_pipelines.pipeline.inbox import CannotTake

    options = {"keep_duplicates": True} if args.keep_duplicates else {}
    options |= {"allow_shrink": True} if args.allow_shrink else {}
    store = open_store(settings.file_store_spec, app.engine)
    unfinished = 0
    for path in args.files:
        try:
            staged = first.take() if path is first.path else _stage(settings, path)
            job = _take(app, settings, path, options, source, store, staged)
        except (CannotTake, OSError) as exc:
            unfinished += 1
            _print_refusal(path, str(exc), as_json=args.json)
            continue
        bars = cli_progress.wanted(args.json)
        watching = cli_progress.watch_import(
            app.engine, job.id, path.name, enabled=bars, embed=not args.no_embed
        )
        with watching:
            interrupted = _run_import(app, instance, settings, job.partition_key,
                                      embed=not args.no_embed, verbose=args.verbose)  # fmt: skip
        summary = job_summary(app.engine, job.id)
        unfinished += summary["status"] not in ("completed", "completed_with_errors")
        print_json(summary) if args.json else _print_import(path, summary)
        if interrupted:
            _stop_interrupted(_how_to_resume(path, summary))
    return 1 if unfinished else 0


def _how_to_resume(path: Path, summary: dict) -> str:
    if summary["status"] == "processing":
        return f"`helix-pipelines import {path}` again resumes the import from its checkpoint"
    return "the import is done; `helix-pipelines embed` embeds its pending pairs"


def _stop_interrupted(how_to_resume: str) -> None:
    """After a run that Ctrl-C (or SIGTERM) interrupted: the command stops there too. Dagster
    took the interrupt into the run, so it is raised again for the CLI (exit code 130)."""
    print(f"helix-pipelines: interrupted; {how_to_resume}", file=sys.stderr)
    raise KeyboardInterrupt


class _StagedAhead:
    """Copies and hashes the first file in a thread while Dagster and the database open: the
    copy runs in the kernel and the hash in hashlib, both without the GIL, so the two overlap
    (a 393 MB file: 0.4-0.9 s). Its CannotTake or OSError comes out of `take`; a copy never
    taken is removed."""

    def __init__(self, settings: Settings, path: Path) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="helix-stage")
        self._copy = self._pool.submit(_stage, settings, path)

    def take(self):
        return self._copy.result()

    def __enter__(self) -> _StagedAhead:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)
        if self._copy.exception() is None:
            self._copy.result().path.unlink(missing_ok=True)  # used up, or never taken


def _stage(settings: Settings, path: Path):
    from helix_pipelines.pipeline.inbox import CannotTake
    from helix_pipelines.pipeline.intake import stage_file

    if not path.is_file():
        raise CannotTake("no such file")
    return stage_file(
        path, files_dir=settings.files_dir, max_file_bytes=settings.max_file_bytes, move=False
    )


def _take(
    app, settings: Settings, path: Path, options: dict, source: str | None, store, staged
) -> jobs.Job:
    from helix_pipelines.pipeline.intake import intake_file

    job, created = intake_file(
        app.engine,
        path,
        files_dir=settings.files_dir,
        max_file_bytes=settings.max_file_bytes,
        move=False,
        options=options,
        source_key=source,
        store=store,
        staged=staged,  # used up (removed) by intake_file
    )
    if not created and jobs.sync_refused(job):
        # The same file again: a version that waited for confirmation tries its swap again.
        if source and source != job.source_key:
            job = jobs.set_source(app.engine, job.id, source)
        jobs.merge_options(app.engine, job.id, options)
        job = jobs.reopen_refused(app.engine, job.id)
    return job


def _source_arg(source: str | None) -> str | None:
    from helix_pipelines.cli import CliError
    from helix_pipelines.core.sources import clean_source_key

    try:
        return None if source is None else clean_source_key(source)
    except ValueError as exc:
        raise CliError(f"--source: {exc}") from exc


def _print_refusal(path: Path, error: str, *, as_json: bool) -> None:
    from helix_pipelines.cli import print_json

    if as_json:
        print_json({"file": str(path), "error": error})
    else:
        print(f"{path}: refused: {error}", file=sys.stderr)


def _run_import(
    app, instance, settings: Settings, partition_key: str, *, embed: bool, verbose: bool = False
) -> bool:
    """Runs the partition's assets in this process; True when an interrupt stopped them."""
    from dagster import AssetKey
    from dagster._core.utils import make_new_run_id

    from helix_pipelines.db.liveness import Heartbeat
    from helix_pipelines.definitions import defs
    from helix_pipelines.defs.interrupts import is_interrupt
    from helix_pipelines.defs.partitions import import_files
    from helix_pipelines.defs.reporting import console_log_config

    if not instance.has_dynamic_partition(import_files.name, partition_key):
        instance.add_dynamic_partitions(import_files.name, [partition_key])
    selection = [AssetKey("qa_pairs"), AssetKey("qa_embeddings")] if embed else None
    job_def = defs.resolve_job_def("import_job")
    run_id = make_new_run_id()
    # The run is this process: its heartbeat covers the moments before and between steps too.
    with Heartbeat(app.engine, run_id, kind="cli", partition_key=partition_key,
                   stale_after_s=settings.stale_after_s):  # fmt: skip
        result = job_def.execute_in_process(
            instance=instance,
            partition_key=partition_key,
            asset_selection=selection or [AssetKey("qa_pairs")],
            raise_on_error=False,
            run_id=run_id,
            tags={"helix/launched_by": "cli"},
            run_config=console_log_config(verbose),
        )
    return any(is_interrupt(e.step_failure_data) for e in result.get_step_failure_events())


def _recover(app, instance, settings: Settings, stale_after_s: float | None = None):
    from helix_pipelines.defs.runs import recover_dead_runs
    from helix_pipelines.runtime import recovery_policy

    return recover_dead_runs(app.engine, instance, recovery_policy(settings, stale_after_s))


def job_summary(engine, job_id) -> dict:
    """The JSON shape DESIGN.md fixes for `import --json`."""
    job = jobs.get_job(engine, job_id)
    return {
        "import_job_id": str(job.id),
        "partition_key": job.partition_key,
        "status": job.status,
        "rows_total": job.rows_total,
        "pairs_created": job.pairs_created,
        "duplicates_skipped": job.duplicates_skipped,
        "row_errors": job.row_errors,
        "last_error": job.last_error,
        "embeddings": jobs.embedding_counts(engine, job.id),
        "source_key": job.source_key,
        "source_version": job.source_version,
        "sync": sync_summary(job),
    }


def sync_summary(job: jobs.Job) -> dict | None:
    """What the job did to its source (kept, updated, added, retired...), once it tried."""
    sync = (job.checkpoint_data or {}).get("sync")
    return None if sync is None else {k: v for k, v in sync.items() if k != "first_changes"}


def _print_import(path: Path, s: dict) -> None:
    e = s["embeddings"]
    print(
        f"{path.name}: {s['status']} ({s['partition_key']}): {s['rows_total']} rows, "
        f"{s['pairs_created']} pairs, {s['duplicates_skipped']} duplicates, "
        f"{s['row_errors']} row errors; embeddings {e['completed']} completed, "
        f"{e['failed']} failed, {e['pending']} pending"
    )
    sync = s.get("sync")
    if sync and not sync.get("refused"):
        print(
            f"  source {sync['source_key']} version {sync['version']}: {sync['kept']} kept, "
            f"{sync['updated']} updated, {sync['added']} added, {sync['retired']} retired"
        )
    if s["last_error"]:
        print(f"  last error: {s['last_error']}")


# -- status, recover, rollback -----------------------------------------------------------------


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from helix_pipelines import runtime
    from helix_pipelines.cli import CliError, print_json

    app = runtime.open_app(settings)
    blocked = _embeddings_blocked(settings, app.engine)
    runs = liveness.owners(app.engine)
    progress_of = functools.partial(job_progress, runs=runs, stale_after_s=settings.stale_after_s)
    if args.job:
        try:
            job = jobs.get_job(app.engine, args.job)
        except jobs.JobNotFound as exc:
            raise CliError(str(exc)) from exc
        if args.errors_csv:
            return _export_errors(app.engine, job, args.errors_csv, as_json=args.json)
        detail = (
            job_summary(app.engine, job.id)
            | {"embeddings_blocked": blocked}
            | {
                "source_name": job.source_name,
                "format": job.format,
                "attempts": job.attempts,
                "created_at": job.created_at,
                "finished_at": job.finished_at,
                "errors": jobs.row_errors_of(app.engine, job.id, limit=50),
                "progress": progress_of(job),
                "source_versions": _versions(app.engine, job),
            }
        )
        if args.json:
            print_json(detail)
        else:
            _print_job_detail(detail)
            _print_blocked(blocked)
        return 0
    if args.errors_csv:
        raise CliError("--errors-csv needs a JOB")
    listing = [
        job_summary(app.engine, j.id)
        | {"source_name": j.source_name, "embeddings_blocked": blocked}
        | {"progress": progress_of(j)}
        for j in jobs.list_jobs(app.engine)
    ]
    if args.json:
        print_json(listing)
    else:
        _print_job_table(listing)
        _print_blocked(blocked)
    return 0


def job_progress(job: jobs.Job, *, runs: dict, stale_after_s: float) -> dict | None:
    """{percent, time_left_s, run, silent_s} of the file for a `processing` job (its reader's
    byte offset in the checkpoint, the rate since the run started), else None. `run` is what
    the job's run heartbeat says (`runs`: liveness.owners; core.liveness.run_state): `alive`,
    `silent`, `gone` or `none` (no run holds the job: between attempts, or its run released
    it). `silent_s`: the heartbeat's age by the database's clock."""
    from datetime import UTC, datetime

    from helix_pipelines.core.liveness import run_state, this_process
    from helix_pipelines.core.progress import estimate

    checkpoint = job.checkpoint_data or {}
    if job.status != "processing" or not checkpoint.get("bytes_total") or not job.started_at:
        return None
    elapsed = (datetime.now(UTC) - job.started_at).total_seconds()
    snap = estimate(checkpoint.get("bytes_read", 0), checkpoint["bytes_total"], elapsed)
    owner = runs.get(job.dagster_run_id)
    run = run_state(owner, stale_after_s=stale_after_s, this_host=this_process().host)
    silent_s = None if owner is None else round(owner.heartbeat_age_s)
    eta = None if snap.eta_s is None or run != "alive" else round(snap.eta_s)
    return {"percent": snap.percent, "time_left_s": eta, "run": run, "silent_s": silent_s}


def _progress_text(progress: dict | None) -> str:
    if not progress:
        return ""
    from helix_pipelines.core.progress import format_duration

    done = f"{progress['percent']:.1f}%"
    run, silent = progress["run"], format_duration(progress["silent_s"])
    resumes = "recovery resumes it (`recover --resume`, or a sensor)"
    if run == "gone":
        return f"{done}, its run is gone: {resumes}"
    if run == "silent":
        return f"{done}, no heartbeat for {silent}"
    if run == "none":  # stopped (Ctrl-C, SIGTERM): its run let go of it
        return f"{done}, no run holds it: {resumes}"
    return f"{done}, {format_duration(progress['time_left_s'])} left"


def _export_errors(engine, job: jobs.Job, path: Path, *, as_json: bool) -> int:
    from helix_pipelines.cli import print_json
    from helix_pipelines.pipeline.row_errors import write_errors_csv

    written = write_errors_csv(engine, job.id, path)
    if as_json:
        print_json({"import_job_id": str(job.id), "errors_csv": str(path), "row_errors": written})
    else:
        print(f"{job.partition_key}: {written} row error(s) written to {path}")
    return 0


def _embeddings_blocked(settings: Settings, engine) -> dict | None:
    """{reason, message, retry_in_s} while the embeddings API refuses the account or the
    setup (quota, key, model, `dimensions`), else None."""
    from helix_pipelines.pipeline.embedding_setup import setup_from_settings

    return setup_from_settings(settings).blocked(engine)


def _print_blocked(blocked: dict | None) -> None:
    if blocked:
        print(
            f"embeddings blocked ({blocked['reason']}): {blocked['message']} -- next try in "
            f"{blocked['retry_in_s']}s, at once when the configuration changes, or now with "
            "`helix-pipelines embed`"
        )


def _print_job_table(listing: list[dict]) -> None:
    header = f"{'partition':<44} {'status':<22} {'rows':>8} {'pairs':>8} {'dups':>7} {'errors':>7}"
    print(header + f"  {'source':<24} progress")
    for s in listing:
        source = f"{s['source_key']} v{s['source_version']}" if s["source_key"] else "-"
        print(
            f"{s['partition_key'][:44]:<44} {s['status']:<22} {s['rows_total']:>8} "
            f"{s['pairs_created']:>8} {s['duplicates_skipped']:>7} {s['row_errors']:>7}  "
            f"{source[:24]:<24} {_progress_text(s['progress'])}".rstrip()
        )


def _print_job_detail(d: dict) -> None:
    for key in (
        "import_job_id",
        "partition_key",
        "source_name",
        "format",
        "status",
        "rows_total",
        "pairs_created",
        "duplicates_skipped",
        "row_errors",
        "attempts",
        "last_error",
        "embeddings",
    ):
        print(f"{key:>20}: {d[key]}")
    if d["progress"]:
        print(f"{'progress':>20}: {_progress_text(d['progress'])}")
    for error in d["errors"]:
        print(f"  row {error['source_row']}: {error['error_code']}: {error['message']}")
    if d["source_versions"]:
        print(f"versions of source {d['source_key']}:")
    for v in d["source_versions"]:
        sync = v["sync"] or {}
        counts = ", ".join(
            f"{sync[k]} {k}" for k in ("kept", "updated", "added", "retired") if k in sync
        )
        mark = "*" if v["current"] else " "
        print(f" {mark} v{v['version']} {v['partition_key']} {v['status']} {counts}".rstrip())


def _versions(engine, job: jobs.Job) -> list[dict]:
    from helix_pipelines.db.source_history import versions_of

    return versions_of(engine, job.source_key) if job.source_key else []


def cmd_recover(settings: Settings, args: argparse.Namespace) -> int:
    from helix_pipelines.cli import print_json

    app, instance = _open_with_instance(settings)
    report = _recover(app, instance, settings, args.stale_after)
    resumed, interrupted = [], False
    if args.resume:
        for job in jobs.list_pending(app.engine):
            # Import only: the pending-embeddings sensor or `helix-pipelines embed` embeds.
            interrupted = _run_import(app, instance, settings, job.partition_key, embed=False,
                                      verbose=args.verbose)  # fmt: skip
            resumed.append(job_summary(app.engine, job.id))
            if interrupted:
                break
    result = {
        "dead_runs": report.dead_runs,
        "recovered": [j.partition_key for j in report.resumed],
        "gave_up": [j.partition_key for j in report.gave_up],
        "rollbacks_finished": [j.partition_key for j in report.rollbacks_finished],
        "resumed": resumed,
    }
    if args.json:
        print_json(result)
    else:
        print(
            f"{len(report.dead_runs)} dead run(s) marked failed; {len(report.resumed)} import(s) "
            f"returned to pending; {len(report.rollbacks_finished)} rollback(s) finished"
        )
        for job in report.gave_up:
            print(f"{job.partition_key}: failed: {job.last_error}")
        for summary in resumed:
            _print_import(Path(summary["partition_key"]), summary)
    if interrupted:
        _stop_interrupted("`helix-pipelines recover --resume` again resumes the import")
    return 0 if all(s["status"] in ("completed", "completed_with_errors") for s in resumed) else 1


def release_stored_copy(engine, job: jobs.Job) -> None:
    from helix_pipelines.pipeline.file_store import remove_unneeded

    if job.status == "rolled_back" and job.source_path:
        remove_unneeded(engine, locations=[job.source_path])


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    from helix_pipelines import runtime
    from helix_pipelines.cli import CliError, print_json

    app = runtime.open_app(settings, migrate_schema=True)
    try:
        result = jobs.rollback_job(app.engine, args.job, stale_after_s=settings.stale_after_s)
    except (jobs.JobNotFound, jobs.JobBusy) as exc:
        raise CliError(str(exc)) from exc
    job = result.job
    release_stored_copy(app.engine, job)
    summary = {
        "import_job_id": str(job.id),
        "status": job.status,
        "pairs_deleted": result.pairs_deleted,
        "pairs_handed_over": result.pairs_handed_over,
    }
    _report_to_dagster(settings, "rollback", app.engine, rolled_back=job, extra=summary)
    if args.json:
        print_json(summary)
    else:
        print(
            f"{job.partition_key}: {result.pairs_deleted} pairs removed, "
            f"{result.pairs_handed_over} handed to other imports that hold them; "
            f"status {job.status}"
        )
    return 0


def _open_with_instance(settings: Settings):
    """The database (migrated) and the Dagster instance of this HELIX_HOME."""
    from dagster import DagsterInstance

    from helix_pipelines import runtime
    from helix_pipelines.devserver import dagster_environment

    app = runtime.open_app(settings, migrate_schema=True)
    os.environ["DAGSTER_HOME"] = dagster_environment(settings)["DAGSTER_HOME"]
    return app, DagsterInstance.get()


# -- embed, search ------------------------------------------------------------------------------


def cmd_embed(settings: Settings, args: argparse.Namespace) -> int:
    from helix_pipelines import cli_progress, runtime
    from helix_pipelines.cli import CliError, print_json
    from helix_pipelines.embedding.base import ProviderConfigError
    from helix_pipelines.pipeline.embedding import retry_failed
    from helix_pipelines.pipeline.embedding_setup import setup_from_settings

    app = runtime.open_app(settings)
    before = _fingerprints(app.engine)
    requeued = 0
    if args.retry_failed is not None:
        requeued = retry_failed(app.engine, _job_id_or_all(app.engine, args.retry_failed))
    try:
        with cli_progress.embed_bar(enabled=cli_progress.wanted(args.json)) as bar:
            report, circuit_state = setup_from_settings(settings).embed(
                app.engine, operator=True, on_progress=bar
            )
    except ProviderConfigError as exc:
        _report_to_dagster(settings, "embed", app.engine, before=before)
        raise CliError(exc.message) from exc
    result = {
        "requeued": requeued,
        "embedded": report.embedded,
        "failed": report.failed,
        "pending": report.pending,
        "requests": report.requests,
        "retries": report.retries,
        "tokens": report.tokens,
        "circuit_state": circuit_state,
        "stopped_reason": report.stopped_reason,
    }
    _report_to_dagster(settings, "embed", app.engine, before=before, extra=result)
    if args.json:
        print_json(result)
    else:
        print(
            f"embedded {report.embedded}, failed {report.failed}, still pending "
            f"{report.pending} ({report.requests} requests, circuit {result['circuit_state']})"
        )
        if requeued:
            print(f"  {requeued} failed pair(s) were returned to pending first")
        if report.stopped_reason:
            print(f"  stopped early: {report.stopped_reason}")
    return 0


def _fingerprints(engine) -> dict:
    from helix_pipelines.defs.reporting import fingerprints

    return fingerprints(engine)


def _report_to_dagster(settings, verb, engine, *, before=None, rolled_back=None, extra=None):
    """What this command changed, on its partitions in the UI: qa_embeddings materializations
    and checks after `embed`, the rolled-back record after `rollback`, logged in a run named
    `helix_cli_<verb>` (defs.reporting.record_in_a_run says why not runless events)."""
    from dagster import DagsterInstance

    from helix_pipelines.defs import reporting
    from helix_pipelines.defs.partitions import import_files
    from helix_pipelines.devserver import dagster_environment
    from helix_pipelines.pipeline.embedding_setup import setup_from_settings
    from helix_pipelines.pipeline.health import CheckLimits

    os.environ["DAGSTER_HOME"] = dagster_environment(settings)["DAGSTER_HOME"]
    instance = DagsterInstance.get()
    events: list = []
    limits = CheckLimits(
        dim=settings.embedding_dim, coverage_error_threshold=settings.coverage_error_threshold,
        pending_age_warn_s=settings.pending_age_warn_s,
        pending_age_error_s=settings.pending_age_error_s,
    )  # fmt: skip
    extra = {"reported_by": f"helix-pipelines {verb}"} | {
        f"run_{k}": v for k, v in (extra or {}).items() if v is not None
    }
    if rolled_back is not None:
        if instance.has_dynamic_partition(import_files.name, rolled_back.partition_key):
            reporting.report_rollback(events.append, engine, rolled_back, limits, extra)
    else:
        reporting.report_touched(
            events.append, engine, before, limits, setup_from_settings(settings).blocked(engine),
            extra, known=lambda key: instance.has_dynamic_partition(import_files.name, key),
        )  # fmt: skip
    reporting.record_in_a_run(
        instance, f"helix_cli_{verb}", events, tags={"helix/launched_by": "cli"}
    )


def _job_id_or_all(engine, job: str):
    from helix_pipelines.cli import CliError

    if not job:
        return None
    try:
        return jobs.get_job(engine, job).id
    except jobs.JobNotFound as exc:
        raise CliError(str(exc)) from exc


def cmd_search(settings: Settings, args: argparse.Namespace) -> int:
    from helix_pipelines import runtime
    from helix_pipelines.cli import CliError, print_json
    from helix_pipelines.db.search import nearest
    from helix_pipelines.embedding.base import EmbeddingError
    from helix_pipelines.pipeline.embedding_setup import setup_from_settings

    app = runtime.open_app(settings)
    provider = setup_from_settings(settings).build_provider()
    try:
        vector = provider.embed([args.text]).vectors[0]
    except EmbeddingError as exc:
        raise CliError(f"cannot embed the query: {exc.message}") from exc
    finally:
        provider.close()
    hits = nearest(app.engine, vector, args.k)
    if args.json:
        print_json([{k: v for k, v in hit.items() if k != "id"} for hit in hits])
        return 0
    for rank, hit in enumerate(hits, 1):
        print(f"{rank}. [{hit['distance']:.4f}] {hit['question']}")
        print(f"   {_one_line(hit['answer'])}")
        print(f"   category: {hit['category'] or '-'} · import: {hit['partition_key']}")
    return 0


def _one_line(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _stop_on_sigterm() -> None:
    """A service stops cleanly on SIGTERM, even when it inherited an ignored one."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def cmd_metrics(settings: Settings, args: argparse.Namespace) -> int:
    from helix_pipelines import metrics, runtime
    from helix_pipelines.pipeline.embedding_setup import setup_from_settings

    _stop_on_sigterm()  # first: a SIGTERM during start-up must stop it too
    app = runtime.open_app(settings)
    breaker = setup_from_settings(settings).build_breaker(app.engine)
    multiproc_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    print(f"serving Prometheus metrics on http://{args.host}:{args.port}/metrics", flush=True)
    metrics.serve(
        args.port,
        multiproc_dir,
        app.engine,
        breaker.snapshot,
        host=args.host,
        stale_after_s=settings.stale_after_s,
    )
    return 0
