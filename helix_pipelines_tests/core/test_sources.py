"""The source rules alone: the default key from a file name, and what a new version does."""

from __future__ import annotations

import pytest

from helix_pipelines.core.normalize import content_hash
from helix_pipelines.core.sources import (
    Incoming,
    LivePair,
    clean_source_key,
    plan_sync,
    source_key_for,
)


@pytest.mark.parametrize(
    "name",
    [
        "faq.csv",
        "faq (2).csv",
        "faq_2026-11-30.csv",
        "faq-copy.csv",
        "FAQ - Copy (3).csv",
        "faq_v3.xlsx",
        "2026-11-30 faq.json",
        "faq 20261130_1030.jsonl",
        "faq_final.csv",
        "exports/faq.csv",
    ],
)
def test_reexports_of_one_file_name_one_source(name):
    assert source_key_for(name) == "faq"


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("faq_part2.csv", "faq-part2"),  # a part of a split file is its own source
        ("faq_2.csv", "faq-2"),
        ("Support FAQ.csv", "support-faq"),
        ("Häufige Fragen.csv", "haufige-fragen"),
        ("2026-11-30.csv", "2026-11-30"),  # nothing but a date: kept
        ("kb-2026.csv", "kb-2026"),
    ],
)
def test_other_names_keep_what_tells_them_apart(name, key):
    assert source_key_for(name) == key


def test_an_operator_key_is_trimmed_and_never_empty():
    assert clean_source_key("  help  centre ") == "help centre"
    with pytest.raises(ValueError):
        clean_source_key("   ")


def live(pair_id: int, q: str, a: str) -> LivePair:
    return LivePair(pair_id, q, content_hash(q, a))


def new_row(row: int, pair_id: int, q: str, a: str) -> Incoming:
    return Incoming(row, pair_id, q, content_hash(q, a), staged=True)


def same_row(row: int, pair_id: int, q: str, a: str, retired: bool = False) -> Incoming:
    return Incoming(row, pair_id, q, content_hash(q, a), staged=False, retired_in_source=retired)


def test_a_version_keeps_updates_adds_revives_and_retires():
    current = [live(1, "Reset password?", "Use the link."), live(2, "Refund?", "14 days."),
               live(3, "Invoice?", "In Billing.")]  # fmt: skip
    incoming = [
        same_row(1, 1, "Reset password?", "Use the link."),  # unchanged
        new_row(2, 10, "  REFUND? ", "30 days."),  # same normalised question, new answer
        new_row(3, 11, "Shipping?", "2 days."),  # new
        same_row(4, 7, "Gift cards?", "Yes.", retired=True),  # retired earlier, back again
    ]
    plan = plan_sync(incoming, current)
    assert plan.kept == [1]
    assert plan.updated == [(10, 2)]
    assert plan.added == [11] and plan.revived == [7]
    assert plan.retired == [3]
    assert plan.counts() == {"kept": 1, "updated": 1, "added": 2, "retired": 1,
                             "repeated_questions": 0}  # fmt: skip


def test_a_question_twice_in_a_file_is_repeated_and_the_first_row_counts():
    plan = plan_sync(
        [new_row(5, 20, "Refund?", "30 days."), new_row(2, 21, "refund?", "Never.")],
        [live(1, "Refund?", "14 days.")],
    )
    assert plan.updated == [(21, 1)]
    assert [(row.source_row, first) for row, first in plan.repeated] == [(5, 2)]


def test_retiring_more_than_the_share_waits_for_confirmation():
    current = [live(i, f"Q{i}", "A") for i in range(10)]
    plan = plan_sync([same_row(1, 0, "Q0", "A")], current)
    assert plan.retire_share == pytest.approx(0.9)
    assert "would retire 9 of the 10 pairs" in plan.refusal(0.5, allow_shrink=False)
    assert plan.refusal(0.5, allow_shrink=True) is None
    assert plan.refusal(0.95, allow_shrink=False) is None
    assert plan_sync([new_row(1, 5, "Q", "A")], []).refusal(0.0, allow_shrink=False) is None


def test_the_same_pair_twice_in_a_file_is_a_duplicate_not_an_error():
    plan = plan_sync(
        [same_row(1, 1, "Refund?", "14 days."), same_row(2, 1, "Refund?", "14 days."),
         new_row(3, 20, "Invoice?", "In Billing."), new_row(4, 21, "invoice?", "In Billing.")],
        [live(1, "Refund?", "14 days.")],
    )  # fmt: skip
    assert plan.repeated == [] and plan.kept == [1] and plan.added == [20]
