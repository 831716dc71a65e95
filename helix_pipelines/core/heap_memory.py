"""glibc's heap for an import: keep freed memory for the next batch instead of giving it back.

A batch's numpy temporaries are a few hundred KB each, allocated and freed many times a second.
glibc serves them with mmap (or trims the heap top after them) under its dynamic thresholds,
so every page of every temporary faulted in anew: 126,000 page faults per 300,000 parsed rows,
a fifth of the parse's CPU (bench/parse.py's file). Fixed thresholds keep such blocks in the
heap: 13,000 faults, same peak RSS (measured in docs/scaling.md). Blocks bigger than
MMAP_THRESHOLD still come from mmap and go back whole when freed; at most TRIM_THRESHOLD of
free memory stays at the top of the heap.

Left alone off glibc, and where the user tuned malloc through the environment.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading

MMAP_THRESHOLD = 2 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, malloc.h
_USER_TUNING = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_lock = threading.Lock()
_done = False


def keep_freed_heap_memory() -> bool:
    """Fix glibc's mmap and trim thresholds, once a process. True when they were set."""
    global _done
    with _lock:
        if _done:
            return False
        _done = True
        if platform.libc_ver()[0] != "glibc" or any(map(os.environ.get, _USER_TUNING)):
            return False
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
        if mallopt is None:
            return False
        # The mmap threshold first: setting it switches off glibc's dynamic thresholds.
        return bool(
            mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
