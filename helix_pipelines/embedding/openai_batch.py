"""The OpenAI Batch API calls embedding needs: files (upload, list, content) and batches
(create, retrieve, list, cancel), and the JSONL both ways.

One request per pair (`custom_id` = the pair's id): a bad input then fails alone, as in the
synchronous path after it has split a request, and each answer is validated with the same
`decode_embeddings`. Facts from the client's types and OpenAI's docs: lines
`{custom_id, method: "POST", url: "/v1/embeddings", body}`, file purpose `batch`, completion
window `24h`, at most 50,000 requests and 200 MB a batch (and 50,000 embedding inputs), states
validating, in_progress, finalizing, completed, expired, failed, cancelling, cancelled.

`create` never retries on its own (`max_retries=0`): a batch created twice is paid twice.
Instead every batch carries `metadata` naming its local row, so a batch that reached the server
before its id was stored is found with `find_batch` and adopted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from helix_pipelines.core.redact import redact
from helix_pipelines.embedding.base import TransientEmbeddingError

ENDPOINT = "/v1/embeddings"
COMPLETION_WINDOW = "24h"
MAX_REQUESTS = 50_000
MAX_FILE_BYTES = 200 * 1024 * 1024
METADATA_KEY = "helix_batch_id"
LIVE_STATES = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
FINISHED_STATES = frozenset({"completed", "expired", "failed", "cancelled"})


def file_name(local_id: str) -> str:
    """The uploaded file's name: how an upload whose id was lost is found again."""
    return f"helix-batch-{local_id}.jsonl"


def build_jsonl(
    requests: Iterable[tuple[str, str]], *, model: str, dim: int, send_dimensions: bool
) -> bytes:
    """One line per (custom_id, text), each an embeddings request of one input."""
    extra = {"dimensions": dim} if send_dimensions else {}
    lines = []
    for custom_id, text in requests:
        body = {"model": model, "input": [text], "encoding_format": "base64", **extra}
        line = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
        lines.append(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode("utf-8")


@dataclass(frozen=True)
class RemoteBatch:
    id: str
    status: str
    input_file_id: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int | None = None
    expires_at: int | None = None
    completed: int = 0
    failed: int = 0
    total: int = 0
    tokens: int | None = None
    errors: list[dict] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATES


@dataclass(frozen=True)
class LineResult:
    """One request's answer: the response body on success, else the error."""

    custom_id: str
    status_code: int | None
    body: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code == 200 and self.body is not None

    @property
    def invalid_input(self) -> bool:
        """The input itself was refused (4xx other than 429): fails alone, as in sync."""
        return (
            self.status_code is not None
            and 400 <= self.status_code < 500
            and (self.status_code not in (408, 409, 425, 429))
        )


class BatchClient:
    def __init__(self, *, api_key: str, base_url: str | None, timeout_s: float = 120.0) -> None:
        self._secret = api_key
        import openai  # here, not at module level: half a second that only API users pay

        self._client = openai.OpenAI(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout_s
        )

    def close(self) -> None:
        self._client.close()

    def upload(self, name: str, content: bytes) -> str:
        return self._call(
            lambda: self._client.files.create(file=(name, content), purpose="batch")
        ).id

    def find_file(self, name: str) -> str | None:
        """The id of an uploaded batch file of this name, if any (newest first)."""
        for item in self._call(lambda: list(self._client.files.list(purpose="batch"))):
            if item.filename == name:
                return item.id
        return None

    def create(self, input_file_id: str, local_id: str) -> RemoteBatch:
        batch = self._call(
            lambda: self._client.batches.create(
                input_file_id=input_file_id,
                endpoint=ENDPOINT,
                completion_window=COMPLETION_WINDOW,
                metadata={METADATA_KEY: local_id},
            )
        )
        return _remote(batch)

    def find_batch(self, local_id: str) -> RemoteBatch | None:
        """A batch created for this local row (an orphan whose id was never stored)."""
        for batch in self._call(lambda: list(self._iter_batches())):
            if (batch.metadata or {}).get(METADATA_KEY) == local_id:
                return _remote(batch)
        return None

    def retrieve(self, remote_id: str) -> RemoteBatch:
        return _remote(self._call(lambda: self._client.batches.retrieve(remote_id)))

    def cancel(self, remote_id: str) -> RemoteBatch:
        return _remote(self._call(lambda: self._client.batches.cancel(remote_id)))

    def content(self, file_id: str) -> bytes:
        return self._call(lambda: self._client.files.content(file_id)).content

    def _iter_batches(self) -> Iterator[Any]:
        yield from self._client.batches.list(limit=100)

    def _call(self, call):
        import openai  # loaded by __init__ already

        try:
            return call()
        except openai.APIStatusError as exc:
            message = redact(str(exc).replace(self._secret, "***"))
            if exc.status_code in (408, 409, 425, 429) or exc.status_code >= 500:
                raise TransientEmbeddingError(message, status_code=exc.status_code) from None
            raise BatchApiError(message) from None
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise TransientEmbeddingError(f"Batch API unreachable: {type(exc).__name__}") from exc


class BatchApiError(RuntimeError):
    """The Batch API refused a call (4xx): retrying it unchanged will not help."""

    transient = False


def _remote(batch: Any) -> RemoteBatch:
    counts = batch.request_counts
    usage = getattr(batch, "usage", None)
    errors = [e.model_dump() for e in (batch.errors.data or [])] if batch.errors else []
    return RemoteBatch(
        id=batch.id,
        status=batch.status,
        input_file_id=batch.input_file_id,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        created_at=batch.created_at,
        expires_at=batch.expires_at,
        completed=counts.completed if counts else 0,
        failed=counts.failed if counts else 0,
        total=counts.total if counts else 0,
        tokens=getattr(usage, "input_tokens", None) if usage else None,
        errors=errors,
        metadata=dict(batch.metadata or {}),
    )


def parse_results(content: bytes) -> Iterator[LineResult]:
    """Lines of an output or error file, in whatever order they came."""
    for number, raw in enumerate(content.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
            custom_id = str(line["custom_id"])
        except (ValueError, KeyError, TypeError):
            raise TransientEmbeddingError(f"malformed batch result line {number}") from None
        response = line.get("response") or {}
        status = response.get("status_code")
        body = response.get("body")
        error = line.get("error")
        if status == 200 and isinstance(body, dict) and "data" in body:
            yield LineResult(custom_id, 200, body=body)
            continue
        yield LineResult(custom_id, status, error=_error_message(body, error))


def _error_message(body: Any, error: Any) -> str:
    for source in (body.get("error") if isinstance(body, dict) else None, error):
        if isinstance(source, dict) and source.get("message"):
            code = source.get("code")
            return redact(f"{source['message']}" + (f" ({code})" if code else ""))
    return "the batch returned no result for this request"
