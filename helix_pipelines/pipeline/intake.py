"""Taking a file in: copy and hash it from one descriptor, register its import job, store it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from helix_pipelines.core.sources import source_key_for
from helix_pipelines.db import jobs
from helix_pipelines.pipeline.inbox import (
    copy_stored,
    display_name,
    open_regular,
    place,
    remove_taken,
    stage,
    storage_path,
)


def intake_file(
    engine: Engine,
    path: Path,
    *,
    files_dir: Path,
    max_file_bytes: int,
    move: bool,
    options: dict | None = None,
    source_key: str | None = None,
) -> tuple[jobs.Job, bool]:
    """Stage a copy (hashed while copied), register the job, then put the copy in place: a
    crash in between leaves the inbox file where it was and the next look finds the job (same
    content) instead of making a second one. ``move`` (the inbox) never follows a symlink and
    removes the taken file; otherwise (the CLI) the named file is copied and left alone.

    The import is a version of `source_key`, by default of the source its file name names
    (core.sources.source_key_for).

    Raises CannotTake for anything but a readable, non-empty regular file under the limit.
    """
    name = display_name(path.name)
    with open_regular(path, follow_symlinks=not move) as (fd, info):
        staged = stage(fd, info, files_dir, max_file_bytes)
    try:
        destination = storage_path(files_dir, name, staged.sha256)
        job, created = jobs.register_job(
            engine,
            source_name=name,
            source_path=str(destination),
            sha256=staged.sha256,
            options=options,
            source_key=source_key or source_key_for(name),
        )
        place(staged, destination)
    finally:
        staged.path.unlink(missing_ok=True)
    if move:
        remove_taken(path, staged)
    if not Path(job.source_path or "").exists():
        # An earlier drop of this content was registered but never stored (a crash between
        # the two): this copy serves it.
        copy_stored(destination, Path(job.source_path))
    return job, created
