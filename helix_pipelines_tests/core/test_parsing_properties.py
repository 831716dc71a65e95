"""Property-based: whatever Python's csv module writes, in any supported encoding, reads back."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from helix_pipelines.core.normalize import clean_text, hash_key, normalize_for_hash
from helix_pipelines.core.parsing import ParseOptions
from helix_pipelines_tests.core.parsing_helpers import read_all, write_table

# Text without the characters the parser deliberately changes (control characters, lone
# surrogates); CR and LF are included: CRLF and CR come back as LF.
TEXT = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc"),
        whitelist_characters="\n\r\t,;|\"' ",
    ),
    max_size=60,
)
ROW = st.tuples(TEXT, TEXT, TEXT)
UTF_ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "utf-32")
HEADER = ["question", "answer", "category"]


def expected_pairs(rows):
    """What the parser promises: trimmed text, line endings as LF, empty category as None,
    rows without question or answer rejected, blank rows skipped."""
    out = []
    for number, (question, answer, category) in enumerate(rows, start=1):
        question, answer = clean_text(question), clean_text(answer)
        if question and answer:
            out.append((number, question, answer, clean_text(category) or None))
    return out


def round_trip(rows, encoding, delimiter=","):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_table(
            Path(tmp) / "faq.csv", [HEADER, *rows], encoding=encoding, delimiter=delimiter
        )
        parsed = read_all(path, ParseOptions(chunk_rows=7))
    return parsed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(ROW, min_size=1, max_size=12),
    encoding=st.sampled_from(UTF_ENCODINGS),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
)
def test_unicode_tables_round_trip(rows, encoding, delimiter):
    parsed = round_trip(rows, encoding, delimiter)
    got = [(pair.source_row, pair.question, pair.answer, pair.category) for pair in parsed.pairs]
    assert got == expected_pairs(rows)
    assert parsed.summary.delimiter == delimiter
    assert {error.error_code for error in parsed.errors} <= {"missing_question", "missing_answer"}


# Legacy encodings: the detector needs enough non-ASCII text to be sure, so every row carries
# a sentence in the target script; short files with one accented letter are not promised.
WESTERN = string.ascii_letters + string.digits + " .,;?!'\"\n-àâäçéèêëîïôöùûüÿñßÀÉÈÇÖÜ€–“”’"
FRENCH = "Où est la boîte à lettres ? Déjà payé, merci – à bientôt. "
CHINESE = "请点击登录页面上的忘记密码链接然后按照提示操作通常需要三到五个工作日"
LEGACY = {
    "cp1252": (FRENCH, st.sampled_from(list(WESTERN))),
    "gb18030": (CHINESE, st.sampled_from(list(CHINESE + string.ascii_letters + ' ,"\n'))),
}


# Derandomized: the detector is a heuristic, and CI must not turn red on a new random seed.
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data(), encoding=st.sampled_from(sorted(LEGACY)))
def test_legacy_encoded_tables_round_trip(data, encoding):
    sentence, alphabet = LEGACY[encoding]
    text = st.text(alphabet=alphabet, max_size=30).filter(lambda value: _encodable(value, encoding))
    rows = data.draw(st.lists(st.tuples(text, text, text), min_size=3, max_size=8))
    rows = [
        (sentence + question, sentence + answer, category) for question, answer, category in rows
    ]
    assume(all(_encodable("".join(row), encoding) for row in rows))
    parsed = round_trip(rows, encoding)
    assert parsed.summary.encoding == encoding
    got = [(pair.source_row, pair.question, pair.answer, pair.category) for pair in parsed.pairs]
    assert got == expected_pairs(rows)


def _encodable(value: str, encoding: str) -> bool:
    try:
        value.encode(encoding)
    except UnicodeEncodeError:
        return False
    return "\x7f" not in value and not any("\x80" <= char <= "\x9f" for char in value)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80))
def test_fast_hash_key_matches_the_reference_definition(value):
    assert hash_key(value) == normalize_for_hash(value).encode("utf-8")


@settings(max_examples=200, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(list("aA ßẞΣσς\u00a0\u2028\x85\n\t\r\x1c\u3000ǅﬁÉé")), max_size=40
    )
)
def test_fast_hash_key_on_tricky_whitespace_and_case(value):
    assert hash_key(value) == normalize_for_hash(value).encode("utf-8")
