"""Where stored copies of uploads live, so that a step on any worker can read them.

HELIX_FILE_STORE picks the store new uploads go to:

- a directory (the default, `$HELIX_HOME/files`): one machine, or a shared mount;
- `postgres`: the bytes in the application database (db.stored_files), 1 MiB a row: any worker
  that reaches the database reads the file, no new infrastructure;
- an fsspec URL (`s3://bucket/prefix`, `gs://…`, `az://…`, `file:///…`; the backend's package
  installed): large deployments.

A stored copy's location (import_job.source_path) says which store holds it, so a file is read
from where it was put whatever the setting says today: a plain path, `postgres:<sha256>/<name>`,
or the URL. Parsers read a local file (sniffing and XLSX need to seek): a copy that is not local
is spooled to a temporary directory on the worker in 1 MiB blocks and removed after the step,
so memory stays flat; disk holds at most the file (HELIX_MAX_FILE_BYTES bounds it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from sqlalchemy.engine import Engine

from helix_pipelines.db import stored_files
from helix_pipelines.pipeline.inbox import copy_stored, storage_path

log = logging.getLogger(__name__)

POSTGRES = "postgres"
_POSTGRES_PREFIX = "postgres:"
_BLOCK = 1 << 20


class FileStore(Protocol):
    def location(self, name: str, sha256: str) -> str:
        """Where a file of this name and content is (or would be) kept."""

    def put(self, staged: Path, location: str, sha256: str) -> None:
        """Store a staged local file at `location` (kept when already there)."""

    def exists(self, location: str) -> bool: ...

    def local_copy(self, location: str) -> contextlib.AbstractContextManager[Path]:
        """A local file with the stored bytes, for the time of the block."""

    def remove(self, location: str) -> None: ...


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def location(self, name: str, sha256: str) -> str:
        return str(storage_path(self.root, name, sha256))

    def put(self, staged: Path, location: str, sha256: str) -> None:
        """Moves the staged file in (copies it across file systems)."""
        target = Path(location)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(staged, target)
        except OSError:
            copy_stored(staged, target)

    def exists(self, location: str) -> bool:
        return Path(location).is_file()

    @contextlib.contextmanager
    def local_copy(self, location: str) -> Iterator[Path]:
        yield Path(location)

    def remove(self, location: str) -> None:
        path = Path(location)
        path.unlink(missing_ok=True)
        # The per-hash directories, when empty now.
        for parent in (path.parent, path.parent.parent):
            with contextlib.suppress(OSError):
                parent.rmdir()


class PostgresStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def location(self, name: str, sha256: str) -> str:
        return f"{_POSTGRES_PREFIX}{sha256}/{Path(storage_path(Path('.'), name, sha256)).name}"

    def put(self, staged: Path, location: str, sha256: str) -> None:
        with open(staged, "rb") as source:
            stored_files.write_chunks(self.engine, location, sha256, source)

    def exists(self, location: str) -> bool:
        return stored_files.has_chunks(self.engine, location)

    def local_copy(self, location: str) -> contextlib.AbstractContextManager[Path]:
        return _spooled(_file_name(location), stored_files.read_chunks(self.engine, location))

    def remove(self, location: str) -> None:
        stored_files.delete_chunks(self.engine, location)


class FsspecStore:
    def __init__(self, root_url: str) -> None:
        import fsspec

        self.root_url = root_url.rstrip("/") if not root_url.endswith("://") else root_url
        self.fs, _ = fsspec.core.url_to_fs(root_url)

    def location(self, name: str, sha256: str) -> str:
        relative = storage_path(Path("."), name, sha256)
        return f"{self.root_url}/{relative.as_posix()}"

    def put(self, staged: Path, location: str, sha256: str) -> None:
        if self.exists(location):
            return
        # Written under a temporary name and moved, so a reader never sees half a file (on
        # object stores the upload itself is atomic and the move is a copy).
        partial = f"{location}.incoming"
        with contextlib.suppress(Exception):  # object stores have no directories to make
            self.fs.makedirs(self.fs._parent(location), exist_ok=True)
        self.fs.put_file(str(staged), partial)
        self.fs.mv(partial, location)

    def exists(self, location: str) -> bool:
        return self.fs.exists(location)

    def local_copy(self, location: str) -> contextlib.AbstractContextManager[Path]:
        return _spooled(_file_name(location), self._blocks(location))

    def _blocks(self, location: str) -> Iterator[bytes]:
        with self.fs.open(location, "rb") as source:
            while block := source.read(_BLOCK):
                yield block

    def remove(self, location: str) -> None:
        if self.fs.exists(location):
            self.fs.rm(location)


def open_store(spec: str, engine: Engine) -> FileStore:
    """The store new uploads go to, from HELIX_FILE_STORE (or its default directory)."""
    if spec == POSTGRES:
        return PostgresStore(engine)
    if "://" in spec:
        return FsspecStore(spec)
    return LocalStore(Path(spec))


def store_holding(location: str, engine: Engine) -> FileStore:
    """The store a stored copy's location belongs to."""
    if location.startswith(_POSTGRES_PREFIX):
        return PostgresStore(engine)
    if "://" in location:
        return FsspecStore(location)
    return LocalStore(Path(location).parent)


def keep(store: FileStore, engine: Engine, staged: Path, location: str, sha256: str) -> None:
    """Put a staged upload in the store and note it in the registry (retention reads it)."""
    size = staged.stat().st_size
    store.put(staged, location, sha256)
    stored_files.record(engine, location, sha256, size)


def readable_copy(engine: Engine, location: str) -> contextlib.AbstractContextManager[Path]:
    """A local path to a stored copy's bytes, wherever it is kept."""
    return store_holding(location, engine).local_copy(location)


def remove_unneeded(
    engine: Engine, retention_days: float | None = None, locations: list[str] | None = None
) -> list[str]:
    """Delete stored copies no import needs (db.stored_files.unneeded); returns their
    locations. One that cannot be removed now is logged and tried again next time."""
    removed = []
    for location in stored_files.unneeded(engine, retention_days, locations):
        try:
            store_holding(location, engine).remove(location)
        except Exception as exc:  # noqa: BLE001 - one stuck copy must not stop the others
            log.warning("could not remove the stored copy %s: %s", location, exc)
            continue
        stored_files.mark_removed(engine, location)
        removed.append(location)
    return removed


def _file_name(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


@contextlib.contextmanager
def _spooled(name: str, blocks: Iterator[bytes]) -> Iterator[Path]:
    """The blocks written to a private temporary directory under the file's own name (the
    readers tell formats by extension), removed when the block ends."""
    directory = Path(tempfile.mkdtemp(prefix="helix-spool-"))
    try:
        target = directory / name
        with open(target, "xb") as out:
            for block in blocks:
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        yield target
    finally:
        shutil.rmtree(directory, ignore_errors=True)
