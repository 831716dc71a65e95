"""Which column holds the question, the answer and the category."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from helix_pipelines.core.normalize import clean_text, printable_excerpt
from helix_pipelines.core.redact import redact

# Earlier aliases win when several columns match one role (see docs/parsing.md).
ROLE_ALIASES: dict[str, tuple[str, ...]] = {
    "question": ("question", "q", "query", "prompt", "instruction", "title"),
    "answer": ("answer", "a", "response", "reply", "completion", "body"),
    "category": ("category", "topic", "intent", "tag", "section"),
}
REQUIRED_ROLES = ("question", "answer")

SHOWN_NAME_CHARS = 40  # a header name in a message or the summary is cut to this
# A UTF-8 BOM that survived as a character, or as cp1252/latin-1 mojibake.
_BOM_LEFTOVERS = ("\ufeff", "\u00ef\u00bb\u00bf")


class HeaderProblem(Exception):
    """The header cannot serve: a required role has no column. The message says which."""


@dataclass
class ColumnPlan:
    indexes: dict[str, int]  # role -> column position
    columns: dict[str, str]  # role -> header name as written
    ignored: list[str]
    width: int  # number of header fields
    notes: list[str] = field(default_factory=list)
    # role -> other columns whose name is an alias of that role, best first: a record whose
    # chosen column is empty takes its text from the first of them that has some.
    fallbacks: dict[str, list[int]] = field(default_factory=dict)

    @property
    def question_index(self) -> int:
        return self.indexes["question"]

    @property
    def answer_index(self) -> int:
        return self.indexes["answer"]

    @property
    def category_index(self) -> int | None:
        return self.indexes.get("category")


def normalize_header(name: object) -> str:
    text = "" if name is None else str(name)
    text = text.strip()
    for leftover in _BOM_LEFTOVERS:
        if text.startswith(leftover):
            text = text[len(leftover) :].strip()
    return text.strip("\"'").strip().casefold()


def plan_columns(header: Sequence[object], mapping: Mapping[str, str] | None = None) -> ColumnPlan:
    """Pick a column per role. Raises HeaderProblem when question or answer has none."""
    names = ["" if name is None else str(name).strip() for name in header]
    keys = [normalize_header(name) for name in header]
    mapping = dict(mapping or {})
    unknown_roles = set(mapping) - set(ROLE_ALIASES)
    if unknown_roles:
        # Reported like a header problem: the mapping comes from the import's options, and the
        # job should fail with a clear message rather than a crash.
        raise HeaderProblem(
            f"column_mapping has unknown roles {sorted(unknown_roles)} "
            f"(expected {', '.join(ROLE_ALIASES)})"
        )

    indexes: dict[str, int] = {}
    notes: list[str] = []
    for role, wanted in mapping.items():
        position = _find_mapped(keys, wanted)
        if position is None:
            raise HeaderProblem(
                f"the mapped {role} column {wanted!r} is not in the header ({_listing(names)})"
            )
        indexes[role] = position
    for role, aliases in ROLE_ALIASES.items():
        if role not in indexes:
            _pick_by_alias(role, aliases, keys, names, set(indexes.values()), indexes, notes)

    missing = [role for role in REQUIRED_ROLES if role not in indexes]
    if missing:
        raise HeaderProblem(_missing_message(missing, names))
    used = set(indexes.values())
    return ColumnPlan(
        indexes=indexes,
        columns={role: names[position] for role, position in indexes.items()},
        ignored=[
            shown_name(name) for position, name in enumerate(names) if position not in used and name
        ],
        width=len(names),
        notes=notes,
        fallbacks=_fallbacks(keys, used),
    )


def _fallbacks(keys: list[str], used: set[int]) -> dict[str, list[int]]:
    found = {}
    for role in REQUIRED_ROLES:
        aliases = ROLE_ALIASES[role]
        candidates = sorted(
            (aliases.index(key), position)
            for position, key in enumerate(keys)
            if key in aliases and position not in used
        )
        if candidates:
            found[role] = [position for _, position in candidates]
    return found


def fill_empty(
    plan: ColumnPlan,
    question: str,
    answer: str,
    text_at: Callable[[int], str],
    counts: dict[str, int],
) -> tuple[str, str]:
    """Question and answer, each taken from the first fallback column with text when the
    chosen column is empty; ``counts`` counts the records per role that needed it."""
    if not clean_text(question):
        question = _first_text(plan.fallbacks.get("question", ()), text_at, counts, "question")
    if not clean_text(answer):
        answer = _first_text(plan.fallbacks.get("answer", ()), text_at, counts, "answer")
    return question, answer


def _first_text(
    positions: Sequence[int], text_at: Callable[[int], str], counts: dict[str, int], role: str
) -> str:
    for position in positions:
        text = text_at(position)
        if clean_text(text):
            counts[role] = counts.get(role, 0) + 1
            return text
    return ""


def looks_like_header(header: Sequence[object], mapping: Mapping[str, str] | None) -> bool:
    try:
        plan_columns(header, mapping)
    except HeaderProblem:
        return False
    return True


def _find_mapped(keys: list[str], wanted: str) -> int | None:
    target = normalize_header(wanted)
    return next((position for position, key in enumerate(keys) if key == target), None)


def _pick_by_alias(
    role: str,
    aliases: tuple[str, ...],
    keys: list[str],
    names: list[str],
    taken: set[int],
    indexes: dict[str, int],
    notes: list[str],
) -> None:
    candidates = sorted(
        (aliases.index(key), position)
        for position, key in enumerate(keys)
        if key in aliases and position not in taken
    )
    if not candidates:
        return
    chosen = candidates[0][1]
    indexes[role] = chosen
    if len(candidates) > 1:
        others = ", ".join(repr(shown_name(names[position])) for _, position in candidates[1:])
        use = f"{others} fill its empty records" if role in REQUIRED_ROLES else f"ignored {others}"
        notes.append(f"{len(candidates)} {role} columns: used {names[chosen]!r}, {use}")


def _missing_message(missing: list[str], names: list[str]) -> str:
    parts = []
    for role in missing:
        accepted = ", ".join(ROLE_ALIASES[role])
        parts.append(f"no {role} column (accepted names: {accepted})")
    return "; ".join(parts) + f"; found columns: {_listing(names)}"


def shown_name(name: str) -> str:
    """A header name as it may appear in a message, log or summary: an unrecognised "header"
    may be a line of data (a file of environment variables), so it is redacted, escaped and
    cut to SHOWN_NAME_CHARS."""
    shown = printable_excerpt(redact(name[: SHOWN_NAME_CHARS * 4]), SHOWN_NAME_CHARS)
    return shown + "..." if len(name) > SHOWN_NAME_CHARS else shown


def _listing(names: list[str]) -> str:
    shown = ", ".join(repr(shown_name(name)) for name in names[:20])
    if len(names) > 20:
        shown += f", ... ({len(names)} in all)"
    return shown or "none"
