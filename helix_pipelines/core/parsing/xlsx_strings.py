"""The shared-strings table of a workbook, kept on disk instead of in memory.

openpyxl, even in read-only mode, loads every shared string into a Python list before the first
row is read: memory grows with the workbook. Here the table is streamed once into an unnamed
temporary file; memory holds only an 8-byte offset per string, and a cell's text is read back
with one ``pread`` when its row is read. A table of more than ``max_strings`` entries is
refused (SharedStringsTooMany) before it can cost more than ``8 * max_strings`` bytes.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from typing import BinaryIO

from openpyxl.cell.text import Text
from openpyxl.reader.excel import ExcelReader
from openpyxl.xml.constants import SHARED_STRINGS, SHEET_MAIN_NS
from openpyxl.xml.functions import iterparse

_STRING_TAG = f"{{{SHEET_MAIN_NS}}}si"


class SharedStringsTooMany(Exception):
    """The workbook's shared-strings table is over the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the workbook has more than {limit:,} shared strings "
            "(max_xlsx_shared_strings); split it or save it as CSV"
        )


class SpilledStrings:
    """``table[index]`` -> text, as openpyxl's worksheet reader asks for it."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="helix-strings-")  # noqa: SIM115 - close()
        self._offsets = array("q", [0])

    def load(self, source: BinaryIO, max_strings: int) -> None:
        write, size = self._file.write, 0
        events = iterparse(source, events=("start", "end"))
        _, root = next(events)
        for event, node in events:
            if event != "end" or node.tag != _STRING_TAG:
                continue
            if len(self._offsets) > max_strings:
                raise SharedStringsTooMany(max_strings)
            data = (Text.from_tree(node).content or "").replace("x005F_", "").encode("utf-8")
            size += write(data)
            self._offsets.append(size)
            root.clear()  # the parsed <si> elements are not kept
        self._file.flush()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        if not 0 <= index < len(self._offsets) - 1:
            raise IndexError(f"shared string {index} is not in the table")
        start, end = self._offsets[index], self._offsets[index + 1]
        return os.pread(self._file.fileno(), end - start, start).decode("utf-8")

    def close(self) -> None:
        self._file.close()


class _SpillingReader(ExcelReader):
    def __init__(self, path: str, max_strings: int) -> None:
        super().__init__(path, read_only=True, keep_vba=False, data_only=True, keep_links=False)
        self.max_strings = max_strings
        self.spilled = SpilledStrings()

    def read_strings(self) -> None:
        self.shared_strings = self.spilled
        part = self.package.find(SHARED_STRINGS)
        if part is not None:
            with self.archive.open(part.PartName[1:]) as source:
                self.spilled.load(source, self.max_strings)


def load_workbook(path: str, max_strings: int):
    """A read-only, data-only workbook whose shared strings live on disk; returns
    (workbook, strings). Close both when done."""
    reader = _SpillingReader(path, max_strings)
    try:
        reader.read()
    except BaseException:
        reader.spilled.close()
        reader.archive.close()
        raise
    return reader.wb, reader.spilled
