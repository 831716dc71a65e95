"""Writers of hostile input files, shared by the hostile-input tests and the fuzz targets."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from xml.sax.saxutils import escape

_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_CT = "application/vnd.openxmlformats-officedocument.spreadsheetml"

_CONTENT_TYPES = f"""<?xml version="1.0" encoding="UTF-8"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>
<Default Extension="xml" ContentType="application/xml"/>
<Override PartName="/xl/workbook.xml" ContentType="{_CT}.sheet.main+xml"/>
<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{_CT}.worksheet+xml"/>
<Override PartName="/xl/sharedStrings.xml" ContentType="{_CT}.sharedStrings+xml"/>
</Types>"""
_ROOT_RELS = f"""<?xml version="1.0" encoding="UTF-8"?>
<Relationships xmlns="{_PKG_REL}"><Relationship Id="rId1" Target="xl/workbook.xml"
Type="{_REL}/officeDocument"/></Relationships>"""
_WORKBOOK = f"""<?xml version="1.0" encoding="UTF-8"?>
<workbook xmlns="{_NS}" xmlns:r="{_REL}"><sheets>
<sheet name="qa" sheetId="1" r:id="rId1"/></sheets></workbook>"""
_WORKBOOK_RELS = f"""<?xml version="1.0" encoding="UTF-8"?>
<Relationships xmlns="{_PKG_REL}">
<Relationship Id="rId1" Target="worksheets/sheet1.xml" Type="{_REL}/worksheet"/>
<Relationship Id="rId2" Target="sharedStrings.xml" Type="{_REL}/sharedStrings"/>
</Relationships>"""


def write_shared_strings_xlsx(
    path: Path, rows: Iterable[tuple[str, ...]], extra_strings: Iterable[str] = ()
) -> Path:
    """A workbook whose every cell is a shared string (as Excel writes them), streamed to the
    zip so even a huge one costs little memory to write. ``extra_strings`` are appended to the
    table without being used by any cell (a bloated table)."""
    strings: dict[str, int] = {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", _CONTENT_TYPES)
        archive.writestr("_rels/.rels", _ROOT_RELS)
        archive.writestr("xl/workbook.xml", _WORKBOOK)
        archive.writestr("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS)
        with archive.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as sheet:
            for piece in _sheet_xml(rows, strings):
                sheet.write(piece.encode("utf-8"))
        with archive.open("xl/sharedStrings.xml", "w", force_zip64=True) as table:
            table.write(f'<?xml version="1.0" encoding="UTF-8"?><sst xmlns="{_NS}">'.encode())
            for text in [*strings, *extra_strings]:
                table.write(f"<si><t>{escape(text)}</t></si>".encode())
            table.write(b"</sst>")
    return path


def _sheet_xml(rows: Iterable[tuple[str, ...]], strings: dict[str, int]) -> Iterator[str]:
    yield f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{_NS}"><sheetData>'
    for number, row in enumerate(rows, start=1):
        cells = []
        for column, text in enumerate(row):
            index = strings.setdefault(text, len(strings))
            cells.append(f'<c r="{chr(65 + column)}{number}" t="s"><v>{index}</v></c>')
        yield f'<row r="{number}">{"".join(cells)}</row>'
    yield "</sheetData></worksheet>"
