"""Sniff what a file is: its format from content and extension, and its text encoding."""

from __future__ import annotations

import codecs
import json
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from charset_normalizer import from_bytes

from helix_pipelines.core.parsing.base import FileUnreadable, ParseOptions
from helix_pipelines.core.parsing.json_guard import number_or_text, too_deep
from helix_pipelines.core.redact import redact

SAMPLE_BYTES = 64 * 1024
MAX_COMPRESSION_RATIO = 200  # real workbooks stay well under 100 to 1
_UTF8_CONTINUATION_BYTES = bytes(range(0x80, 0xC0))
DECODE_ERRORS = "helix_escape"

_BOMS = (  # UTF-32 first: its little-endian BOM starts with the UTF-16 one
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_MAGIC = (
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        "a legacy Office (OLE2) file such as an Excel 97-2003 "
        ".xls workbook; save it as .xlsx or CSV",
    ),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "an executable"),
    (b"SQLite format 3", "an SQLite database"),
)
# What zipfile raises on a damaged archive: besides BadZipFile, a version or compression method
# it does not support (NotImplementedError), a member flagged as encrypted (RuntimeError).
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    ValueError,
    EOFError,
    struct.error,
    NotImplementedError,
    RuntimeError,
)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Single-byte codecs the detector cannot tell from cp1252 on Western text; cp1252 wins ties.
_LATIN_DEFAULT = "cp1252"
_PREFERRED = {
    "gbk": "gb18030",
    "gb2312": "gb18030",
    "cp936": "gb18030",
    "hz": "gb18030",
    "latin_1": "cp1252",
    "iso8859_1": "cp1252",
    "ascii": "utf-8",
}
_JSON_ARRAY_START = re.compile(r"\[\s*[\{\]]")
_DELIMITED_EXTENSIONS = {".csv", ".tsv", ".txt", ".tab"}
_JSONL_EXTENSIONS = {".jsonl", ".ndjson"}


def _escape_undecodable(exc: UnicodeError) -> tuple[str, int]:
    """Like ``surrogateescape`` but for any byte value (UTF-16 errors can involve bytes below
    0x80): each undecodable byte becomes a lone surrogate, which row checks report as
    invalid_text instead of crashing."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    bad = exc.object[exc.start : exc.end]
    return "".join(chr(0xDC00 + byte) for byte in bad), exc.end


codecs.register_error(DECODE_ERRORS, _escape_undecodable)


@dataclass(frozen=True)
class Sniffed:
    file_format: str  # delimited | json | jsonl | xlsx
    encoding: str | None  # Python codec name, None for xlsx
    sample: str  # decoded start of the file ("" for xlsx)
    complete: bool  # the sample holds the whole file


def sniff(path: Path, display_name: str, options: ParseOptions) -> Sniffed:
    def unreadable(what: str) -> FileUnreadable:
        return FileUnreadable(f"{display_name}: {redact(what)}")

    try:
        size = path.stat().st_size
        with path.open("rb") as stream:
            head = stream.read(SAMPLE_BYTES)
            if size == 0 or not head:
                raise unreadable("the file is empty")
            if size > options.max_file_bytes:
                raise unreadable(
                    f"the file is {size:,} bytes, over the limit of {options.max_file_bytes:,}"
                )
            kind = _binary_kind(head)
            if kind == "zip":
                check_workbook_zip(path, options, unreadable)
                return Sniffed("xlsx", None, "", True)
            if kind:
                raise unreadable(f"not a supported file: looks like {kind}")
            encoding = detect_encoding(stream, head, size)
    except OSError as exc:
        raise unreadable(f"cannot be read ({exc.strerror or exc})") from exc
    if encoding is None:
        raise unreadable("not a supported file: looks like binary data, not text")
    complete = size <= len(head)
    sample = decode_sample(head, encoding, complete)
    if _looks_binary(sample):
        raise unreadable("not a supported file: looks like binary data, not text")
    if not sample.strip():
        raise unreadable("the file holds only whitespace")
    return Sniffed(text_format(sample, path.suffix.lower()), encoding, sample, complete)


def _binary_kind(head: bytes) -> str | None:
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    return next((what for magic, what in _MAGIC if head.startswith(magic)), None)


def check_workbook_zip(path: Path, options: ParseOptions, unreadable) -> None:
    """An xlsx is a zip with [Content_Types].xml and xl/workbook.xml. Refuses zip bombs from the
    central directory alone, before anything is decompressed."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except ZIP_ERRORS as exc:
        raise unreadable(f"not a supported file: a damaged zip archive ({exc})") from exc
    names = {member.filename for member in members}
    if "[Content_Types].xml" not in names or "xl/workbook.xml" not in names:
        hint = " (a Word document)" if "word/document.xml" in names else ""
        raise unreadable(f"not a supported file: a zip archive that is not an .xlsx workbook{hint}")
    total = sum(member.file_size for member in members)
    if total > options.max_xlsx_uncompressed_bytes:
        raise unreadable(
            f"the workbook unpacks to {total:,} bytes, over the limit of "
            f"{options.max_xlsx_uncompressed_bytes:,} (a zip bomb or an oversized workbook)"
        )
    for member in members:
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > 1024**2 and ratio > MAX_COMPRESSION_RATIO:
            raise unreadable(
                f"the workbook member {member.filename} is compressed {ratio:,.0f} to 1, "
                "which looks like a zip bomb"
            )


def detect_encoding(stream: BinaryIO, head: bytes, size: int) -> str | None:
    """Codec name for the file, or None when it does not look like text at all."""
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return codec
    samples = [head, *_spread_samples(stream, size)]
    if all(_is_utf8(sample, first=index == 0) for index, sample in enumerate(samples)):
        return "utf-8"
    lines = [_whole_lines(sample, first=index == 0) for index, sample in enumerate(samples)]
    return _guess_legacy(b"\n".join(lines))


def _spread_samples(stream: BinaryIO, size: int) -> list[bytes]:
    """Three more samples from the middle and end: a file can be ASCII for its first 64 KB."""
    if size <= 2 * SAMPLE_BYTES:
        return []
    samples = []
    for offset in (size // 3, 2 * size // 3, size - SAMPLE_BYTES):
        stream.seek(max(offset, SAMPLE_BYTES))
        samples.append(stream.read(SAMPLE_BYTES))
    return samples


def _is_utf8(sample: bytes, *, first: bool) -> bool:
    if not first:  # a sample taken mid-file may start inside a character
        sample = sample.lstrip(_UTF8_CONTINUATION_BYTES)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _whole_lines(sample: bytes, *, first: bool) -> bytes:
    """Cut a sample at line breaks so no multi-byte character is split (LF is never a trail
    byte in the multi-byte legacy encodings)."""
    if len(sample) < SAMPLE_BYTES:
        return sample if first else sample[sample.find(b"\n") + 1 :]
    start = 0 if first else sample.find(b"\n") + 1
    end = sample.rfind(b"\n")
    return sample[start:end] if end > start else sample


def _guess_legacy(sample: bytes) -> str | None:
    matches = from_bytes(sample)
    best = matches.best()
    if best is None:
        return None
    encoding = _PREFERRED.get(best.encoding, best.encoding)
    if _LATIN_DEFAULT in best.could_be_from_charset:  # decodes the sample to the same text
        encoding = _LATIN_DEFAULT
    if _rare_latin(best.encoding) and _decodes(sample, _LATIN_DEFAULT):
        encoding = _LATIN_DEFAULT
    elif _single_byte(best.encoding):
        for match in matches:
            close = match.chaos <= best.chaos + 0.2 and match.coherence >= best.coherence - 0.05
            if match.encoding == _LATIN_DEFAULT and close:
                encoding = _LATIN_DEFAULT
    if encoding == _LATIN_DEFAULT and not _decodes(sample, _LATIN_DEFAULT):
        encoding = "latin-1"  # bytes cp1252 leaves undefined (0x81, 0x8D, ...)
    return encoding


def _single_byte(encoding: str) -> bool:
    """Single-byte Latin code pages, among which the detector's pick on short Western text is
    close to a coin toss (cp1257 for French, cp1250 for German)."""
    return encoding.startswith(("cp12", "cp8", "cp7", "iso8859", "mac_", "latin", "hp_roman"))


def _rare_latin(encoding: str) -> bool:
    """Code pages the detector sometimes prefers for short Western text but that are rare in
    practice (Mac, DOS, Baltic, Nordic): cp1252 is the far likelier source."""
    return encoding.startswith(
        ("mac_", "cp437", "cp775", "cp85", "cp86", "hp_roman8", "cp1257")
    ) or (
        encoding
        in {"iso8859_4", "iso8859_10", "iso8859_13", "iso8859_14", "iso8859_15", "iso8859_16"}
    )


def _decodes(sample: bytes, encoding: str) -> bool:
    try:
        sample.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def decode_sample(head: bytes, encoding: str, complete: bool) -> str:
    decoder = codecs.getincrementaldecoder(encoding)(errors=DECODE_ERRORS)
    return decoder.decode(head, final=complete)


def _looks_binary(sample: str) -> bool:
    """Text has next to no control characters; binary junk decoded as text has many."""
    probe = sample[:8192]
    controls = sum(1 for char in probe if char < " " and char not in "\t\n\r\f")
    surrogates = sum(1 for char in probe if "\ud800" <= char <= "\udfff")
    return (controls + surrogates) > max(8, len(probe) // 20)


def text_format(sample: str, extension: str) -> str:
    """delimited, json or jsonl, from the first characters, the extension breaking ties."""
    text = sample.lstrip()
    first = text[:1]
    if first == "[":
        json_like = _JSON_ARRAY_START.match(text) is not None
        return "json" if json_like or extension == ".json" else "delimited"
    if first == "{":
        return _object_stream_format(text, extension)
    return "delimited"


def _object_stream_format(text: str, extension: str) -> str:
    first_line, _, rest = text.partition("\n")
    try:
        if too_deep(first_line):  # json.loads would raise RecursionError
            raise ValueError("nested too deep to sniff")
        record = json.loads(first_line, parse_int=number_or_text, parse_float=number_or_text)
    except ValueError:  # a pretty-printed object, or not JSON at all
        if extension in _DELIMITED_EXTENSIONS and not first_line.rstrip().endswith(("{", "[")):
            return "delimited"
        return "jsonl" if extension in _JSONL_EXTENSIONS else "json"
    if extension in _JSONL_EXTENSIONS or rest.strip():
        return "jsonl"
    if extension == ".json":
        return "json"
    holds_array = isinstance(record, dict) and any(
        isinstance(value, list) for value in record.values()
    )
    return "json" if holds_array else "jsonl"
