"""Generated question/answer files for tests and benchmarks: seeded, realistic field sizes, a
known share of bad rows (no question, no answer) and of duplicates (a pair repeated later)."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

_VOCABULARY = """
account password reset invoice refund order shipping delivery address payment card subscription
cancel upgrade plan login email verify support ticket warranty return exchange tracking number
store hours contact phone chat agent billing charge discount coupon gift balance profile settings
privacy data export delete newsletter app mobile
"""
WORDS = tuple(_VOCABULARY.split())
CATEGORIES = ("ACCOUNT", "ORDER", "REFUND", "SHIPPING", "PAYMENT", "INVOICE", "CONTACT", "")


@dataclass(frozen=True)
class GeneratedFile:
    path: Path
    rows: int
    bad_rows: int
    duplicate_rows: int


def write_qa_csv(
    path: Path,
    rows: int,
    *,
    seed: int = 0,
    bad_every: int = 97,
    duplicate_every: int = 53,
) -> GeneratedFile:
    """A CSV of `rows` data rows (question, answer, category). Every `bad_every`-th row lacks
    its question or its answer; every `duplicate_every`-th repeats an earlier pair."""
    rng = random.Random(seed)
    bad = duplicates = 0
    earlier: list[tuple[str, str, str]] = []
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("question", "answer", "category"))
        for number in range(1, rows + 1):
            if number % bad_every == 0:
                writer.writerow(_bad_row(rng, number))
                bad += 1
            elif number % duplicate_every == 0 and earlier:
                writer.writerow(rng.choice(earlier))
                duplicates += 1
            else:
                row = _good_row(rng, number)
                writer.writerow(row)
                if len(earlier) < 1000:
                    earlier.append(row)
    return GeneratedFile(path, rows, bad, duplicates)


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))


def _good_row(rng: random.Random, number: int) -> tuple[str, str, str]:
    question = f"How do I {_sentence(rng, 4, 14)} (case {number})?"
    paragraphs = [_sentence(rng, 15, 60).capitalize() + "." for _ in range(rng.randint(1, 4))]
    return question, "\n".join(paragraphs), rng.choice(CATEGORIES)


def _bad_row(rng: random.Random, number: int) -> tuple[str, str, str]:
    question, answer, category = _good_row(rng, number)
    return ("", answer, category) if number % 2 else (question, "  ", category)
