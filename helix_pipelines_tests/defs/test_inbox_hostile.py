"""The inbox under hostile drops: odd byte names, links, FIFOs and swaps never block the good
files and never make the sensor read anything outside the inbox."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helix_pipelines.db import jobs
from helix_pipelines.pipeline.inbox import CannotTake
from helix_pipelines.pipeline.intake import intake_file
from helix_pipelines_tests.defs import test_sensors as sensor_tests
from helix_pipelines_tests.defs.test_sensors import CSV

# The sensor tests' fixtures: an ephemeral instance, an inbox under a temporary home, and
# `sensor`, whose ticks carry the cursor like the daemon.
instance = sensor_tests.instance
home = sensor_tests.home
inbox = sensor_tests.inbox
resources = sensor_tests.resources
sensor = sensor_tests.sensor

SECRET = "question,answer\nOUTSIDE_SECRET?,never read\n"


def all_jobs(engine) -> list[jobs.Job]:
    return jobs.list_jobs(engine, limit=10_000)


@pytest.fixture
def outside(tmp_path) -> Path:
    path = tmp_path / "elsewhere" / "secret.csv"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


def stored_texts(home: Path) -> list[str]:
    files = home / "files"
    return [p.read_text(errors="replace") for p in files.rglob("*") if p.is_file()]


def rejected_reason(inbox: Path, name: str) -> str:
    return (inbox / "rejected" / f"{name}.reason.txt").read_text()


def test_a_non_utf8_name_is_taken_under_a_safe_display_name(engine, sensor, inbox):
    os.close(os.open(os.fsencode(inbox) + b"/caf\xe9 \xff.csv", os.O_CREAT | os.O_WRONLY))
    Path(os.fsdecode(os.fsencode(inbox) + b"/caf\xe9 \xff.csv")).write_text(CSV)
    [request] = sensor.two_ticks().run_requests
    [job] = all_jobs(engine)
    assert job.source_name == "caf\\xe9 \\xff.csv"
    assert request.partition_key == job.partition_key
    assert os.listdir(inbox) == []


def test_a_non_utf8_name_that_cannot_be_taken_gets_a_readable_reason(engine, sensor, inbox):
    bad = os.fsencode(inbox) + b"/empty\xfe.csv"
    os.close(os.open(bad, os.O_CREAT | os.O_WRONLY))
    (inbox / "good.csv").write_text(CSV)
    result = sensor.two_ticks()
    assert [j.source_name for j in all_jobs(engine)] == ["good.csv"]
    assert len(result.run_requests) == 1
    notes = list((inbox / "rejected").glob("*.reason.txt"))
    assert [n.read_text() for n in notes] == ["empty\\xfe.csv: the file is empty\n"]


def test_a_symlink_to_a_file_outside_is_rejected_unfollowed(engine, sensor, inbox, home, outside):
    (inbox / "link.csv").symlink_to(outside)
    (inbox / "good.csv").write_text(CSV)
    result = sensor.two_ticks()
    assert [j.source_name for j in all_jobs(engine)] == ["good.csv"]
    assert len(result.run_requests) == 1
    assert (inbox / "rejected" / "link.csv").is_symlink()
    assert "symbolic link" in rejected_reason(inbox, "link.csv")
    assert not any("OUTSIDE_SECRET" in text for text in stored_texts(home))
    assert outside.read_text() == SECRET


def test_a_file_swapped_for_a_symlink_between_ticks_is_not_followed(
    engine, sensor, inbox, home, outside
):
    dropped = inbox / "faq.csv"
    dropped.write_text(CSV)
    assert not sensor.tick().run_requests
    dropped.unlink()
    dropped.symlink_to(outside)
    os.utime(dropped, follow_symlinks=False)
    assert not sensor.tick().run_requests
    assert not all_jobs(engine)
    assert (inbox / "rejected" / "faq.csv").is_symlink()
    assert not any("OUTSIDE_SECRET" in text for text in stored_texts(home))


def test_a_symlink_swapped_in_after_the_look_is_refused_at_open(engine, inbox, home, outside):
    link = inbox / "late.csv"
    link.symlink_to(outside)
    with pytest.raises(CannotTake, match="symbolic link"):
        intake_file(engine, link, files_dir=home / "files", max_file_bytes=10**6, move=True)
    assert not all_jobs(engine)
    assert link.is_symlink()


def test_a_fifo_is_rejected_without_being_opened(engine, sensor, inbox):
    os.mkfifo(inbox / "pipe.csv")
    (inbox / "good.csv").write_text(CSV)
    result = sensor.two_ticks()
    assert [j.source_name for j in all_jobs(engine)] == ["good.csv"]
    assert len(result.run_requests) == 1
    assert "FIFO" in rejected_reason(inbox, "pipe.csv")


def test_a_directory_is_moved_aside_and_later_files_still_flow(engine, sensor, inbox):
    (inbox / "folder.csv").mkdir()
    sensor.two_ticks()
    assert "directory" in rejected_reason(inbox, "folder.csv")
    (inbox / "later.csv").write_text(CSV)
    assert len(sensor.two_ticks().run_requests) == 1
    assert [j.source_name for j in all_jobs(engine)] == ["later.csv"]


def test_the_cli_copies_a_named_regular_file_and_leaves_it(engine, tmp_path):
    source = tmp_path / "faq.csv"
    source.write_text(CSV)
    job, created = intake_file(
        engine, source, files_dir=tmp_path / "files", max_file_bytes=10**6, move=False
    )
    assert created and Path(job.source_path).read_text() == CSV
    assert source.read_text() == CSV
    assert not list((tmp_path / "files" / ".incoming").iterdir())
