"""Sources: which source a file is a version of, and what a new version changes.

Pure: naming, and the limits a new version is held to. The database layer plans and applies
the version in SQL (db.sources).

Identity of a pair within a source is its normalised question: NFKC, case-folded, every run of
whitespace one space, trimmed (the same normalisation as the content hash), stored with the pair
as its question key (core.normalize.question_key).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MAX_SOURCE_KEY = 200
_EXTENSION = re.compile(r"\.(csv|tsv|txt|json|jsonl|ndjson|xlsx)$", re.IGNORECASE)
_SEP = r"[\s_.-]"
_DATE = r"\d{4}[-_.]?\d{2}(?:[-_.]?\d{2})?"
_TIME = r"(?:[T\s_-]?\d{2}[-_:.h]?\d{2}(?:[-_:.]?\d{2})?)?"
# What re-exports append to a name: dates (and times), copy markers, numbered copies, versions.
# A bare trailing number ("faq_2") is not among them: it may as well be a part of a split file.
_SUFFIXES = (
    re.compile(rf"{_SEP}*{_DATE}{_TIME}$"),
    re.compile(rf"{_SEP}*\(\d+\)$"),
    re.compile(rf"{_SEP}*-?\s*(?:copy|kopie|copie)(?:{_SEP}*\(?\d+\)?)?$", re.IGNORECASE),
    re.compile(rf"{_SEP}+v\d+$", re.IGNORECASE),
    re.compile(rf"{_SEP}+(?:final|latest)$", re.IGNORECASE),
)
_PREFIX_DATE = re.compile(rf"^\d{{4}}[-_.]?\d{{2}}[-_.]?\d{{2}}{_TIME}{_SEP}+")
_NOT_KEY = re.compile(r"[^a-z0-9]+")


def source_key_for(file_name: str) -> str:
    """The default source of a file, from its name: without directory and extension, without
    dates, times and copy or version markers at either end, lower-cased, with every run of other
    characters one `-`. "faq (2).csv", "FAQ_2026-11-30.csv", "faq-copy.csv", "faq_v3.xlsx" and
    "2026-11-30 faq.json" all give "faq". A name without letters once they are gone (a bare
    date) keeps them."""
    base = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    stem = _EXTENSION.sub("", base.strip())
    name = _PREFIX_DATE.sub("", stem)
    changed = True
    while changed:
        changed = False
        for suffix in _SUFFIXES:
            shorter = suffix.sub("", name)
            if shorter != name and shorter.strip(" _.-"):
                name, changed = shorter, True
    key = _slug(name)
    return key if re.search("[a-z]", key) else _slug(stem) or "file"


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return _NOT_KEY.sub("-", ascii_text.lower()).strip("-")[:MAX_SOURCE_KEY]


def clean_source_key(key: str) -> str:
    """A key an operator gave (`--source`, the Launchpad): trimmed, never empty."""
    key = " ".join(key.split())
    if not key:
        raise ValueError("a source key must not be empty")
    if len(key) > MAX_SOURCE_KEY:
        raise ValueError(f"a source key is at most {MAX_SOURCE_KEY} characters")
    return key


@dataclass(frozen=True)
class SyncPlan:
    """What a new version does to the live pairs of its source, counted (db.sources decides it
    in SQL, pair by pair; the rules are there)."""

    live_before: int
    kept: int = 0
    updated: int = 0
    added: int = 0
    revived: int = 0
    retired: int = 0
    repeated: int = 0

    @property
    def retire_share(self) -> float:
        return self.retired / self.live_before if self.live_before else 0.0

    def counts(self) -> dict[str, int]:
        return {
            "kept": self.kept,
            "updated": self.updated,
            "added": self.added + self.revived,
            "retired": self.retired,
            "repeated_questions": self.repeated,
        }

    def refusal(self, max_retire_share: float, allow_shrink: bool) -> str | None:
        """Why the version must not be applied without confirmation, or None."""
        if allow_shrink or self.retire_share <= max_retire_share:
            return None
        return (
            f"would retire {self.retired} of the {self.live_before} pairs the source holds "
            f"now ({self.retire_share:.0%}, above the limit of {max_retire_share:.0%}, "
            "HELIX_SYNC_MAX_RETIRE_SHARE): nothing was changed. If the file is complete, "
            "confirm with `import FILE --source KEY --allow-shrink` (or allow_shrink in the "
            "Launchpad config); `rollback` discards this version"
        )
