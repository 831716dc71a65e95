"""Arrow's memory pool for an import: jemalloc, which gives freed memory back within a second.

pyarrow's default pool (mimalloc) held on to more of what an import frees: a batch's columns
are freed every fraction of a second and the next ones allocated, and a 1,000,000-row import
peaked at 306 MB where jemalloc keeps it at 268 MB (at 10,000 rows: 206-212 MB, 194 MB;
bench/import.py). A decay of 100 ms saved 15 MB more but cost the import a sixth more
CPU, and a decay of 0 made the parse fast path 30% slower: a page fault for every page of
every batch.
"""

from __future__ import annotations

import os
import threading

import pyarrow as pa

DECAY_MS = 1000  # jemalloc's dirty and muzzy decay

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
