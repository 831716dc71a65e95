"""An import keeps glibc's freed heap memory for the next batch: a batch's temporaries, freed
and allocated again, do not fault their pages in anew. Each case runs in a fresh interpreter
(the thresholds are the process's)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

# Rounds of four 1 MiB temporaries, allocated and freed as a batch's are; minor page faults of
# the last rounds (the first ones settle glibc's thresholds).
PROBE = """
import json, resource, sys
import numpy as np
from helix_pipelines.core.heap_memory import keep_freed_heap_memory
kept = keep_freed_heap_memory() if sys.argv[1] == "kept" else None
def round_():
    arrays = [np.ones(1 << 20, dtype=np.uint8) for _ in range(4)]
    del arrays
for _ in range(5):
    round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    round_()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"kept": kept, "faults": faults, "again": keep_freed_heap_memory()}))
"""

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's"
)


def probe(mode: str, **environment: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUN"))}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], env=env | environment,
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return json.loads(done.stdout)


def test_freed_temporaries_are_reused_without_faulting_their_pages_in_again():
    # 20 rounds of 4 MiB: glibc's own thresholds give the pages back and fault them in again
    # (about 1,000 faults a round); kept, they stay in the heap.
    assert probe("default")["faults"] > 5_000
    kept = probe("kept")
    assert kept["kept"] is True and kept["faults"] < 500
    assert kept["again"] is False  # once a process


def test_malloc_tuning_of_the_users_own_is_left_alone():
    assert probe("kept", MALLOC_TRIM_THRESHOLD_="131072")["kept"] is False
