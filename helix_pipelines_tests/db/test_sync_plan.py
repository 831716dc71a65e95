"""What a new source version does to the source's live pairs, planned in SQL (db.sources)
against the real database: the rows a plan reads are staged by hand here."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from helix_pipelines.core.normalize import content_hash, question_key
from helix_pipelines.db.sources import create_staging, plan_sync


def live(pair_id: int, q: str, a: str) -> dict:
    return {"pair_id": pair_id, "key": _key(q), "content_hash": content_hash(q, a)}


def new_row(row: int, pair_id: int, q: str, a: str) -> dict:
    return _incoming(row, pair_id, q, a, staged=True)


def same_row(row: int, pair_id: int, q: str, a: str, retired: bool = False) -> dict:
    return _incoming(row, pair_id, q, a, staged=False, retired_in_source=retired)


def _incoming(row, pair_id, q, a, staged, retired_in_source=False) -> dict:
    return {"source_row": row, "pair_id": pair_id, "key": _key(q),
            "content_hash": content_hash(q, a), "staged": staged,
            "retired_in_source": retired_in_source}  # fmt: skip


def _key(question: str) -> uuid.UUID:
    return uuid.UUID(bytes=question_key(question))


def plan(engine, incoming: list[dict], current: list[dict]):
    """(counts, the changes that need work: {change: [pair_id, or (staged_id, pair_id) for
    an update, or (source_row, first_row) for a repeated question]})."""
    with engine.begin() as conn:
        create_staging(conn)
        if incoming:
            conn.execute(
                sa.text("INSERT INTO sync_in VALUES (:source_row, :pair_id, :key, "
                        ":content_hash, :staged, :retired_in_source)"),
                incoming,
            )  # fmt: skip
        if current:
            conn.execute(
                sa.text("INSERT INTO sync_live VALUES (:pair_id, :key, :content_hash)"), current
            )
        counts = plan_sync(conn)
        rows = conn.execute(
            sa.text("SELECT * FROM sync_plan ORDER BY change, source_row, pair_id")
        ).all()
    changes: dict[str, list] = {}
    for r in rows:
        value = {
            "updated": (r.staged_id, r.pair_id),
            "repeated": (r.source_row, r.first_row),
        }.get(r.change, r.pair_id)
        changes.setdefault(r.change, []).append(value)
    return counts, changes


def test_a_version_keeps_updates_adds_revives_and_retires(engine):
    current = [live(1, "Reset password?", "Use the link."), live(2, "Refund?", "14 days."),
               live(3, "Invoice?", "In Billing.")]  # fmt: skip
    incoming = [
        same_row(1, 1, "Reset password?", "Use the link."),  # unchanged
        new_row(2, 10, "  REFUND? ", "30 days."),  # same normalised question, new answer
        new_row(3, 11, "Shipping?", "2 days."),  # new
        same_row(4, 7, "Gift cards?", "Yes.", retired=True),  # retired earlier, back again
    ]
    counts, changes = plan(engine, incoming, current)
    assert changes == {"updated": [(10, 2)], "revived": [7], "retired": [3]}
    assert (counts.kept, counts.added, counts.revived) == (1, 1, 1)
    assert counts.counts() == {"kept": 1, "updated": 1, "added": 2, "retired": 1,
                               "repeated_questions": 0}  # fmt: skip
    assert counts.live_before == 3 and counts.retire_share == 1 / 3


def test_a_question_twice_in_a_file_is_repeated_and_the_first_row_counts(engine):
    counts, changes = plan(
        engine,
        [new_row(5, 20, "Refund?", "30 days."), new_row(2, 21, "refund?", "Never.")],
        [live(1, "Refund?", "14 days.")],
    )
    assert changes == {"updated": [(21, 1)], "repeated": [(5, 2)]}
    assert counts.repeated == 1


def test_the_same_pair_twice_in_a_file_is_a_duplicate_not_an_error(engine):
    counts, changes = plan(
        engine,
        [same_row(1, 1, "Refund?", "14 days."), same_row(2, 1, "Refund?", "14 days."),
         new_row(3, 20, "Invoice?", "In Billing."), new_row(4, 21, "invoice?", "In Billing.")],
        [live(1, "Refund?", "14 days.")],
    )  # fmt: skip
    assert changes == {}
    assert (counts.kept, counts.added, counts.repeated) == (1, 1, 0)


def test_an_earlier_answer_brought_back_revives_its_pair_and_retires_the_later_one(engine):
    # v1 said "14 days.", a later version "30 days." (another pair, live now); this version
    # says "14 days." again: the old pair comes back and the live one goes.
    counts, changes = plan(
        engine,
        [same_row(1, 7, "Refund?", "14 days.", retired=True)],
        [live(9, "Refund?", "30 days.")],
    )
    assert changes == {"revived": [7], "retired": [9]}


def test_questions_stored_without_a_key_are_keyed_during_the_swap(engine):
    """Pairs from before qa_pair had question keys, or written by other tools."""
    from helix_pipelines.db import jobs

    job, _ = jobs.register_job(engine, source_name="k.csv", source_path="/k.csv", sha256="2" * 64)
    with engine.begin() as conn:
        ids = conn.execute(
            sa.text(
                "INSERT INTO qa_pair (import_job_id, source_row, question, answer, content_hash) "
                "VALUES (:j, 1, 'Refund?', '14 days.', :h1), (:j, 2, 'Invoice?', 'Billing.', :h2) "
                "RETURNING id"
            ),
            {"j": job.id, "h1": content_hash("Refund?", "14 days."),
             "h2": content_hash("Invoice?", "Billing.")},
        ).scalars().all()  # fmt: skip
    incoming = [new_row(1, 100, "REFUND?", "30 days.")]
    current = [live(ids[0], "Refund?", "14 days.") | {"key": None},
               live(ids[1], "Invoice?", "Billing.") | {"key": None}]  # fmt: skip
    _, changes = plan(engine, incoming, current)
    assert changes == {"updated": [(100, ids[0])], "retired": [ids[1]]}
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM import_job WHERE id = :j"), {"j": job.id})
