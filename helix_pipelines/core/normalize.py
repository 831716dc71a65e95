"""Text clean-up applied to every field, and the content hash used to spot duplicate pairs.

Pure Python, no third-party imports: the parsing layer and the database layer must agree on
these rules byte for byte, so they live in one place.
"""

from __future__ import annotations

import hashlib
import unicodedata

# C0 control characters except TAB and LF. CR is handled separately (line endings become LF).
# PostgreSQL rejects NUL in text; the others are invisible noise that breaks embeddings and UIs.
CONTROL_CHARS = "".join(chr(code) for code in range(32) if code not in (9, 10, 13))
_DELETE_CONTROLS = str.maketrans("", "", CONTROL_CHARS)
CONTROL_BYTES = CONTROL_CHARS.encode("ascii")

HASH_SEPARATOR = "\x1f"


def clean_text(value: str, *, may_have_controls: bool = True) -> str:
    """Trim, turn CRLF/CR into LF and drop control characters (keeps TAB and LF).

    ``may_have_controls=False`` skips the control-character scan when the caller already knows
    the source holds none (the CSV reader checks whole blocks of bytes at once).
    """
    if "\r" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    if may_have_controls:
        value = value.translate(_DELETE_CONTROLS)
    return value.strip()


def has_undecodable_text(value: str) -> bool:
    """True when the value holds lone surrogates: bytes the decoder could not map to characters
    (``surrogateescape``) or a broken ``\\ud800`` escape. PostgreSQL cannot store them."""
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def normalize_for_hash(value: str) -> str:
    """NFKC, case-folded, every run of whitespace collapsed to one space, trimmed."""
    if value.isascii():
        return _collapse_ascii_whitespace(value.lower())
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


_ASCII_OTHER_WHITESPACE = ("\x0b", "\x0c", "\r", "\x1c", "\x1d", "\x1e", "\x1f")


def _collapse_ascii_whitespace(value: str) -> str:
    """Same result as ``" ".join(value.split())`` for ASCII text, several times faster on the
    usual case (only spaces, TAB and LF) because it avoids building a list of words."""
    if any(char in value for char in _ASCII_OTHER_WHITESPACE):
        return " ".join(value.split())
    if "\n" in value:
        value = value.replace("\n", " ")
    if "\t" in value:
        value = value.replace("\t", " ")
    while "  " in value:
        value = value.replace("  ", " ")
    return value.strip(" ")


def content_hash(question: str, answer: str) -> str:
    """Hex SHA-256 of the normalised question and answer joined by U+001F.

    Raises ``UnicodeEncodeError`` if either text holds lone surrogates (see
    ``has_undecodable_text``); callers validate first or treat that as invalid text.
    """
    key = normalize_for_hash(question) + HASH_SEPARATOR + normalize_for_hash(answer)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
