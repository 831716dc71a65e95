"""Taking a file in: fingerprint, store safely, register its import job."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from helix_pipelines.db import jobs
from helix_pipelines.pipeline.inbox import fingerprint, storage_path, store


def intake_file(
    engine: Engine,
    path: Path,
    *,
    files_dir: Path,
    max_file_bytes: int,
    move: bool,
    options: dict | None = None,
) -> tuple[jobs.Job, bool]:
    """Register the job first, then store the file: a crash in between leaves the file where
    it was and the next look finds the job (same content) instead of making a second one."""
    sha256, _ = fingerprint(path, max_file_bytes)
    destination = storage_path(files_dir, path.name, sha256)
    job, created = jobs.register_job(
        engine,
        source_name=path.name,
        source_path=str(destination),
        sha256=sha256,
        options=options,
    )
    store(path, destination, move=move)
    if not Path(job.source_path or "").exists():
        # An earlier drop of this content was registered but never stored (a crash between
        # the two): this copy serves it.
        store(destination, Path(job.source_path), move=False)
    return job, created
