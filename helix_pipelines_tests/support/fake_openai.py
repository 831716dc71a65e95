"""A real HTTP server that speaks OpenAI's embeddings API and misbehaves on request.

Vectors are a pure function of the text (`FakeOpenAI.vector_for`), so a test can check every
stored vector. Faults are either scripted for the next requests (`script("500", "hang")`) or
drawn at a rate from a seeded RNG (`set_fault_rates({"503": 0.1}, seed=1)`); both can change at
any time from any thread. RPM/TPM limits are enforced over a sliding 60 s window on an injectable
clock, and each 429 they cause is counted in `stats.violations`.

Run alone: python -m helix_pipelines_tests.support.fake_openai --port 8089 --rpm 3000
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import math
import random
import signal
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from helix_pipelines_tests.support.fake_batches import BatchService

API_KEY = "sk-test"
DEFAULT_DIM = 1536
WINDOW_S = 60.0

# Faults answered instead of processing the request.
HTTP_FAULTS = frozenset(
    {"429_retry_after", "429_retry_after_ms", "429_bare", "500", "503", "hang", "drop"}
)
# Refusals of the account or the configuration, with the bodies OpenAI sends.
REFUSALS = {
    "429_quota": (
        429, "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota", "insufficient_quota",
    ),
    "401": (401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    "403": (
        403, "You are not allowed to sample from this model", "invalid_request_error", None,
    ),
    "404_model": (
        404, "The model `text-embedding-9` does not exist or you do not have access to it.",
        "invalid_request_error", "model_not_found",
    ),
}  # fmt: skip
# What OpenAI answers when a model does not take the `dimensions` parameter.
DIMENSIONS_REFUSAL = "This model does not support specifying dimensions."
# Faults that corrupt (or, for "shuffle", legitimately reorder) an otherwise good response.
BODY_FAULTS = frozenset({"malformed_json", "short", "shuffle", "wrong_dim", "nan"})
FAULTS = HTTP_FAULTS | BODY_FAULTS | frozenset(REFUSALS)


@dataclass
class Stats:
    requests: int = 0
    by_outcome: Counter = field(default_factory=Counter)
    inputs_embedded: int = 0
    tokens: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    violations: int = 0
    log: list[tuple[float, int, int, int]] = field(default_factory=list)  # time, n, tokens, status


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    outcome: str = ""  # stats key: "ok", a fault's name, "rate_limited", or the status

    def __post_init__(self) -> None:
        self.outcome = self.outcome or str(self.status)


class FakeOpenAI:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = API_KEY,
        default_dim: int = DEFAULT_DIM,
        latency_s: float = 0.0,
        rpm: int | None = None,
        tpm: int | None = None,
        hang_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = WINDOW_S,
    ) -> None:
        self.api_key = api_key
        self.default_dim = default_dim
        self.hang_s = hang_s
        self.clock = clock
        self.window_s = window_s
        self.stats = Stats()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._latency_s = latency_s
        self._rpm, self._tpm = rpm, tpm
        self._window: deque[tuple[float, int]] = deque()
        self._script: deque[str] = deque()
        self._rates: dict[str, float] = {}
        self._rng = random.Random(0)
        self._poison: str | None = None
        self._reject_dimensions = False
        # Files and batches (the Batch API) share the server, its clock and its vectors.
        self.batch = BatchService(self.vector_for, self.tokens_for, lambda: self.clock())
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes hanging and sleeping handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration (thread-safe, any time) ---------------------------------------------------

    def script(self, *faults: str) -> None:
        """Answer the next requests with these faults in order; "ok" means behave."""
        _check_faults(f for f in faults if f != "ok")
        with self._lock:
            self._script.extend(faults)

    def set_fault_rates(self, rates: dict[str, float], seed: int = 0) -> None:
        """Each request draws at most one fault, with these probabilities (summing to <= 1)."""
        _check_faults(rates)
        if sum(rates.values()) > 1:
            raise ValueError("fault probabilities sum to more than 1")
        with self._lock:
            self._rates = dict(rates)
            self._rng = random.Random(seed)

    def set_poison(self, substring: str | None) -> None:
        """Refuse with 400 any request with an input containing this substring."""
        with self._lock:
            self._poison = substring

    def set_reject_dimensions(self, reject: bool = True) -> None:
        """Refuse with 400, as OpenAI does for older models, any request that sends
        `dimensions`."""
        with self._lock:
            self._reject_dimensions = reject

    def set_latency(self, seconds: float) -> None:
        with self._lock:
            self._latency_s = seconds

    def set_limits(self, *, rpm: int | None = None, tpm: int | None = None) -> None:
        with self._lock:
            self._rpm, self._tpm = rpm, tpm
            self._window.clear()

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = Stats()

    # -- the embedding function ------------------------------------------------------------------

    @staticmethod
    def vector_for(text: str, dim: int = DEFAULT_DIM) -> np.ndarray:
        """Unit-length float32 vector seeded from sha256(text): what this server returns."""
        return np.frombuffer(_vector_bytes(text, dim), dtype="<f4").copy()

    @staticmethod
    def tokens_for(text: str) -> int:
        """What this server charges: about OpenAI's rate for English (four bytes a token)."""
        return max(1, math.ceil(len(text.encode("utf-8")) / 4))

    # -- request handling (called from handler threads) -----------------------------------------

    def _handle(self, path: str, headers: Any, raw_body: bytes) -> _Reply:
        self._enter()
        try:
            self._pause(self._config()[0])
            reply, n_inputs, tokens = self._respond(path, headers, raw_body)
        finally:
            self._leave()
        self._record(reply, n_inputs, tokens)
        return reply

    def _respond(self, path: str, headers: Any, raw_body: bytes) -> tuple[_Reply, int, int]:
        if path.rstrip("/") not in ("/v1/embeddings", "/embeddings"):
            return _error(404, f"Unknown request URL: POST {path}.", "invalid_request_error"), 0, 0
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error"), 0, 0
        request, problem = _parse_request(raw_body)
        if problem:
            return _error(400, problem, "invalid_request_error"), 0, 0
        texts, dim = request["texts"], request["dim"] or self.default_dim
        if request["dim"] is not None and self._rejects_dimensions():
            return _error(400, DIMENSIONS_REFUSAL, "invalid_request_error"), 0, 0
        tokens = sum(self.tokens_for(text) for text in texts)
        if poisoned := self._poisoned(texts):
            return poisoned, len(texts), tokens
        fault = self._next_fault()
        if fault in REFUSALS:
            status, message, kind, code = REFUSALS[fault]
            return _error(status, message, kind, code=code, outcome=fault), len(texts), tokens
        if fault in HTTP_FAULTS:
            return self._http_fault(fault), len(texts), tokens
        if limited := self._admit(tokens):
            return limited, len(texts), tokens
        body = _embeddings_body(texts, dim, request, tokens, fault)
        return _Reply(200, body, self._limit_headers(), outcome=fault or "ok"), len(texts), tokens

    def _poisoned(self, texts: list[str]) -> _Reply | None:
        poison = self._config()[1]
        for index, text in enumerate(texts):
            if poison and poison in text:
                message = f"Invalid value for 'input' at index {index}: contains '{poison}'."
                return _error(400, message, "invalid_request_error", param="input")
        return None

    def _next_fault(self) -> str | None:
        with self._lock:
            if self._script:
                fault = self._script.popleft()
                return None if fault == "ok" else fault
            draw = self._rng.random()
            for fault, rate in self._rates.items():
                if draw < rate:
                    return fault
                draw -= rate
        return None

    def _http_fault(self, fault: str) -> _Reply:
        if fault in ("hang", "drop"):
            if fault == "hang":
                self._stopping.wait(self.hang_s)
            return _Reply(0, drop=True, outcome=fault)
        if fault.startswith("429"):
            reply = _error(429, "Rate limit reached for requests (simulated).", "requests")
            reply.outcome = fault
            if fault == "429_retry_after":
                reply.headers["retry-after"] = "1"
            elif fault == "429_retry_after_ms":
                reply.headers["retry-after-ms"] = "250"
            return reply
        reply = _error(
            int(fault), "The server had an error processing your request.", "server_error"
        )
        reply.outcome = fault
        return reply

    def _admit(self, tokens: int) -> _Reply | None:
        """Sliding-window RPM/TPM; a refused request is a violation and uses no budget."""
        with self._lock:
            now = self.clock()
            while self._window and self._window[0][0] <= now - self.window_s:
                self._window.popleft()
            used_tokens = sum(t for _, t in self._window)
            over_rpm = self._rpm is not None and len(self._window) + 1 > self._rpm
            over_tpm = self._tpm is not None and used_tokens + tokens > self._tpm
            if not (over_rpm or over_tpm):
                self._window.append((now, tokens))
                return None
            self.stats.violations += 1
            wait = self._window[0][0] + self.window_s - now if self._window else self.window_s
        which = "requests" if over_rpm else "tokens"
        reply = _error(429, f"Rate limit reached for {which} per min (simulated).", which)
        reply.outcome = "rate_limited"
        reply.headers.update(self._limit_headers())
        reply.headers["retry-after-ms"] = str(max(1, round(wait * 1000)))
        return reply

    def _limit_headers(self) -> dict[str, str]:
        with self._lock:
            rpm, tpm = self._rpm or 3_000, self._tpm or 1_000_000
            used_requests = len(self._window)
            used_tokens = sum(t for _, t in self._window)
            reset = self._window[0][0] + self.window_s - self.clock() if self._window else 0.0
        return {
            "x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-limit-tokens": str(tpm),
            "x-ratelimit-remaining-requests": str(max(0, rpm - used_requests)),
            "x-ratelimit-remaining-tokens": str(max(0, tpm - used_tokens)),
            "x-ratelimit-reset-requests": f"{max(0, round(reset * 1000))}ms",
            "x-ratelimit-reset-tokens": f"{max(0.0, reset):.3f}s",
        }

    def _rejects_dimensions(self) -> bool:
        with self._lock:
            return self._reject_dimensions

    def _config(self) -> tuple[float, str | None]:
        with self._lock:
            return self._latency_s, self._poison

    def _pause(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _enter(self) -> None:
        with self._lock:
            self.stats.requests += 1
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.stats.in_flight -= 1

    def _record(self, reply: _Reply, n_inputs: int, tokens: int) -> None:
        with self._lock:
            self.stats.by_outcome[reply.outcome] += 1
            if reply.outcome in ("ok", "shuffle"):  # responses a correct client accepts
                self.stats.inputs_embedded += n_inputs
                self.stats.tokens += tokens
            self.stats.log.append((self.clock(), n_inputs, tokens, reply.status))


def _parse_request(raw_body: bytes) -> tuple[dict[str, Any], str | None]:
    try:
        payload = json.loads(raw_body)
    except ValueError:
        return {}, "We could not parse the JSON body of your request."
    if not isinstance(payload, dict) or "model" not in payload:
        return {}, "you must provide a model parameter"
    texts = payload.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return {}, "'input' must be a string or a non-empty array of strings."
    if len(texts) > 2048:
        return {}, f"Invalid 'input': maximum array size is 2048, got {len(texts)}."
    if any(text == "" for text in texts):
        return {}, "'$.input' is invalid. Please check the API reference."
    dim = payload.get("dimensions")
    if dim is not None and (type(dim) is not int or dim < 1):
        return {}, f"Invalid value for 'dimensions': {dim!r}."
    encoding = payload.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        return {}, f"Invalid value for 'encoding_format': {encoding!r}."
    request = {"texts": texts, "dim": dim, "encoding": encoding, "model": payload["model"]}
    return request, None


def _embeddings_body(
    texts: list[str], dim: int, request: dict[str, Any], tokens: int, fault: str | None
) -> bytes:
    if fault == "malformed_json":
        return b'{"object": "list", "data": [{"object": "embedding", "index": 0, "embeddi'
    width = dim - 1 if fault == "wrong_dim" else dim
    items = [_item(i, text, width, request["encoding"]) for i, text in enumerate(texts)]
    if fault == "nan":
        items[0]["embedding"] = _encode(np.full(width, np.nan, np.float32), request["encoding"])
    if fault == "short":
        items = items[:-1]
    if fault == "shuffle":
        items.reverse()
    body = {
        "object": "list",
        "data": items,
        "model": request["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return json.dumps(body).encode()


def _item(index: int, text: str, dim: int, encoding: str) -> dict[str, Any]:
    vector = np.frombuffer(_vector_bytes(text, dim), dtype="<f4")
    return {"object": "embedding", "index": index, "embedding": _encode(vector, encoding)}


def _encode(vector: np.ndarray, encoding: str) -> str | list[float]:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


@lru_cache(maxsize=8192)
def _vector_bytes(text: str, dim: int) -> bytes:
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    vector /= np.linalg.norm(vector)
    return vector.astype("<f4").tobytes()


def _error(
    status: int,
    message: str,
    kind: str,
    param: str | None = None,
    *,
    code: str | None = None,
    outcome: str = "",
) -> _Reply:
    error = {"message": message, "type": kind, "param": param, "code": code}
    return _Reply(status, json.dumps({"error": error}).encode(), outcome=outcome)


def _check_faults(faults: Any) -> None:
    unknown = set(faults) - FAULTS
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; known: {sorted(FAULTS)}")


def _handler_for(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the openai client expects

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes; without this, delayed ACKs add ~40 ms.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:
            self._batch_api("GET", b"")

        def _batch_api(self, method: str, body: bytes) -> None:
            if self.headers.get("Authorization") != f"Bearer {server.api_key}":
                status, payload, kind = 401, b'{"error": {"message": "bad key"}}', "json"
            else:
                status, payload, kind = server.batch.handle(method, self.path, self.headers, body)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if self.path.startswith(("/v1/files", "/v1/batches")):
                self._batch_api("POST", self.rfile.read(length))
                return
            reply = server._handle(self.path, self.headers, self.rfile.read(length))
            if reply.drop:
                self.close_connection = True  # no status line: the client sees a dead socket
                return
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

    return Handler


@contextlib.contextmanager
def running_fake_openai(**config: Any) -> Iterator[FakeOpenAI]:
    """A started FakeOpenAI for the duration of the block."""
    server = FakeOpenAI(**config).start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a fake OpenAI embeddings API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--rpm", type=int)
    parser.add_argument("--tpm", type=int)
    parser.add_argument("--dim", type=int, default=DEFAULT_DIM)
    parser.add_argument("--api-key", default=API_KEY)
    args = parser.parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    config = {"latency_s": args.latency_ms / 1000, "rpm": args.rpm, "tpm": args.tpm}
    with running_fake_openai(
        host=args.host, port=args.port, api_key=args.api_key, default_dim=args.dim, **config
    ) as server:
        print(f"fake OpenAI serving at http://{args.host}:{server.port}/v1", flush=True)
        done.wait()
        print(
            json.dumps(
                {
                    "requests": server.stats.requests,
                    "by_outcome": dict(server.stats.by_outcome),
                    "violations": server.stats.violations,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
