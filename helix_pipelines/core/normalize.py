"""Text clean-up applied to every field, and the content hash used to spot duplicate pairs.

Pure Python, no third-party imports: the parsing layer and the database layer must agree on
these rules byte for byte, so they live in one place.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# C0 control characters except TAB and LF. CR is handled separately (line endings become LF).
# PostgreSQL rejects NUL in text; the others are invisible noise that breaks embeddings and UIs.
CONTROL_CHARS = "".join(chr(code) for code in range(32) if code not in (9, 10, 13))
_DELETE_CONTROLS = str.maketrans("", "", CONTROL_CHARS)
CONTROL_BYTES = CONTROL_CHARS.encode("ascii")

HASH_SEPARATOR = "\x1f"


def clean_text(value: str, may_have_controls: bool = True) -> str:
    """Trim, turn CRLF/CR into LF and drop control characters (keeps TAB and LF).

    ``may_have_controls=False`` skips the control-character scan when the caller already knows
    the source holds none (the CSV reader checks whole blocks of bytes at once).
    """
    if "\r" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    if may_have_controls:
        value = value.translate(_DELETE_CONTROLS)
    return value.strip()


_ESCAPE_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(32), 127) if code not in (9, 10)}


def printable_excerpt(text: str, limit: int = 500) -> str:
    """At most ``limit`` characters of ``text`` that any database column or log can hold:
    control characters (NUL included) shown as ``\\xNN``, undecodable bytes (lone
    surrogates) as ``\\udcNN``. Only the head of the text is ever looked at."""
    head = text[:limit]
    if not head.isprintable():
        head = head.translate(_ESCAPE_CONTROLS)
        head = head.encode("utf-8", "backslashreplace").decode("utf-8")
    return head[:limit]


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
    """The reference definition: NFKC, case-folded, every run of whitespace collapsed to one
    space, trimmed. ``content_hash`` computes the same thing faster."""
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


QUESTION_KEY_BYTES = 16


def question_key(question: str) -> bytes:
    """A pair's identity within a source (core.sources): the first 16 bytes of the SHA-256 of
    ``normalize_for_hash(question) + "\x1f"``. That is the state ``content_hash`` passes
    through before it takes the answer, so one hashing pass yields both (the CSV fast path).
    """
    digest = hashlib.sha256(hash_key(question) + HASH_SEPARATOR_BYTES).digest()
    return digest[:QUESTION_KEY_BYTES]


def content_hash(question: str, answer: str) -> str:
    """Hex SHA-256 of ``normalize_for_hash(question) + "\x1f" + normalize_for_hash(answer)``,
    UTF-8 encoded.

    Raises ``UnicodeEncodeError`` if either text holds lone surrogates (see
    ``has_undecodable_text``); callers validate first or treat that as invalid text.
    """
    key = hash_key(question) + HASH_SEPARATOR_BYTES + hash_key(answer)
    return hashlib.sha256(key).hexdigest()


HASH_SEPARATOR_BYTES = HASH_SEPARATOR.encode("ascii")
_ASCII_BYTES = bytes(range(128))
_SPACE_RUNS = re.compile(b"  +")


def hash_key(value: str) -> bytes:
    """``normalize_for_hash(value).encode("utf-8")``, several times faster on the usual text.

    Case folding and whitespace collapsing run on the UTF-8 bytes, where ``bytes.lower`` and
    ``bytes.replace`` are plain byte loops; case folding maps each character on its own, so the
    few non-ASCII characters that fold to something else are replaced one by one (UTF-8 is
    self-synchronising: a character's bytes never match across a character boundary).
    """
    if not value.isascii():
        value = unicodedata.normalize("NFKC", value)
    data = value.encode("utf-8").lower()  # lowers ASCII letters only
    if not data.isascii():
        non_ascii = data.translate(None, _ASCII_BYTES).decode("utf-8")
        if _has_rare_unicode_whitespace(non_ascii):
            return normalize_for_hash(value).encode("utf-8")
        if non_ascii.casefold() != non_ascii:
            data = _fold_non_ascii(data, non_ascii)
    if _has_rare_ascii_whitespace(data):  # bytes.split() does not know \x1c-\x1f
        return normalize_for_hash(value).encode("utf-8")
    return _collapse_spaces(data)


def _fold_non_ascii(data: bytes, non_ascii: str) -> bytes:
    for char in set(non_ascii):
        folded = char.casefold()
        if folded != char:
            data = data.replace(char.encode("utf-8"), folded.encode("utf-8"))
    return data


def _has_rare_unicode_whitespace(non_ascii: str) -> bool:
    """Whitespace to str.split() that NFKC leaves alone (it turns NBSP, ideographic and the
    other fixed-width spaces into U+0020)."""
    return (
        "\x85" in non_ascii
        or "\u1680" in non_ascii
        or "\u2028" in non_ascii
        or ("\u2029" in non_ascii)
    )


def _has_rare_ascii_whitespace(data: bytes) -> bool:
    # One memchr each: an int operand is much cheaper than a bytes one, a generator or a regex.
    return (
        13 in data  # CR
        or 11 in data  # VT
        or 12 in data  # FF
        or 28 in data
        or 29 in data
        or 30 in data
        or 31 in data
    )


def _collapse_spaces(data: bytes) -> bytes:
    if 10 in data:
        data = data.replace(b"\n", b" ")
    if 9 in data:
        data = data.replace(b"\t", b" ")
    if b"  " in data:
        data = _SPACE_RUNS.sub(b" ", data)
    return data.strip(b" ")
