"""The source rules alone: the default key from a file name, and when a version waits for
confirmation (what it does, pair by pair, is planned in SQL: db/test_sync_plan.py)."""

from __future__ import annotations

import pytest

from helix_pipelines.core.sources import SyncPlan, clean_source_key, source_key_for


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


def test_retiring_more_than_the_share_waits_for_confirmation():
    plan = SyncPlan(live_before=10, kept=1, retired=9)
    assert plan.retire_share == pytest.approx(0.9)
    assert "would retire 9 of the 10 pairs" in plan.refusal(0.5, allow_shrink=False)
    assert plan.refusal(0.5, allow_shrink=True) is None
    assert plan.refusal(0.95, allow_shrink=False) is None
    assert SyncPlan(live_before=0, added=1).refusal(0.0, allow_shrink=False) is None
    assert SyncPlan(live_before=3, added=1, revived=2).counts()["added"] == 3
