"""Taking a file in: copy it from one descriptor and hash the copy, register its import job,
store it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from helix_pipelines.core.sources import source_key_for
from helix_pipelines.db import jobs
from helix_pipelines.pipeline.file_store import FileStore, LocalStore, keep, store_holding
from helix_pipelines.pipeline.inbox import Staged, display_name, open_regular, remove_taken, stage


def intake_file(
    engine: Engine,
    path: Path,
    *,
    files_dir: Path,
    max_file_bytes: int,
    move: bool,
    options: dict | None = None,
    source_key: str | None = None,
    store: FileStore | None = None,
    staged: Staged | None = None,
) -> tuple[jobs.Job, bool]:
    """Stage a hashed copy, register the job, then put the copy in place: a
    crash in between leaves the inbox file where it was and the next look finds the job (same
    content) instead of making a second one. ``move`` (the inbox) never follows a symlink and
    removes the taken file; otherwise (the CLI) the named file is copied and left alone.

    The import is a version of `source_key`, by default of the source its file name names
    (core.sources.source_key_for). The copy goes to `store` (HELIX_FILE_STORE; default: the
    directory `files_dir`), staged first in `files_dir` on this host.

    `staged`: the copy `stage_file` made of `path` beforehand, if it did; it is used up here.

    Raises CannotTake for anything but a readable, non-empty regular file under the limit.
    """
    store = store or LocalStore(files_dir)
    name = display_name(path.name)
    if staged is None:
        staged = stage_file(path, files_dir=files_dir, max_file_bytes=max_file_bytes, move=move)
    try:
        job, created = jobs.register_job(
            engine,
            source_name=name,
            source_path=store.location(name, staged.sha256),
            sha256=staged.sha256,
            options=options,
            source_key=source_key or source_key_for(name),
        )
        # Also when an earlier drop of this content was registered but never stored (a crash
        # between the two): this copy serves it, in the store its location names (the setting
        # may have changed since). `put` keeps a copy already there.
        keep(store_holding(job.source_path, engine), engine, staged.path, job.source_path,
             staged.sha256)  # fmt: skip
    finally:
        staged.path.unlink(missing_ok=True)
    if move:
        remove_taken(path, staged)
    return job, created


def stage_file(path: Path, *, files_dir: Path, max_file_bytes: int, move: bool) -> Staged:
    """A copy of the file in `files_dir`'s staging area, and its hash (CannotTake as above)."""
    with open_regular(path, follow_symlinks=not move) as (fd, info):
        return stage(fd, info, files_dir, max_file_bytes)
