"""Arrow's memory pool for an import: jemalloc, giving freed memory back after a short delay.

pyarrow's default pool (mimalloc) keeps freed pages for a second. An import frees a batch's
columns every fraction of a second and allocates the next, so a 1,000,000-row import held about
50 MB more than the batches alive needed (peak RSS 306 MB instead of 258 MB, bench/import.py).
jemalloc with a 100 ms decay gives it back and parses as fast; a decay of 0 would save a little
more but made the fast path 30% slower (a page fault for every page of every batch).
"""

from __future__ import annotations

import os
import threading

import pyarrow as pa

DECAY_MS = 100

_lock = threading.Lock()
_chosen = False


def release_freed_memory_promptly() -> None:
    """Make jemalloc with DECAY_MS the process's default Arrow pool, once. Left alone where the
    user chose a pool (ARROW_DEFAULT_MEMORY_POOL) or pyarrow was built without jemalloc."""
    global _chosen
    with _lock:
        if _chosen or os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
            return
        _chosen = True
        try:
            pool = pa.jemalloc_memory_pool()
        except NotImplementedError:
            return
        pa.jemalloc_set_decay_ms(DECAY_MS)
        pa.set_memory_pool(pool)
