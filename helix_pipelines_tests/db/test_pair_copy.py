"""The binary COPY stream built from a batch's columns stores every value exactly, and the CSV
fast path hands its pairs over as columns, not one Python object per pair."""

from __future__ import annotations

import hashlib
import uuid

import numpy as np

from helix_pipelines.core.normalize import question_key
from helix_pipelines.core.parsing import Pair, open_source
from helix_pipelines.core.parsing.pair_block import PairBlock, question_keys
from helix_pipelines.db import jobs, pair_copy
from helix_pipelines.db.batches import Batch, commit_batch
from helix_pipelines_tests.pipeline.import_checks import empty_tables

TRICKY = [
    ("Tab\there, backslash \\N and \\\\", "Line one\nline two\r\nthree", "Billing"),
    ('Quote " and comma , and semicolon ;', "Ünïcödé ✓ €, 日本語, emoji 🙂", None),
    ("x" * 5000, "Ends with a backslash \\", ""),
    ("Looks like NULL", "\\N", "\\N"),
]


def digest(number: int) -> str:
    return hashlib.sha256(str(number).encode()).hexdigest()


def stored(engine, job_id) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(row)
            for row in conn.exec_driver_sql(
                "SELECT source_row, question, answer, category, content_hash FROM qa_pair "
                "WHERE import_job_id = %s ORDER BY source_row",
                (job_id,),
            )
        ]


def test_every_value_round_trips_and_an_empty_category_is_null(engine, monkeypatch):
    # The stream goes out in parts of 3 rows: the second part starts inside the buffers too.
    monkeypatch.setattr(pair_copy, "ROWS_PER_WRITE", 3)
    job, _ = jobs.register_job(engine, source_name="t.csv", source_path="/t.csv", sha256="0" * 64)
    pairs = [Pair(10 + n, q, a, c or None, digest(n)) for n, (q, a, c) in enumerate(TRICKY)]
    block = PairBlock.of(pairs)
    # Sliced and taken blocks start inside their buffers: offsets must be honoured.
    block = PairBlock.joined([block[:1], block[1:].take(np.array([0, 1, 2]))])
    with engine.begin() as conn:
        pair_copy.copy_pairs(conn.connection.driver_connection.cursor(), job.id, block)
    assert stored(engine, job.id) == [tuple(p) for p in pairs]
    with engine.connect() as conn:
        keys = conn.exec_driver_sql(
            "SELECT question_key FROM qa_pair WHERE import_job_id = %s ORDER BY source_row",
            (job.id,),
        ).scalars()
        assert [key.bytes for key in keys] == [question_key(p.question) for p in pairs]
    empty_tables(engine)


def test_a_committed_batch_equals_its_pairs_whatever_shape_they_came_in(engine):
    job, _ = jobs.register_job(engine, source_name="b.csv", source_path="/b.csv", sha256="1" * 64)
    run_id = "run-" + uuid.uuid4().hex
    jobs.start_job(engine, job.id, run_id, stale_after_s=300)
    pairs = [Pair(n, f"Q{n}?", f"A{n}.", None, digest(n)) for n in range(1, 2001)]
    # A duplicate of row 1 inside the batch: the first stays, the second is skipped.
    pairs.append(Pair(2001, "Q1?", "A1.", None, digest(1)))
    batch = Batch(PairBlock.of(pairs), [], 1, 2001)
    outcome = commit_batch(
        engine, job.id, run_id, batch, keep_duplicates=False, statement_timeout_s=60
    )
    assert (outcome.pairs_created, outcome.duplicates_skipped) == (2000, 1)
    assert stored(engine, job.id) == [tuple(p) for p in pairs[:2000]]
    empty_tables(engine)


def test_the_fast_path_keeps_plain_pairs_as_columns(tmp_path):
    path = tmp_path / "plain.csv"
    rows = "\n".join(f"Question {n}?,Answer {n}.,Cat" for n in range(3000))
    path.write_text("question,answer,category\n" + rows + "\n")
    with open_source(path) as source:
        chunks = list(source.chunks())
    items = [item for chunk in chunks for item in chunk.items]
    assert items and all(type(item) is PairBlock for item in items)
    assert sum(len(item) for item in items) == 3000
    # ...and turn into the same Pairs as before when asked.
    assert chunks[0].pairs[0] == Pair(1, "Question 0?", "Answer 0.", "Cat", chunks[0].pairs[0][4])
    # The question keys came out of the same hashing pass as the content hashes.
    block = items[0]
    assert block.question_keys.tobytes() == question_keys(block.questions.to_pylist()).tobytes()
