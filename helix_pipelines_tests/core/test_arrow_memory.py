"""An import makes Arrow's memory pool give freed memory back promptly, unless the user chose a
pool. The pool is the process's: each case runs in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pytest

PROBE = (
    "import pyarrow as pa\n"
    "from helix_pipelines.core.arrow_memory import release_freed_memory_promptly\n"
    "release_freed_memory_promptly()\n"
    "release_freed_memory_promptly()\n"
    "print(pa.default_memory_pool().backend_name)\n"
)


def pool_after_the_call(**environment: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env | environment,
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return done.stdout.strip()


def has_jemalloc() -> bool:
    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        return False
    return True


@pytest.mark.skipif(not has_jemalloc(), reason="this pyarrow was built without jemalloc")
def test_the_import_pool_is_jemalloc():
    assert pool_after_the_call() == "jemalloc"


def test_a_pool_the_user_chose_is_kept():
    assert pool_after_the_call(ARROW_DEFAULT_MEMORY_POOL="system") == "system"
