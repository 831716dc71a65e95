"""Reading question/answer files: CSV/TSV, JSON, JSON Lines and XLSX, streamed in chunks.

Pure Python (no Dagster, no database). The rules are documented in docs/parsing.md.
"""

from __future__ import annotations

from pathlib import Path

from helix_pipelines.core.parsing.base import (
    INVALID_TEXT,
    MALFORMED_ROW,
    MISSING_ANSWER,
    MISSING_QUESTION,
    TOO_LONG,
    Chunk,
    FileUnreadable,
    Pair,
    ParseOptions,
    ParseSummary,
    RowError,
    SourceFile,
)
from helix_pipelines.core.parsing.csv_reader import DelimitedSource
from helix_pipelines.core.parsing.detect import sniff
from helix_pipelines.core.parsing.json_reader import JsonSource
from helix_pipelines.core.parsing.jsonl_reader import JsonLinesSource

__all__ = [
    "ERROR_CODES",
    "Chunk",
    "FileUnreadable",
    "Pair",
    "ParseOptions",
    "ParseSummary",
    "RowError",
    "SourceFile",
    "open_source",
]

ERROR_CODES = (MISSING_QUESTION, MISSING_ANSWER, TOO_LONG, MALFORMED_ROW, INVALID_TEXT)


def open_source(
    path: Path | str, options: ParseOptions = ParseOptions(), *, display_name: str | None = None
) -> SourceFile:
    """Sniff format and encoding and read the header.

    Raises FileUnreadable for a file that cannot be read at all (empty, binary, legacy .xls,
    a zip that is not a workbook, over max_file_bytes, no recognisable header, no question or
    answer column, a zip bomb). Use the result as a context manager or call ``close()``.
    """
    path = Path(path)
    name = display_name or path.name
    sniffed = sniff(path, name, options)
    if sniffed.file_format == "xlsx":
        # Here: openpyxl costs a tenth of a second that only workbooks need.
        from helix_pipelines.core.parsing.xlsx_reader import WorkbookSource

        return WorkbookSource(path, name, options)
    if sniffed.file_format == "json":
        return JsonSource(path, name, options, sniffed)
    if sniffed.file_format == "jsonl":
        return JsonLinesSource(path, name, options, sniffed)
    return DelimitedSource(path, name, options, sniffed)
