"""The inbox: which dropped files are completely written, and taking them into safe storage.

A file is ready once its size and modification time are unchanged between two looks (so a
slow upload is never read half-written); writers may also upload under a name starting with
`.` or ending in `.part`/`.tmp` and rename when done. Nothing here knows Dagster.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from helix_pipelines.core.naming import safe_stem

IN_PROGRESS_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload")
REJECTED_DIR = "rejected"


@dataclass(frozen=True)
class StoredFile:
    original_name: str
    stored_path: Path
    sha256: str
    size: int


class CannotTake(Exception):
    """The file cannot be imported at all; it goes to inbox/rejected/ with this reason."""


def look(inbox: Path, previous: dict[str, list[int]], limit: int) -> tuple[list[Path], dict]:
    """One look at the inbox. Returns the files ready now (unchanged since `previous`) and the
    observations to pass next time. At most `limit` candidates are followed, so a directory of
    thousands of files costs bounded work per tick; taken files leave and make room."""
    observed: dict[str, list[int]] = {}
    ready: list[Path] = []
    for entry in _candidates(inbox, limit):
        stat = entry.stat()
        now = [stat.st_size, stat.st_mtime_ns]
        if previous.get(entry.name) == now:
            ready.append(Path(entry.path))
        else:
            observed[entry.name] = now
    return ready, observed


def _candidates(inbox: Path, limit: int) -> list[os.DirEntry]:
    try:
        entries = [e for e in os.scandir(inbox) if _is_candidate(e)]
    except FileNotFoundError:
        return []
    entries.sort(key=lambda e: e.name)
    return entries[:limit]


def _is_candidate(entry: os.DirEntry) -> bool:
    name = entry.name
    if name.startswith(".") or name.lower().endswith(IN_PROGRESS_SUFFIXES):
        return False
    return entry.is_file(follow_symlinks=False)


def fingerprint(path: Path, max_bytes: int) -> tuple[str, int]:
    """(sha256, size) of a file, refusing empty and oversized files."""
    size = path.stat().st_size
    if size == 0:
        raise CannotTake("the file is empty")
    if size > max_bytes:
        raise CannotTake(f"the file is {size:,} bytes, over the limit of {max_bytes:,}")
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    except OSError as exc:
        raise CannotTake(f"the file cannot be read: {exc.strerror or exc}") from exc
    return digest.hexdigest(), size


def storage_path(files_dir: Path, original_name: str, sha256: str) -> Path:
    """Where a file is kept: a directory per content hash, under a sanitised name, so no two
    files collide and no name can climb out of `files_dir`."""
    suffix = "".join(Path(original_name).suffixes[-1:]).lower()
    stem = safe_stem(Path(original_name).stem if suffix else original_name)
    return files_dir / sha256[:2] / sha256 / f"{stem}{safe_suffix(suffix)}"


def safe_suffix(suffix: str) -> str:
    cleaned = "".join(ch for ch in suffix if ch.isalnum() or ch == ".")
    return cleaned[:10] if cleaned.startswith(".") else ""


def store(source: Path, destination: Path, *, move: bool) -> Path:
    """Move (inbox) or copy (CLI import) a file into storage; atomic on one filesystem."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists():
        if move:
            source.unlink()  # the same content is already stored
        return destination
    temporary = destination.with_name(destination.name + ".incoming")
    if move:
        try:
            os.replace(source, destination)
            return destination
        except OSError:
            shutil.copyfile(source, temporary)
            os.replace(temporary, destination)
            source.unlink()
            return destination
    shutil.copyfile(source, temporary)
    os.replace(temporary, destination)
    return destination


def reject(path: Path, inbox: Path, reason: str) -> Path:
    """Move a file that cannot be taken to inbox/rejected/, with a note of why beside it."""
    rejected = inbox / REJECTED_DIR
    rejected.mkdir(parents=True, exist_ok=True)
    target = rejected / path.name
    counter = 1
    while target.exists():
        counter += 1
        target = rejected / f"{path.stem}.{counter}{path.suffix}"
    os.replace(path, target)
    target.with_name(target.name + ".reason.txt").write_text(reason + "\n", encoding="utf-8")
    return target
