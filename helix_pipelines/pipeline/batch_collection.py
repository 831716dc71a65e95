"""Collecting finished Batch API batches, polling live ones, and the cycle the sensor's run
and `helix-pipelines batches --collect` perform.

Collection downloads the output and error files, matches them to pairs by `custom_id`, and
settles every pair of the batch in one transaction (a crash mid-way rolls back and the next
collection starts over; a collected batch is skipped):
- a vector: validated as the synchronous path does (`decode_embeddings`: count, index, width,
  finite) and only if the pair's text is unchanged since submission (else pending again),
  then written with the same bulk path (db.embeddings.write_results);
- an input refused (4xx): the pair fails alone, with the API's message;
- a transient error for that request (429, 5xx): an attempt, as in sync (parked when used up);
- no result (the batch expired or was cancelled first): pending again, no attempt;
- the whole batch failed (validation): an attempt for each pair, with the batch's errors.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine

from helix_pipelines.db import embedding_batches as batches
from helix_pipelines.db import embeddings as store
from helix_pipelines.db.embedding_batches import BatchRow
from helix_pipelines.db.embeddings import ChunkOutcome
from helix_pipelines.embedding.base import EmbeddingError
from helix_pipelines.embedding.openai_batch import BatchClient, LineResult, parse_results
from helix_pipelines.embedding.openai_provider import decode_embeddings
from helix_pipelines.pipeline.batch_embedding import (
    BatchOptions,
    StepHook,
    record_remote,
    resume_abandoned,
    text_hash,
)


@dataclass
class CollectReport:
    batch_id: uuid.UUID
    state: str = ""
    embedded: int = 0
    failed: int = 0
    retried: int = 0
    returned: int = 0
    tokens: int = 0  # billed, from the results' usage
    usd_per_million_tokens: float = 0.0
    skipped: bool = False  # collected before, or another process holds it
    job_ids: set[uuid.UUID] = field(default_factory=set)

    @property
    def cost_usd(self) -> float:
        return self.tokens * self.usd_per_million_tokens / 1_000_000


# -- polling ---------------------------------------------------------------------------------


def poll_batches(
    engine: Engine, client: BatchClient, *, min_interval_s: float, now: datetime | None = None
) -> list[uuid.UUID]:
    """Ask the server about live batches not asked within `min_interval_s` (a bounded rate,
    whatever the sensor's tick); returns every batch finished and not yet collected."""
    now = now or datetime.now(UTC)
    due = now - timedelta(seconds=min_interval_s)
    for row in batches.list_batches(engine, batches.LIVE_REMOTE):
        if row.polled_at is None or row.polled_at <= due:
            record_remote(engine, row.id, client.retrieve(row.remote_batch_id))
    return [row.id for row in batches.list_batches(engine, batches.FINISHED_REMOTE)]


# -- collection ------------------------------------------------------------------------------


def collect_batch(
    engine: Engine,
    client: BatchClient,
    batch_id: uuid.UUID,
    options: BatchOptions,
    *,
    on_step: StepHook | None = None,
) -> CollectReport:
    """Store a finished batch's results and return its unfinished pairs; idempotent."""
    report = CollectReport(batch_id, usd_per_million_tokens=options.usd_per_million_tokens)
    note = on_step or (lambda step, batch: None)
    with batches.batch_lock(engine, batch_id) as mine:
        row = batches.get(engine, batch_id)
        report.state = row.state
        if not mine or row.state not in batches.FINISHED_REMOTE:
            report.skipped = True
            return report
        results = _download(client, row)
        with engine.begin() as conn:
            pairs = batches.open_pairs(conn, batch_id, lock=True)
            outcome, returned, outcomes = _decide(row, pairs, results)
            parked = store.write_results(
                conn, outcome, model=row.model, max_attempts=options.max_attempts
            )
            batches.return_to_pending(conn, returned)
            batches.settle(conn, batch_id, outcomes)
            note("writing", batch_id)  # results written, not committed: all or nothing
            report.job_ids = batches.jobs_of(conn, [p.id for p in pairs])
            batches.update(conn, batch_id, state="collected", collected_at=datetime.now(UTC))
    report.embedded = len(outcome.vectors)
    report.failed = len(outcome.failed) + parked
    report.retried = len(outcome.retry_later)
    report.returned = len(returned)
    report.tokens = sum(_usage(r) for r in results.values() if r.ok)
    return report


def _download(client: BatchClient, row: BatchRow) -> dict[str, LineResult]:
    results: dict[str, LineResult] = {}
    for file_id in (row.error_file_id, row.output_file_id):  # a success wins over an error
        if file_id:
            results.update((r.custom_id, r) for r in parse_results(client.content(file_id)))
    return results


def _decide(row: BatchRow, pairs, results: dict[str, LineResult]):
    outcome = ChunkOutcome()
    returned: list[int] = []
    outcomes: dict[int, str] = {}
    batch_error = _batch_error(row)
    for pair in pairs:
        if pair.status != "batched":  # rolled back, or settled by hand: not ours any more
            outcomes[pair.id] = "skipped"
            continue
        result = results.get(str(pair.id))
        verdict = _verdict(row, pair, result, batch_error, outcome)
        outcomes[pair.id] = verdict
        if verdict == "returned":
            returned.append(pair.id)
    return outcome, returned, outcomes


def _verdict(row: BatchRow, pair, result: LineResult | None, batch_error, outcome) -> str:
    if result is None or (not result.ok and result.status_code is None):
        if row.state == "failed":  # the whole batch was refused: an attempt, as a 5xx is
            outcome.retry_later[pair.id] = batch_error
            return "retry"
        return "returned"  # expired or cancelled before this request ran
    if result.ok:
        if text_hash(pair.question, pair.answer) != pair.text_hash:
            return "returned"  # the text changed since submission: embed the new one
        try:
            vector = decode_embeddings(result.body, 1, row.dim)[0]
        except EmbeddingError as exc:
            outcome.retry_later[pair.id] = exc.message
            return "retry"
        outcome.vectors[pair.id] = vector
        if pair.truncated:
            outcome.truncated.add(pair.id)
        return "completed"
    if result.invalid_input:
        outcome.failed[pair.id] = result.error or f"HTTP {result.status_code}"
        return "failed"
    outcome.retry_later[pair.id] = result.error or f"HTTP {result.status_code}"
    return "retry"


def _usage(result: LineResult) -> int:
    usage = result.body.get("usage") if isinstance(result.body, dict) else None
    tokens = usage.get("total_tokens") if isinstance(usage, dict) else None
    return tokens if type(tokens) is int and tokens >= 0 else 0


def _batch_error(row: BatchRow) -> str:
    messages = [e.get("message") for e in row.errors or [] if isinstance(e, dict)]
    return "batch failed: " + ("; ".join(m for m in messages if m) or "no reason given")[:900]


# -- one cycle, as the sensor's run and the CLI do it ----------------------------------------


@dataclass
class CycleReport:
    resumed: list[uuid.UUID] = field(default_factory=list)
    collected: list[CollectReport] = field(default_factory=list)


def run_cycle(
    engine: Engine,
    client: BatchClient,
    options: BatchOptions,
    *,
    min_interval_s: float = 0.0,
    on_step: StepHook | None = None,
) -> CycleReport:
    """Finish abandoned submissions, poll live batches, collect every finished one."""
    report = CycleReport(resumed=resume_abandoned(engine, client, options, on_step=on_step))
    for batch_id in poll_batches(engine, client, min_interval_s=min_interval_s):
        report.collected.append(collect_batch(engine, client, batch_id, options, on_step=on_step))
    return report
