"""Taking a file in: the staged copy holds exactly the bytes its hash names, copied by the
kernel where it can and block by block where it cannot."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from helix_pipelines.pipeline import inbox
from helix_pipelines.pipeline.inbox import CannotTake, stage


def staged_files(files_dir: Path) -> list[Path]:
    return list((files_dir / inbox.STAGING_DIR).iterdir())


def test_the_staged_copy_is_the_file_and_its_hash_names_it(tmp_path):
    original = tmp_path / "big.csv"
    original.write_bytes(os.urandom(3 << 20) + b"question,answer\n")
    fd = os.open(original, os.O_RDONLY)
    try:
        staged = stage(fd, os.fstat(fd), tmp_path / "files", max_bytes=1 << 30)
    finally:
        os.close(fd)
    assert staged.path.read_bytes() == original.read_bytes()
    assert staged.sha256 == hashlib.sha256(original.read_bytes()).hexdigest()
    assert staged.size == original.stat().st_size


def test_a_file_the_kernel_cannot_copy_is_copied_block_by_block(tmp_path):
    """copy_file_range refuses a file of another file system (/proc here, EXDEV): the same
    bytes arrive through reads and writes."""
    source = Path("/proc/self/mountinfo")
    if not source.exists():
        pytest.skip("no /proc here")
    fd = os.open(source, os.O_RDONLY)
    target = tmp_path / "copy"
    out = os.open(target, os.O_WRONLY | os.O_CREAT)
    try:
        size = inbox._copy(fd, out, max_bytes=1 << 30)
        expected = os.pread(fd, 1 << 24, 0)
    finally:
        os.close(out)
        os.close(fd)
    assert size == len(expected) > 0
    assert target.read_bytes() == expected


def test_a_file_that_grew_over_the_limit_is_refused_and_nothing_is_left(tmp_path):
    original = tmp_path / "growing.csv"
    original.write_bytes(b"question,answer\n" * 100)
    fd = os.open(original, os.O_RDONLY)
    try:
        looked = os.fstat(fd)  # the size when the file was looked at, under the limit
        with original.open("ab") as more:
            more.write(b"question,answer\n" * 1000)
        with pytest.raises(CannotTake, match="grew over the limit of 4,000 bytes"):
            stage(fd, looked, tmp_path / "files", max_bytes=4_000)
    finally:
        os.close(fd)
    assert staged_files(tmp_path / "files") == []
