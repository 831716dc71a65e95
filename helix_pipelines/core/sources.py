"""Sources: which source a file is a version of, and what a new version changes.

Pure: the database layer loads the rows, this module decides, the database layer applies.

Identity of a pair within a source is its normalised question: NFKC, case-folded, every run of
whitespace one space, trimmed (the same normalisation as the content hash, see core.normalize).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from helix_pipelines.core.normalize import hash_key

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


def question_key(question: str) -> bytes:
    return hash_key(question)


@dataclass(frozen=True)
class Incoming:
    """A row of the new version that became (or matched) a pair."""

    source_row: int
    pair_id: int  # the pair this row inserted (staged) or the existing pair it duplicated
    question: str
    content_hash: str
    staged: bool  # True: new content, inserted by this version and not yet visible
    retired_in_source: bool = False  # a duplicate of a pair this source retired earlier


@dataclass(frozen=True)
class LivePair:
    pair_id: int
    question: str
    content_hash: str


@dataclass
class SyncPlan:
    live_before: int
    kept: list[int] = field(default_factory=list)
    updated: list[tuple[int, int]] = field(default_factory=list)  # (staged pair, live pair)
    added: list[int] = field(default_factory=list)
    revived: list[int] = field(default_factory=list)
    retired: list[int] = field(default_factory=list)
    repeated: list[tuple[Incoming, int]] = field(default_factory=list)  # (row, first row)

    @property
    def retire_share(self) -> float:
        return len(self.retired) / self.live_before if self.live_before else 0.0

    def counts(self) -> dict[str, int]:
        return {
            "kept": len(self.kept),
            "updated": len(self.updated),
            "added": len(self.added) + len(self.revived),
            "retired": len(self.retired),
            "repeated_questions": len(self.repeated),
        }

    def refusal(self, max_retire_share: float, allow_shrink: bool) -> str | None:
        """Why the version must not be applied without confirmation, or None."""
        if allow_shrink or self.retire_share <= max_retire_share:
            return None
        return (
            f"would retire {len(self.retired)} of the {self.live_before} pairs the source holds "
            f"now ({self.retire_share:.0%}, above the limit of {max_retire_share:.0%}, "
            "HELIX_SYNC_MAX_RETIRE_SHARE): nothing was changed. If the file is complete, "
            "confirm with `import FILE --source KEY --allow-shrink` (or allow_shrink in the "
            "Launchpad config); `rollback` discards this version"
        )


def plan_sync(incoming: list[Incoming], live: list[LivePair]) -> SyncPlan:
    """What the new version (`incoming`) does to the source's live pairs (`live`):
    - a row whose question matches a live pair with the same content keeps it (same id);
    - a new row whose question matches a live pair updates that pair in place;
    - a row matching a pair this source retired earlier brings it back;
    - other new rows are added; other duplicates (a pair another import holds) are kept;
    - a second row with the same question and another answer is repeated (a row error), the
      first one counts; the same pair again is a duplicate, as in any import (or kept, under
      keep_duplicates);
    - live pairs no row matched are retired."""
    plan = SyncPlan(live_before=len(live))
    by_key: dict[bytes, LivePair] = {}
    for pair in sorted(live, key=lambda p: p.pair_id):
        by_key.setdefault(question_key(pair.question), pair)
    first: dict[bytes, Incoming] = {}  # the first row of each question
    matched: set[int] = set()
    for row in sorted(incoming, key=lambda r: r.source_row):
        key = question_key(row.question)
        if key in first:
            _again(plan, row, first[key])
            continue
        current = by_key.get(key)
        pair = current.pair_id if current is not None else row.pair_id
        first[key] = row
        if current is not None and current.content_hash == row.content_hash:
            plan.kept.append(pair)
            matched.add(pair)
        elif current is not None and row.staged:
            plan.updated.append((row.pair_id, pair))
            matched.add(pair)
        elif row.staged:
            plan.added.append(pair)
        elif row.retired_in_source:
            plan.revived.append(pair)
        else:
            plan.kept.append(pair)
    plan.retired = [p.pair_id for p in live if p.pair_id not in matched]
    return plan


def _again(plan: SyncPlan, row: Incoming, earlier: Incoming) -> None:
    """A row whose question an earlier row of the file had. The same pair again is left as the
    import recorded it: skipped as a duplicate, or kept when the operator asked for that."""
    if row.content_hash != earlier.content_hash:
        plan.repeated.append((row, earlier.source_row))
