"""Embedding large backlogs through the OpenAI Batch API: submit, poll, collect, cancel.

Submission reserves pending pairs in a new `embedding_batch` row (they become `batched`, so no
synchronous run claims them), then records its intent before each remote call: `uploading`
before the file goes up, `creating` before the batch is created. A process killed anywhere
leaves a row whose advisory lock is free (db.embedding_batches.batch_lock); `resume_abandoned`
finishes it, adopting the file (found by name) or the batch (found by its `metadata`) that
reached the server before its id was stored. So a batch is never created twice for the same
pairs, and a finished batch's results are never lost.

Collection, polling and the sensor's cycle: pipeline.batch_collection.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from helix_pipelines.core.batching import prepare_items
from helix_pipelines.db import embedding_batches as batches
from helix_pipelines.db import embeddings as store
from helix_pipelines.db.embedding_batches import BatchRow
from helix_pipelines.db.embeddings import ChunkOutcome
from helix_pipelines.embedding.base import embedding_text
from helix_pipelines.embedding.openai_batch import (
    MAX_FILE_BYTES,
    MAX_REQUESTS,
    BatchApiError,
    BatchClient,
    RemoteBatch,
    build_jsonl,
    file_name,
)

# Named points of a batch's life, reported to `on_step` (tests stop a real process there).
Step = str  # "built" | "uploaded" | "created" | "writing"
StepHook = Callable[[Step, uuid.UUID], None]
# Bytes of a JSONL line besides its text: keeps a file under the 200 MB limit.
LINE_OVERHEAD = 200


@dataclass(frozen=True)
class BatchOptions:
    model: str
    dim: int
    send_dimensions: bool = True
    max_pairs: int = MAX_REQUESTS
    max_file_bytes: int = MAX_FILE_BYTES - 10 * 1024 * 1024
    max_input_tokens: int = 8192
    truncate: bool = True
    max_attempts: int = 5
    usd_per_million_tokens: float = 0.01  # text-embedding-3-small at batch prices
    poll_interval_s: float = 60.0


@dataclass
class SubmitReport:
    batches: list[uuid.UUID] = field(default_factory=list)
    resumed: list[uuid.UUID] = field(default_factory=list)
    pairs: int = 0
    rejected: int = 0
    token_estimate: int = 0
    usd_per_million_tokens: float = 0.0

    @property
    def estimated_cost_usd(self) -> float:
        return self.token_estimate * self.usd_per_million_tokens / 1_000_000


def text_hash(question: str, answer: str) -> str:
    return hashlib.sha256(embedding_text(question, answer).encode("utf-8")).hexdigest()


# -- submission ------------------------------------------------------------------------------


def submit_batches(
    engine: Engine,
    client: BatchClient,
    options: BatchOptions,
    *,
    job_id: uuid.UUID | None = None,
    on_step: StepHook | None = None,
) -> SubmitReport:
    """Finish abandoned submissions, then send the pending pairs (of one import, or all) in
    batches of at most `max_pairs` requests and `max_file_bytes`."""
    report = SubmitReport(usd_per_million_tokens=options.usd_per_million_tokens)
    report.resumed = resume_abandoned(engine, client, options, on_step=on_step)
    while (batch_id := _reserve_next(engine, options, job_id, report)) is not None:
        report.batches.append(batch_id)
        _advance(engine, client, options, batch_id, on_step)
    return report


def _reserve_next(engine, options: BatchOptions, job_id, report: SubmitReport):
    """Reserve the next pending pairs in a new batch row; None when none is left."""
    while True:
        with engine.begin() as conn:
            claimed = store.claim_pending(conn, job_id, options.max_pairs)
            if not claimed:
                return None
            rows = [(p.id, embedding_text(p.question, p.answer)) for p in claimed]
            items, rejected = prepare_items(rows, options.max_input_tokens, options.truncate)
            store.write_results(
                conn, ChunkOutcome(failed=dict(rejected)), model=options.model,
                max_attempts=options.max_attempts,
            )  # fmt: skip
            report.rejected += len(rejected)
            items = _fit_file(items, options.max_file_bytes)
            if not items:
                continue
            hashes = {p.id: text_hash(p.question, p.answer) for p in claimed}
            tokens = sum(item.tokens for item in items)
            batch_id = batches.reserve(
                conn, model=options.model, dim=options.dim, job_id=job_id,
                pairs=[(i.key, hashes[i.key], i.truncated) for i in items],
                token_estimate=tokens,
            )  # fmt: skip
        report.pairs += len(items)
        report.token_estimate += tokens
        return batch_id


def _fit_file(items, max_bytes: int):
    """The longest prefix whose JSONL stays under the file limit; the rest stays pending."""
    total = 0
    for index, item in enumerate(items):
        total += len(item.text.encode("utf-8")) + LINE_OVERHEAD
        if total > max_bytes:
            return items[:index]
    return items


def resume_abandoned(
    engine: Engine, client: BatchClient, options: BatchOptions, *, on_step=None
) -> list[uuid.UUID]:
    """Carry on every submission a dead process left before `validating`."""
    resumed = []
    for row in batches.list_batches(engine, batches.UNSUBMITTED):
        if _advance(engine, client, options, row.id, on_step):
            resumed.append(row.id)
    return resumed


def abandoned(engine: Engine) -> list[uuid.UUID]:
    """Unsubmitted batches no live process is working on (for the sensor)."""
    found = []
    for row in batches.list_batches(engine, batches.UNSUBMITTED):
        with batches.batch_lock(engine, row.id) as free:
            if free:
                found.append(row.id)
    return found


def _advance(engine, client: BatchClient, options: BatchOptions, batch_id, on_step) -> bool:
    """Take one batch from wherever its row says to `validating`; False if another process
    holds it or it is past submission."""
    note = on_step or (lambda step, batch: None)
    with batches.batch_lock(engine, batch_id) as mine:
        if not mine:
            return False
        row = batches.get(engine, batch_id)
        if row.state not in batches.UNSUBMITTED:
            return False
        name = file_name(str(batch_id))
        if row.state == "building":
            content = _build_file(engine, row, options)
            note("built", batch_id)
            batches.update(engine, batch_id, state="uploading")
            file_id = client.upload(name, content)
            note("uploaded", batch_id)  # on the server, not yet recorded: found by name
        elif row.state == "uploading":  # the upload may have reached the server: look first
            file_id = client.find_file(name) or client.upload(
                name, _build_file(engine, row, options)
            )
        else:
            file_id = row.input_file_id
        if row.state != "creating":
            batches.update(engine, batch_id, state="creating", input_file_id=file_id)
            remote = None
        else:  # the create may have reached the server: adopt it rather than pay twice
            remote = client.find_batch(str(batch_id))
        if remote is None:
            try:
                remote = client.create(file_id, str(batch_id))
            except BatchApiError as exc:  # refused outright: collected as a failed batch
                batches.update(engine, batch_id, state="failed", errors=[{"message": str(exc)}],
                               finished_at=datetime.now(UTC))  # fmt: skip
                return True
            note("created", batch_id)  # on the server, not yet recorded: found by metadata
        record_remote(engine, batch_id, remote, submitted=True)
        return True


def _build_file(engine: Engine, row: BatchRow, options: BatchOptions) -> bytes:
    with engine.connect() as conn:
        pairs = batches.open_pairs(conn, row.id)
    rows = [(p.id, embedding_text(p.question, p.answer)) for p in pairs]
    items, _ = prepare_items(rows, options.max_input_tokens, truncate=True)
    return build_jsonl(
        ((str(item.key), item.text) for item in items),
        model=row.model, dim=row.dim, send_dimensions=options.send_dimensions,
    )  # fmt: skip


def record_remote(engine: Engine, batch_id: uuid.UUID, remote: RemoteBatch, *, submitted=False):
    values = {
        "state": remote.status,
        "remote_batch_id": remote.id,
        "input_file_id": remote.input_file_id,
        "output_file_id": remote.output_file_id,
        "error_file_id": remote.error_file_id,
        "completed_count": remote.completed,
        "failed_count": remote.failed,
        "polled_at": datetime.now(UTC),
    }
    if remote.tokens is not None:
        values["tokens_used"] = remote.tokens
    if remote.errors:
        values["errors"] = remote.errors
    if remote.expires_at:
        values["expires_at"] = datetime.fromtimestamp(remote.expires_at, UTC)
    if submitted:
        values["submitted_at"] = datetime.now(UTC)
    if remote.finished:
        values["finished_at"] = datetime.now(UTC)
    batches.update(engine, batch_id, **values)


# -- cancel ----------------------------------------------------------------------------------


def cancel_batches(
    engine: Engine, client: BatchClient, batch_id: uuid.UUID | None = None
) -> list[uuid.UUID]:
    """Ask the server to cancel live batches (one, or all); the sensor collects them once
    cancelled: finished work is kept, the rest goes back to pending. A batch not yet created
    (and not being worked on) is cancelled locally: its pairs go back at once."""
    cancelled = []
    states = batches.LIVE_REMOTE + batches.UNSUBMITTED
    for row in batches.list_batches(engine, states):
        if batch_id is not None and row.id != batch_id:
            continue
        if row.state in batches.UNSUBMITTED:
            if _cancel_unsubmitted(engine, client, row):
                cancelled.append(row.id)
            continue
        if row.state != "cancelling":
            record_remote(engine, row.id, client.cancel(row.remote_batch_id))
        cancelled.append(row.id)
    return cancelled


def _cancel_unsubmitted(engine: Engine, client: BatchClient, row: BatchRow) -> bool:
    with batches.batch_lock(engine, row.id) as mine:
        if not mine:
            return False
        remote = client.find_batch(str(row.id)) if row.state == "creating" else None
        if remote is not None:  # it reached the server after all
            record_remote(engine, row.id, client.cancel(remote.id), submitted=True)
            return True
        batches.update(engine, row.id, state="cancelled", finished_at=datetime.now(UTC))
    return True
