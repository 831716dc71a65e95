"""Shared logic of the formats whose records are JSON objects (JSON array and JSONL)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from helix_pipelines.core.parsing.base import (
    MALFORMED_ROW,
    Pair,
    ParseOptions,
    RowChecker,
    RowError,
    raw_excerpt,
)
from helix_pipelines.core.parsing.headers import (
    ColumnPlan,
    fill_empty,
    normalize_header,
    plan_columns,
)
from helix_pipelines.core.parsing.values import NestedValue, to_text

PLAN_SAMPLE_RECORDS = 100  # records whose keys decide the columns


def keys_of(records: Iterable[object]) -> list[str]:
    """Union of the keys of the object records, in order of first appearance."""
    seen: dict[str, None] = {}
    for record in records:
        if isinstance(record, dict):
            seen.update(dict.fromkeys(str(key) for key in record))
    return list(seen)


def plan_from_keys(keys: list[str], options: ParseOptions) -> ColumnPlan:
    return plan_columns(keys, options.column_mapping)


class RecordReader:
    """Turns one decoded JSON value into a Pair, a RowError, or a blank-record marker."""

    def __init__(self, plan: ColumnPlan, keys: list[str], checker: RowChecker) -> None:
        self.checker = checker
        self.plan = plan
        self.keys = keys
        self.filled: dict[str, int] = {}  # the source points this at its summary's counts
        self.roles = {
            role: (keys[position], normalize_header(keys[position]))
            for role, position in plan.indexes.items()
        }

    def read(self, source_row: int, record: object) -> Pair | RowError | int:
        if not isinstance(record, dict):
            kind = type(record).__name__ if record is not None else "null"
            return self.malformed(
                source_row, f"the record is {_json_kind(kind)}, not an object", record
            )
        try:
            texts = {role: to_text(self._lookup(record, role)) for role in self.roles}
        except NestedValue as exc:
            return self.malformed(source_row, f"{exc.args[0]} where text was expected", record)
        if self.plan.fallbacks and not (texts["question"].strip() and texts["answer"].strip()):
            texts["question"], texts["answer"] = fill_empty(
                self.plan,
                texts["question"],
                texts["answer"],
                lambda position: self._text_at(record, position),
                self.filled,
            )
        if not texts["question"].strip() and _blank(record):
            return source_row
        return self.checker.check(
            source_row,
            texts["question"],
            texts["answer"],
            texts.get("category"),
            lambda: dump(record),
        )

    def malformed(self, source_row: int, message: str, raw: object) -> RowError:
        text = raw if isinstance(raw, str) else dump(raw)
        return RowError(source_row, MALFORMED_ROW, message, raw_excerpt(text))

    def _text_at(self, record: Mapping, position: int) -> str:
        key = self.keys[position]
        try:
            return to_text(self._find(record, key, normalize_header(key)))
        except NestedValue:
            return ""

    def _lookup(self, record: Mapping, role: str) -> object:
        return self._find(record, *self.roles[role])

    def _find(self, record: Mapping, key: str, normalized: str) -> object:
        if key in record:
            return record[key]
        for other_key, value in record.items():  # same name, other spelling ("Question")
            if normalize_header(other_key) == normalized:
                return value
        return None


def _blank(record: Mapping) -> bool:
    return all(
        value is None or (isinstance(value, str) and not value.strip()) for value in record.values()
    )


def _json_kind(python_kind: str) -> str:
    return {
        "list": "an array",
        "str": "a string",
        "int": "a number",
        "float": "a number",
        "Decimal": "a number",
        "bool": "a boolean",
        "null": "null",
    }.get(python_kind, python_kind)


def dump(value: object) -> str:
    """A decoded record as JSON text, for excerpts."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)
