"""The test side of reader_worker: one child process parsing files on request."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class ChildDied(AssertionError):
    """The child process died (or hung) while parsing: a crash the readers must not have."""


class ReaderChild:
    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self.process = self._start()

    @staticmethod
    def _start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "helix_pipelines_tests.core.reader_worker"],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )

    def parse(self, path: Path, keep_pairs: bool = True, **options) -> dict:
        """The child's answer for one file; ChildDied (and a fresh child) if it crashed."""
        request = json.dumps({"path": str(path), "options": options, "keep_pairs": keep_pairs})
        try:
            self.process.stdin.write(request + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            return self._died(path, "the child had already exited")
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout_s)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            return self._died(path, "no answer" if ready else f"no answer in {self.timeout_s}s")
        return json.loads(line)

    def _died(self, path: Path, what: str) -> dict:
        self.process.kill()
        code = self.process.wait()
        self.process = self._start()
        raise ChildDied(f"parsing {path.name} killed the reader ({what}, exit code {code})")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)
