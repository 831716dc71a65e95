"""The Files and Batches endpoints of the fake OpenAI server (support/fake_openai.py).

A batch is `validating` when created, `in_progress` once created, and finishes when the
server's clock (injectable: no sleeps in tests) passes `created + delay_s`; it is then
answered all at once from its input file: vectors are FakeOpenAI.vector_for(text), output lines
come back shuffled, inputs containing the poison substring get a 400 in the error file and
inputs containing the `transient` substring a 500. Scripted outcomes for the next batches:
"expire:<fraction>" (that share of the requests done, the rest `batch_expired`), "fail"
(validation fails, no output), "refuse" (the create call itself answers 400).
`stats.batches_created` proves nothing was paid twice.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

BATCH_WINDOW_S = 86_400


@dataclass
class BatchStats:
    files_uploaded: int = 0
    batches_created: int = 0
    batches_cancelled: int = 0
    requests_answered: int = 0  # batch requests answered with a vector
    calls: int = 0  # HTTP calls to files and batches


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.content),
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "status": "processed"}  # fmt: skip


@dataclass
class _Batch:
    id: str
    input_file_id: str
    metadata: dict[str, str]
    created_at: float
    status: str = "validating"
    script: str = "ok"
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0,
                                                             "failed": 0})  # fmt: skip
    errors: list[dict] = field(default_factory=list)
    tokens: int = 0


class BatchService:
    def __init__(self, vector_for: Callable[[str, int], np.ndarray], tokens_for, clock) -> None:
        self._vector_for, self._tokens_for, self.clock = vector_for, tokens_for, clock
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._batches: dict[str, _Batch] = {}
        self._script: deque[str] = deque()
        self._rng = random.Random(14)
        self._next = 0
        self.delay_s = 0.0
        self.poison: str | None = None
        self.transient: str | None = None
        self.stats = BatchStats()

    # -- configuration -------------------------------------------------------------------------

    def script(self, *outcomes: str) -> None:
        """Outcomes of the next batches created: "ok", "fail", "expire:0.5"."""
        with self._lock:
            self._script.extend(outcomes)

    def batches(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._public(b) for b in self._batches.values()]

    # -- HTTP ----------------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: Any, body: bytes):
        """(status, body bytes, content type) for a files or batches call."""
        url = urlsplit(path)
        parts = [p for p in url.path.split("/") if p][1:]  # drop "v1"
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        with self._lock:
            self.stats.calls += 1
            now = self.clock()
            for batch in self._batches.values():
                self._advance(batch, now)
            return self._route(method, parts, query, headers, body, now)

    def _route(self, method, parts, query, headers, body, now):
        match method, parts:
            case "POST", ["files"]:
                return self._upload(headers, body, now)
            case "GET", ["files"]:
                files = [f.public() for f in self._files.values()
                         if query.get("purpose") in (None, f.purpose)]  # fmt: skip
                return _json(200, _page(files[::-1], query))
            case "GET", ["files", file_id, "content"]:
                if file_id not in self._files:
                    return _not_found(f"No such File object: {file_id}")
                return 200, self._files[file_id].content, "application/octet-stream"
            case "POST", ["batches"]:
                return self._create(json.loads(body or b"{}"), now)
            case "GET", ["batches"]:
                listed = [self._public(b) for b in self._batches.values()][::-1]
                return _json(200, _page(listed, query))
            case "GET", ["batches", batch_id]:
                if batch_id not in self._batches:
                    return _not_found(f"No batch found with id '{batch_id}'.")
                return _json(200, self._public(self._batches[batch_id]))
            case "POST", ["batches", batch_id, "cancel"]:
                return self._cancel(batch_id)
        return _not_found(f"Unknown request URL: {method} /{'/'.join(parts)}")

    def _upload(self, headers, body: bytes, now: float):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {headers.get('Content-Type')}\r\n\r\n".encode() + body
        )
        fields = {part.get_param("name", header="content-disposition"): part
                  for part in message.iter_parts()}  # fmt: skip
        if "file" not in fields or "purpose" not in fields:
            return _json(400, _error("'file' and 'purpose' are required"))
        file = _File(self._id("file"), fields["file"].get_filename(),
                     fields["purpose"].get_payload(decode=True).decode(),
                     fields["file"].get_payload(decode=True), int(now))  # fmt: skip
        self._files[file.id] = file
        self.stats.files_uploaded += 1
        return _json(200, file.public())

    def _create(self, request: dict, now: float):
        file = self._files.get(request.get("input_file_id"))
        if file is None or file.purpose != "batch":
            return _json(400, _error("input_file_id must name a file uploaded for batch"))
        if request.get("endpoint") != "/v1/embeddings" or request.get("completion_window") != "24h":
            return _json(400, _error("unsupported endpoint or completion_window"))
        if self._script and self._script[0] == "refuse":  # the create itself answers 400
            self._script.popleft()
            return _json(400, _error("Simulated refusal: the batch was not created."))
        batch = _Batch(self._id("batch"), file.id, dict(request.get("metadata") or {}), now,
                       script=self._script.popleft() if self._script else "ok")  # fmt: skip
        batch.counts["total"] = sum(1 for line in file.content.splitlines() if line.strip())
        self._batches[batch.id] = batch
        self.stats.batches_created += 1
        return _json(200, self._public(batch))

    def _cancel(self, batch_id: str):
        batch = self._batches.get(batch_id)
        if batch is None:
            return _not_found(f"No batch found with id '{batch_id}'.")
        if batch.status in ("validating", "in_progress", "finalizing"):
            batch.status = "cancelling"
            self.stats.batches_cancelled += 1
        return _json(200, self._public(batch))

    # -- the batch's life ----------------------------------------------------------------------

    def _advance(self, batch: _Batch, now: float) -> None:
        if batch.status == "cancelling":
            self._finish(batch, "cancelled", done_share=0.0)
        elif batch.status in ("validating", "in_progress"):
            if batch.script == "fail":
                batch.status = "failed"
                message = "Simulated validation failure."
                batch.errors = [{"code": "invalid_request", "line": 1, "message": message}]
            elif now >= batch.created_at + self.delay_s:
                if batch.script.startswith("expire:"):
                    self._finish(batch, "expired", float(batch.script.split(":")[1]))
                else:
                    self._finish(batch, "completed", 1.0)
            else:
                batch.status = "in_progress"

    def _finish(self, batch: _Batch, status: str, done_share: float) -> None:
        lines = [json.loads(x) for x in self._files[batch.input_file_id].content.splitlines() if x]
        done = round(len(lines) * done_share)
        output, errors = [], []
        for index, line in enumerate(lines):
            if index >= done:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                error = {"code": code, "message": f"Request not run ({code})."}
                errors.append({"id": self._id("req"), "custom_id": line["custom_id"],
                               "response": None, "error": error})  # fmt: skip
                continue
            reply = self._answer(line)
            (output if reply["response"]["status_code"] == 200 else errors).append(reply)
        self._rng.shuffle(output)  # results come back in no particular order
        batch.output_file_id = self._store_result(batch, output, "output")
        batch.error_file_id = self._store_result(batch, errors, "error")
        batch.counts["completed"], batch.counts["failed"] = len(output), len(errors)
        batch.status = status

    def _answer(self, line: dict) -> dict:
        body = line["body"]
        text = body["input"][0]
        if self.poison and self.poison in text:
            return _line(line, 400, _error(f"Invalid 'input': contains '{self.poison}'."))
        if self.transient and self.transient in text:
            return _line(line, 500, _error("The server had an error.", "server_error"))
        dim = body.get("dimensions") or 1536
        vector = self._vector_for(text, dim)
        tokens = self._tokens_for(text)
        embedding = (base64.b64encode(vector.astype("<f4").tobytes()).decode()
                     if body.get("encoding_format") == "base64" else vector.tolist())  # fmt: skip
        self.stats.requests_answered += 1
        return _line(line, 200, {
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })  # fmt: skip

    def _store_result(self, batch: _Batch, lines: list[dict], kind: str) -> str | None:
        if not lines:
            return None
        content = ("\n".join(json.dumps(x) for x in lines) + "\n").encode()
        file = _File(self._id("file"), f"{batch.id}_{kind}.jsonl", f"batch_{kind}", content,
                     int(self.clock()))  # fmt: skip
        self._files[file.id] = file
        return file.id

    def _public(self, batch: _Batch) -> dict[str, Any]:
        return {
            "id": batch.id, "object": "batch", "endpoint": "/v1/embeddings",
            "input_file_id": batch.input_file_id, "completion_window": "24h",
            "status": batch.status, "created_at": int(batch.created_at),
            "expires_at": int(batch.created_at) + BATCH_WINDOW_S,
            "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
            "request_counts": dict(batch.counts), "metadata": batch.metadata,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        }  # fmt: skip

    def _id(self, prefix: str) -> str:
        self._next += 1
        return f"{prefix}_{self._next:08d}"


def _line(line: dict, status: int, body: dict) -> dict:
    return {"id": f"req_{line['custom_id']}", "custom_id": line["custom_id"],
            "response": {"status_code": status, "request_id": "r", "body": body},
            "error": None}  # fmt: skip


def _page(items: list[dict], query: dict[str, str]) -> dict:
    if after := query.get("after"):
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = int(query.get("limit") or 10_000)
    return {"object": "list", "data": items[:limit], "has_more": len(items) > limit}


def _error(message: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _json(status: int, payload: dict):
    return status, json.dumps(payload).encode(), "application/json"


def _not_found(message: str):
    return _json(404, _error(message))
