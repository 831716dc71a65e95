"""A byte filter between a JSON file and the C parser (ijson's yajl2_c backend), so that no
byte sequence can take the process down.

yajl parses integers as 64-bit: one of 2^63 or more stops the whole document ("integer
overflow"), and a number of about 4,300 digits makes ijson's C code crash (segmentation fault).
Its object builder also exhausts memory on records nested 100,000 deep. The guard rewrites the
stream, outside strings only, before yajl sees it:

- a number token of ``LONG_NUMBER`` characters or more becomes a JSON string of the same text
  (the value is kept exactly, as text; a float would lose digits anyway);
- a container opened deeper than ``max_depth`` is replaced, whole, by the string
  ``TOO_DEEP_MARKER``; the record holding it is reported as one row error;
- a string longer than ``max_string_bytes`` (crossing a block: shorter ones pass in one regex
  match) is cut at an escape and character boundary and ends with ``TOO_LONG_MARKER``, so one
  huge value costs at most that many bytes; its record is one too_long row error.

Strings, escapes and numbers may straddle the blocks read; the state is carried over. Memory is
bounded by the block size: nothing is kept but a few bytes of state.
"""

from __future__ import annotations

import re

LONG_NUMBER = 16  # characters: shorter numbers are exact as 64-bit integers and floats
MAX_DEPTH = 64  # levels of arrays/objects from the document's root
TOO_DEEP_MARKER = "\u0000helix:nested-too-deep"
TOO_LONG_MARKER = "\u0000helix:cut-too-long"
_TOO_LONG_SUFFIX = b"\\u0000helix:cut-too-long"
_MARKER_BYTES = b'"\\u0000helix:nested-too-deep"'

_NUMBER_CHARS = rb"[-+0-9.eE]"
# Everything the guard lets through unchanged, in one regex match: plain bytes, whole strings,
# short numbers. The Python loop runs only at brackets, long numbers and block ends.
_PLAIN = re.compile(
    rb'(?:[^"\[\]{}0-9-]+|"[^"\\]*(?:\\.[^"\\]*)*"|-?[0-9]'
    + _NUMBER_CHARS
    + rb"{0,%d}(?!" % (LONG_NUMBER - 2)
    + _NUMBER_CHARS
    + rb")|-(?![0-9]))*"
)
_LONG = re.compile(rb"-?[0-9]" + _NUMBER_CHARS + rb"+")
_STRING_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*')
_NUMBER_RUN = re.compile(_NUMBER_CHARS + rb"*")
_TRAILING_NUMBER = re.compile(_NUMBER_CHARS + rb"+\Z")


class JsonGuard:
    """Feed blocks with ``feed``, then ``finish``; each returns the rewritten bytes."""

    def __init__(self, max_depth: int = MAX_DEPTH, max_string_bytes: int = 4_000_000) -> None:
        self.max_depth = max_depth
        self.max_string_bytes = max_string_bytes
        self.string_bytes = 0  # of the string being read
        self.string_cut = False  # the string being read is over max_string_bytes
        self.cut_long = False  # some string was cut: its text ends with TOO_LONG_MARKER
        self.depth = 0
        self.skip_from: int | None = None  # depth at which a too-deep container began
        self.in_string = False
        self.in_number = False  # a long number was opened as a string and may go on
        self.carry = b""
        self.cut_deep = False  # a container was replaced by TOO_DEEP_MARKER

    def feed(self, block: bytes) -> bytes:
        data = self.carry + block
        self.carry = b""
        out: list[bytes] = []
        position = self._resume(data, 0, out)
        while position < len(data):
            position = self._outside(data, position, out)
        return b"".join(out)

    def finish(self) -> bytes:
        tail = self.carry
        self.carry = b""
        if self.in_number:
            self.in_number = False
            return b'"'
        return tail if self.skip_from is None else b""

    def _emit(self, out: list[bytes], piece: bytes) -> None:
        if self.skip_from is None and piece:
            out.append(piece)

    def _resume(self, data: bytes, position: int, out: list[bytes]) -> int:
        if self.in_string:
            return self._string(data, position, out)
        if self.in_number:
            end = _NUMBER_RUN.match(data, position).end()
            self._emit(out, data[position:end])
            if end < len(data):
                self.in_number = False
                self._emit(out, b'"')
            return end
        return position

    def _outside(self, data: bytes, position: int, out: list[bytes]) -> int:
        start = _PLAIN.match(data, position).end()
        if start == len(data):
            return self._plain_tail(data, position, out)
        self._emit(out, data[position:start])
        byte = data[start : start + 1]
        if byte == b'"':
            self._emit(out, byte)
            self.in_string = True
            return self._string(data, start + 1, out)
        if byte in (b"[", b"{"):
            self._open(byte, out)
            return start + 1
        if byte in (b"]", b"}"):
            self._close(byte, out)
            return start + 1
        return self._long_number(data, _LONG.match(data, start), out)

    def _plain_tail(self, data: bytes, position: int, out: list[bytes]) -> int:
        trailing = _TRAILING_NUMBER.search(data, position)
        end = len(data)
        if trailing and len(trailing.group().lstrip(b"-")) < LONG_NUMBER:
            end = trailing.start()
        self._emit(out, data[position:end])
        self.carry = data[end:]  # a short number that may go on in the next block (bounded)
        return len(data)

    def _string(self, data: bytes, position: int, out: list[bytes]) -> int:
        end = _STRING_BODY.match(data, position).end()
        closed = end < len(data) and data[end] == ord('"')
        if not closed:  # keep an unfinished escape or character for the next block
            end = position + _complete_end(data[position:end])
        self._string_piece(data[position:end], out)
        if closed:
            if self.string_cut:
                self._emit(out, _TOO_LONG_SUFFIX)
            self._emit(out, b'"')
            self.in_string = self.string_cut = False
            self.string_bytes = 0
            return end + 1
        self.carry = data[end:]  # at most 5 bytes: an unfinished escape or character
        return len(data)

    def _string_piece(self, piece: bytes, out: list[bytes]) -> None:
        """Emit string content up to max_string_bytes; past it, cut at a character and escape
        boundary and drop the rest (its end gets TOO_LONG_MARKER)."""
        if self.string_cut:
            return
        allowed = self.max_string_bytes - self.string_bytes
        if len(piece) <= allowed:
            self.string_bytes += len(piece)
            self._emit(out, piece)
            return
        self._emit(out, piece[: _complete_end(piece[: max(allowed, 0)])])
        self.string_cut = self.cut_long = True

    def _open(self, token: bytes, out: list[bytes]) -> None:
        self.depth += 1
        if self.skip_from is None and self.depth > self.max_depth:
            out.append(_MARKER_BYTES)
            self.skip_from = self.depth
            self.cut_deep = True
        self._emit(out, token)

    def _close(self, token: bytes, out: list[bytes]) -> None:
        self._emit(out, token)
        if self.skip_from is not None and self.depth == self.skip_from:
            self.skip_from = None
        self.depth -= 1

    def _long_number(self, data: bytes, match: re.Match, out: list[bytes]) -> int:
        end = match.end()
        if self.skip_from is None:
            out.extend((b'"', match.group()))
            if end < len(data):
                out.append(b'"')
            else:
                self.in_number = True
        return end


def holds_marker(value: object, marker: str = TOO_DEEP_MARKER) -> bool:
    """True when a decoded value holds a string ending with ``marker`` (the guard keeps values
    at most MAX_DEPTH levels deep, so the recursion is bounded)."""
    if isinstance(value, str):
        return value.endswith(marker)
    if isinstance(value, dict):
        return any(holds_marker(item, marker) for item in value.values())
    if isinstance(value, list):
        return any(holds_marker(item, marker) for item in value)
    return False


def _complete_end(buf: bytes) -> int:
    """The largest end such that ``buf[:end]`` ends neither inside an escape (``\\X``,
    ``\\uXXXX``) nor inside a UTF-8 character."""
    end = len(buf)
    last = buf.rfind(b"\\", max(end - 6, 0), end)
    if last != -1:
        run_start = last
        while run_start > 0 and buf[run_start - 1] == 0x5C:
            run_start -= 1
        if (last - run_start) % 2 == 0:  # an odd run: the last backslash opens an escape
            needed = 6 if buf[last + 1 : last + 2] == b"u" else 2
            if end - last < needed:
                end = last
    lead = end - 1
    while lead >= max(end - 4, 0) and buf[lead] & 0xC0 == 0x80:
        lead -= 1
    if lead >= 0 and buf[lead] >= 0xC0:
        size = 2 if buf[lead] < 0xE0 else 3 if buf[lead] < 0xF0 else 4
        if lead + size > end:
            end = lead
    return end


def too_deep(text: str, max_depth: int = MAX_DEPTH) -> bool:
    """Whether one JSON text nests deeper than ``max_depth`` (cheap when it cannot)."""
    if text.count("[") + text.count("{") <= max_depth:
        return False
    guard = JsonGuard(max_depth)
    guard.feed(text.encode("utf-8", "surrogatepass"))
    return guard.cut_deep


def number_or_text(text: str) -> int | float | str:
    """``parse_int``/``parse_float`` for json.loads: a long number is kept as its text."""
    if len(text) >= LONG_NUMBER:
        return text
    if "." in text or "e" in text or "E" in text:
        return float(text)
    return int(text)
