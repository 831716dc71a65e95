"""The upload store: one contract for the local directory, PostgreSQL and fsspec, then intake,
import, rollback and retention through it."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import fsspec
import pytest
import sqlalchemy as sa

from helix_pipelines.db import jobs, stored_files
from helix_pipelines.pipeline.file_store import (
    LocalStore,
    PostgresStore,
    open_store,
    readable_copy,
    remove_unneeded,
    store_holding,
)
from helix_pipelines.pipeline.importing import import_file
from helix_pipelines.pipeline.intake import intake_file

CSV = "question,answer\nWhat is Helix?,A knowledge base.\nWho runs it?,Ops.\n"


@pytest.fixture(params=["local", "postgres", "memory", "file-url"])
def store(request, engine, tmp_path):
    if request.param == "memory":
        root = f"memory://helix-{uuid.uuid4().hex}"
        yield open_store(root, engine)
        fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)
        return
    specs = {"local": str(tmp_path / "files"), "postgres": "postgres",
             "file-url": f"file://{tmp_path / 'bucket'}"}  # fmt: skip
    yield open_store(specs[request.param], engine)


def _staged(tmp_path: Path, data: bytes) -> tuple[Path, str]:
    path = tmp_path / "staged.bin"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_a_stored_copy_reads_back_byte_for_byte_and_goes_away(store, engine, tmp_path):
    # Over two chunks of the PostgreSQL store, and not a multiple of one.
    data = bytes(range(256)) * (2 * stored_files.CHUNK_BYTES // 256) + b"tail"
    staged, sha = _staged(tmp_path, data)
    location = store.location("FAQ export.csv", sha)
    assert location.endswith(".csv")

    store.put(staged, location, sha)

    assert store.exists(location)
    holder = store_holding(location, engine)
    assert type(holder) is type(store)
    with readable_copy(engine, location) as local:
        assert local.suffix == ".csv"  # the readers tell formats by extension
        assert local.read_bytes() == data
    if not isinstance(store, LocalStore):
        assert not local.exists()  # the spooled copy is cleaned up
    holder.remove(location)
    assert not store.exists(location)


def test_postgres_store_keeps_chunks_bounded(engine, tmp_path):
    data = b"x" * (3 * stored_files.CHUNK_BYTES + 5)
    staged, sha = _staged(tmp_path, data)
    store = PostgresStore(engine)
    location = store.location("big.csv", sha)
    store.put(staged, location, sha)
    store.put(staged, location, sha)  # kept as it is the second time
    with engine.connect() as conn:
        sizes = conn.execute(
            sa.text("SELECT octet_length(data) FROM stored_file_chunk WHERE location = :l "
                    "ORDER BY seq"), {"l": location},
        ).scalars().all()  # fmt: skip
    assert sizes == [stored_files.CHUNK_BYTES] * 3 + [5]


def test_import_reads_a_file_kept_only_in_the_database(engine, tmp_path, settings):
    dropped = tmp_path / "faq.csv"
    dropped.write_text(CSV)
    staging = tmp_path / "staging"
    job, created = intake_file(engine, dropped, files_dir=staging, max_file_bytes=10**6,
                               move=True, store=PostgresStore(engine))  # fmt: skip
    assert created and job.source_path.startswith("postgres:")
    assert not dropped.exists()
    assert [p for p in staging.rglob("*") if p.is_file()] == []  # nothing left on this host

    report = import_file(engine, job.id, run_id="run-1")

    assert (report.job.status, report.job.pairs_created) == ("completed", 2)


def test_rollback_and_retention_remove_copies_no_import_needs(engine, tmp_path):
    store = PostgresStore(engine)
    made = []
    for name in ("a.csv", "b.csv"):
        dropped = tmp_path / name
        dropped.write_text(CSV.replace("Helix", name))
        job, _ = intake_file(engine, dropped, files_dir=tmp_path / "staging",
                             max_file_bytes=10**6, move=True, store=store)  # fmt: skip
        made.append(import_file(engine, job.id, run_id=f"run-{name}").job)
    first, second = made

    # Completed imports keep their files while no retention is set.
    assert remove_unneeded(engine, None) == []
    jobs.rollback_job(engine, first.id)
    assert remove_unneeded(engine, None) == [first.source_path]
    assert not store.exists(first.source_path)
    assert store.exists(second.source_path)

    # A retention period: a file of an import that finished longer ago goes.
    assert remove_unneeded(engine, retention_days=1) == []
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE import_job SET finished_at = now() - interval '2 days' WHERE id = :i"),
            {"i": second.id},
        )
    assert remove_unneeded(engine, retention_days=1) == [second.source_path]
    assert not store.exists(second.source_path)


def test_a_drop_for_a_job_whose_copy_was_lost_restores_it_where_the_job_names(engine, tmp_path):
    first = tmp_path / "first" / "faq.csv"
    first.parent.mkdir()
    first.write_text(CSV)
    job, _ = intake_file(engine, first, files_dir=tmp_path / "files", max_file_bytes=10**6,
                         move=False)  # fmt: skip
    Path(job.source_path).unlink()  # a crash between registering the job and storing its copy

    # The same content again, after the deployment moved its store to PostgreSQL.
    again, created = intake_file(engine, first, files_dir=tmp_path / "files",
                                 max_file_bytes=10**6, move=False,
                                 store=PostgresStore(engine))  # fmt: skip

    assert (again.id, created) == (job.id, False)
    assert Path(job.source_path).read_text() == CSV
