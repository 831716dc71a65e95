"""The inbox: which dropped files are completely written, and taking them into safe storage.

A file is ready once its size and modification time are unchanged between two looks (so a
slow upload is never read half-written); writers may also upload under a name starting with
`.` or ending in `.part`/`.tmp` and rename when done. Nothing here knows Dagster.

Only regular files are taken, and never through a link: a file is opened once with
``O_NOFOLLOW`` (and ``O_NONBLOCK``, so a FIFO cannot hang the opener), checked with ``fstat``,
and copied from that same descriptor (the copy is what gets hashed), so a name swapped for a
symlink or a FIFO at any moment is never followed. Symlinks, FIFOs, sockets, devices and
directories dropped in the inbox are moved, unopened, to ``inbox/rejected/`` with a note of
why. Names in any byte encoding are handled: ``display_name`` is what reaches the database,
logs and notes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from helix_pipelines.core.naming import safe_stem

IN_PROGRESS_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload")
REJECTED_DIR = "rejected"
STAGING_DIR = ".incoming"
_BLOCK = 1 << 20
_KERNEL_CHUNK = 1 << 26  # bytes a copy_file_range call may copy
_NO_KERNEL_COPY = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM, errno.EBADF}
)


class CannotTake(Exception):
    """The file cannot be imported at all; it goes to inbox/rejected/ with this reason."""

    transient = False


@dataclass(frozen=True)
class Entry:
    """One name in the inbox: ``path`` for the file system, ``name`` for people."""

    path: Path
    name: str


@dataclass(frozen=True)
class Look:
    ready: list[Entry]  # regular files unchanged since the previous look
    refused: list[tuple[Entry, str]]  # not regular files, with the reason
    observed: dict[str, list[int]]  # pass as `previous` next time


@dataclass(frozen=True)
class Staged:
    """A copy of a taken file in storage's staging area, and what it was copied from."""

    path: Path
    sha256: str
    size: int
    source: os.stat_result


def display_name(name: str) -> str:
    """A file name as valid text: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def look(inbox: Path, previous: dict[str, list[int]], limit: int) -> Look:
    """One look at the inbox. At most `limit` candidates are followed, so a directory of
    thousands of files costs bounded work per tick; taken files leave and make room."""
    observed: dict[str, list[int]] = {}
    ready: list[Entry] = []
    refused: list[tuple[Entry, str]] = []
    for dir_entry in _candidates(inbox, limit):
        entry = Entry(Path(dir_entry.path), display_name(dir_entry.name))
        try:
            info = dir_entry.stat(follow_symlinks=False)
        except OSError:
            continue  # gone since the listing
        if not stat.S_ISREG(info.st_mode):
            refused.append((entry, f"not a regular file ({kind_of(info.st_mode)}); not opened"))
            continue
        now = [info.st_size, info.st_mtime_ns]
        if previous.get(entry.name) == now:
            ready.append(entry)
        else:
            observed[entry.name] = now
    return Look(ready, refused, observed)


def kind_of(mode: int) -> str:
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((text for test, text in kinds if test(mode)), "not a regular file")


def _candidates(inbox: Path, limit: int) -> list[os.DirEntry]:
    try:
        with os.scandir(inbox) as listing:
            entries = [e for e in listing if _is_candidate(e)]
    except FileNotFoundError:
        return []
    entries.sort(key=lambda e: os.fsencode(e.name))
    return entries[:limit]


def _is_candidate(entry: os.DirEntry) -> bool:
    name = entry.name
    if name.startswith(".") or name == REJECTED_DIR:
        return False
    return not name.lower().endswith(IN_PROGRESS_SUFFIXES)


@contextmanager
def open_regular(path: Path, *, follow_symlinks: bool) -> Iterator[tuple[int, os.stat_result]]:
    """(descriptor, fstat) of a regular file; CannotTake for anything else. The inbox never
    follows links; the CLI does (the operator named the file)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if not follow_symlinks and os.path.islink(path):
            raise CannotTake("a symbolic link; never followed") from exc
        raise CannotTake(f"the file cannot be opened: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CannotTake(f"not a regular file ({kind_of(info.st_mode)})")
        yield fd, info
    finally:
        os.close(fd)


def stage(fd: int, info: os.stat_result, files_dir: Path, max_bytes: int) -> Staged:
    """Copy an opened file into files_dir's staging area and hash the copy, so the stored
    bytes are exactly the hashed ones even if the file changes meanwhile."""
    if info.st_size == 0:
        raise CannotTake("the file is empty")
    if info.st_size > max_bytes:
        raise CannotTake(f"the file is {info.st_size:,} bytes, over the limit of {max_bytes:,}")
    staging = files_dir / STAGING_DIR
    staging.mkdir(parents=True, exist_ok=True)
    target = staging / uuid.uuid4().hex
    try:
        digest, size = _copy_hashing(fd, target, max_bytes)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if size == 0:
        target.unlink(missing_ok=True)
        raise CannotTake("the file is empty")
    return Staged(target, digest, size, info)


def _copy_hashing(fd: int, target: Path, max_bytes: int) -> tuple[str, int]:
    """The copy first, then its hash: the stored bytes are the hashed ones whatever happens to
    the original meanwhile."""
    with open(target, "xb") as out:
        try:
            size = _copy(fd, out.fileno(), max_bytes)
        except OSError as exc:
            raise CannotTake(f"the file cannot be read: {exc.strerror or exc}") from exc
    with open(target, "rb") as copy:
        return hashlib.file_digest(copy, "sha256").hexdigest(), size


def _copy(fd: int, out: int, max_bytes: int) -> int:
    """Copies in the kernel where it can (copy_file_range: the bytes never pass through this
    process, 5-7 times faster than reading and writing them here), else block by block."""
    size, in_kernel = 0, hasattr(os, "copy_file_range")
    while True:
        copied = _kernel_copy(fd, out, size) if in_kernel else None
        if copied is None:
            in_kernel = False
            copied = _block_copy(fd, out, size)
        elif copied == 0 and os.pread(fd, 1, size):
            in_kernel = False  # some file systems report nothing to copy: read it ourselves
            continue
        if copied == 0:
            return size
        size += copied
        if size > max_bytes:
            raise CannotTake(f"the file grew over the limit of {max_bytes:,} bytes")


def _kernel_copy(fd: int, out: int, offset: int) -> int | None:
    """Bytes copied from ``offset`` to ``out``'s position; None where the kernel cannot
    (another file system on an older kernel, or no such call)."""
    try:
        return os.copy_file_range(fd, out, _KERNEL_CHUNK, offset)
    except OSError as exc:
        if exc.errno in _NO_KERNEL_COPY:
            return None
        raise


def _block_copy(fd: int, out: int, offset: int) -> int:
    block = memoryview(os.pread(fd, _BLOCK, offset))
    written = 0
    while written < len(block):
        written += os.write(out, block[written:])
    return len(block)


def place(staged: Staged, destination: Path) -> Path:
    """Move a staged copy to its place in storage (kept if that content is already there)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists():
        staged.path.unlink(missing_ok=True)
    else:
        os.replace(staged.path, destination)
    return destination


def remove_taken(path: Path, staged: Staged) -> None:
    """Remove a taken file from the inbox, only if the name still is the file that was read
    (not something swapped in since); unlink never follows a link."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) == (staged.source.st_dev, staged.source.st_ino):
        path.unlink()


def storage_path(files_dir: Path, original_name: str, sha256: str) -> Path:
    """Where a file is kept: a directory per content hash, under a sanitised name, so no two
    files collide and no name can climb out of `files_dir`."""
    suffix = "".join(Path(original_name).suffixes[-1:]).lower()
    stem = safe_stem(Path(original_name).stem if suffix else original_name)
    return files_dir / sha256[:2] / sha256 / f"{stem}{safe_suffix(suffix)}"


def safe_suffix(suffix: str) -> str:
    cleaned = "".join(ch for ch in suffix if ch.isalnum() or ch == ".")
    return cleaned[:10] if cleaned.startswith(".") else ""


def copy_stored(source: Path, destination: Path) -> Path:
    """Copy one stored file to another storage place (both ours); atomic."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(destination.name + ".incoming")
    shutil.copyfile(source, temporary)
    os.replace(temporary, destination)
    return destination


def reject(path: Path, inbox: Path, reason: str) -> Path:
    """Move an entry that cannot be taken (never following it) to inbox/rejected/, with a note
    of why beside it. The note is UTF-8 text whatever bytes the name holds."""
    rejected = inbox / REJECTED_DIR
    rejected.mkdir(parents=True, exist_ok=True)
    target = rejected / path.name
    counter = 1
    while os.path.lexists(target):
        counter += 1
        target = rejected / f"{path.stem}.{counter}{path.suffix}"
    os.replace(path, target)
    note = target.with_name(target.name + ".reason.txt")
    with open(note, "w", encoding="utf-8", errors="backslashreplace") as handle:
        handle.write(reason + "\n")
    return target
