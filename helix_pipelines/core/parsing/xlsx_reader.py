"""Excel .xlsx workbooks, read with openpyxl in read-only (streaming) mode.

The workbook is opened once per source (header search and rows share it) and its shared
strings are kept on disk (xlsx_strings.py), so memory stays flat whatever the workbook's size.

``data_only=True`` returns the value Excel cached for a formula; formulas are never evaluated
and external links are not loaded. A formula without a cached value (as openpyxl itself writes
them) reads as empty.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from xml.etree.ElementTree import ParseError

from openpyxl.utils.exceptions import InvalidFileException

from helix_pipelines.core.parsing.base import (
    Pair,
    ParseOptions,
    ParseSummary,
    RowError,
    SourceFile,
)
from helix_pipelines.core.parsing.detect import ZIP_ERRORS
from helix_pipelines.core.parsing.headers import (
    ColumnPlan,
    HeaderProblem,
    fill_empty,
    plan_columns,
)
from helix_pipelines.core.parsing.values import to_text
from helix_pipelines.core.parsing.xlsx_strings import SharedStringsTooMany, load_workbook

HEADER_SEARCH_ROWS = 10  # a title row or two above the header is common in spreadsheets
_BROKEN_WORKBOOK = (
    *ZIP_ERRORS,
    zlib.error,
    ParseError,
    InvalidFileException,
    KeyError,
    IndexError,
    TypeError,
)


class WorkbookSource(SourceFile):
    def __init__(self, path: Path, display_name: str, options: ParseOptions) -> None:
        super().__init__(path, display_name, options)
        self._workbook = None
        self._strings = None
        try:
            self.sheet_name, self.header_row, self.plan, problems = self._find_table()
        except BaseException:
            self.close()
            raise
        notes = list(self.plan.notes)
        if len(self._workbook.sheetnames) > 1 or self.header_row > 1:
            notes.insert(0, f"read sheet {self.sheet_name!r}, header on row {self.header_row}")
        notes.extend(problems)
        self.summary = ParseSummary(
            file_format="xlsx",
            encoding=None,
            delimiter=None,
            columns=dict(self.plan.columns),
            ignored_columns=list(self.plan.ignored),
            notes=notes,
        )

    def _load(self):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # openpyxl warns about styles, validations...
                self._workbook, self._strings = load_workbook(
                    str(self.path), self.options.max_xlsx_shared_strings
                )
        except SharedStringsTooMany as exc:
            raise self.unreadable(str(exc)) from exc
        except _BROKEN_WORKBOOK as exc:
            raise self.unreadable(f"the workbook cannot be opened ({_short(exc)})") from exc
        return self._workbook

    def _sheet_rows(self, sheet_name: str) -> Iterator[tuple]:
        sheet = self._workbook[sheet_name]
        sheet.reset_dimensions()  # a stale <dimension> element would otherwise cut rows off
        return sheet.iter_rows(values_only=True)

    def _find_table(self) -> tuple[str, int, ColumnPlan, list[str]]:
        """First sheet, and row in its first few, that makes a recognisable header."""
        workbook = self._load()
        problems: dict[str, str] = {}
        try:
            for sheet in workbook.worksheets:
                found, problems[sheet.title] = self._header_in(sheet.title)
                if found:
                    skipped = [
                        f"skipped sheet {name!r}: no recognisable header"
                        for name in problems
                        if name != sheet.title
                    ]
                    return sheet.title, found[0], found[1], skipped
        except _BROKEN_WORKBOOK as exc:
            raise self.unreadable(f"the workbook is damaged ({_short(exc)})") from exc
        if not problems:
            raise self.unreadable("the workbook has no worksheets")
        details = "; ".join(f"sheet {name!r}: {problem}" for name, problem in problems.items())
        raise self.unreadable(f"no sheet has a recognisable header ({details})")

    def _header_in(self, sheet_name: str) -> tuple[tuple[int, ColumnPlan] | None, str]:
        problem = "the sheet is empty"
        for row_number, values in enumerate(self._sheet_rows(sheet_name), start=1):
            if row_number > HEADER_SEARCH_ROWS:
                break
            if not any(_cell_text(value) for value in values):
                continue
            try:
                plan = plan_columns(_header_names(values), self.options.column_mapping)
            except HeaderProblem as exc:
                problem = str(exc)
            else:
                return (row_number, plan), ""
        return None, problem

    def _rows(self, start_after_row: int) -> Iterator[Pair | RowError | int]:
        plan = self.plan
        category_index = plan.category_index
        needed = max(plan.indexes.values()) + 1
        source_row = 0
        try:
            rows = self._sheet_rows(self.sheet_name)
            for row_number, values in enumerate(rows, start=1):
                if row_number <= self.header_row:
                    continue
                source_row = row_number - self.header_row
                if source_row > start_after_row:
                    yield self._row(source_row, values, needed, category_index)
        except _BROKEN_WORKBOOK as exc:
            raise self.unreadable(
                f"the workbook is damaged or truncated after row {source_row:,} ({_short(exc)})"
            ) from exc

    def _row(
        self, source_row: int, values: tuple, needed: int, category_index: int | None
    ) -> Pair | RowError | int:
        if len(values) < needed:
            values = (*values, *(None,) * (needed - len(values)))
        question = _cell_text(values[self.plan.question_index])
        answer = _cell_text(values[self.plan.answer_index])
        if self.plan.fallbacks and not (question and answer):
            question, answer = fill_empty(
                self.plan,
                question,
                answer,
                lambda position: _cell_text(values[position]) if position < len(values) else "",
                self.summary.filled_from_other_columns,
            )
        if not question.strip() and not answer.strip() and not any(map(_cell_text, values)):
            return source_row
        category = _cell_text(values[category_index]) if category_index is not None else None
        return self.checker.check(
            source_row, question, answer, category, lambda: _row_excerpt(values)
        )

    def close(self) -> None:
        if self._workbook is not None:
            self._workbook.close()  # read-only workbooks keep the zip open until closed
            self._workbook = None
        if self._strings is not None:
            self._strings.close()
            self._strings = None


def _cell_text(value: object) -> str:
    text = to_text(value) if not isinstance(value, str) else value
    return text.strip() if text else ""


def _header_names(values: tuple) -> list[str]:
    return [_cell_text(value) for value in values]


def _row_excerpt(values: tuple) -> str:
    return " | ".join(_cell_text(value) for value in values)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:200] if text else "") or type(exc).__name__
