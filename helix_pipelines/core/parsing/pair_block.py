"""Pairs kept as Arrow columns: the CSV fast path's pairs travel to the database like this, so
an import builds no Python object per pair (docs/parsing.md, "Fast path").

A block holds consecutive records of one file, in order. ``pairs()`` turns it into ``Pair``
objects for whoever wants them (tests, other readers' code paths); the import never does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from helix_pipelines.core.normalize import QUESTION_KEY_BYTES, question_key
from helix_pipelines.core.parsing.base import Pair

QUESTION_KEY = np.dtype(f"V{QUESTION_KEY_BYTES}")


def binary_array(
    offsets: np.ndarray, data: bytes | np.ndarray, kind: pa.DataType | None = None
) -> pa.Array:
    """A binary (or ``kind``) array over ``data`` cut at the int32 ``offsets``, without copying;
    ``pa.array``/``pa.scalar`` would import pandas (0.3 s or more, once per process) to check
    the input's type."""
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    return pa.Array.from_buffers(kind or pa.binary(), len(offsets) - 1, buffers)


def utf8_array(texts: Sequence[str]) -> pa.Array:
    encoded = [text.encode("utf-8") for text in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(value) for value in encoded], out=offsets[1:])
    return binary_array(offsets, b"".join(encoded), pa.string())


def question_keys(questions: Sequence[str]) -> np.ndarray:
    return np.array([question_key(question) for question in questions], dtype=QUESTION_KEY)


def value_offsets(array: pa.Array) -> np.ndarray:
    """The ``n + 1`` int32 offsets of a string or binary array's values into its data buffer."""
    return np.frombuffer(
        array.buffers()[1], dtype=np.int32, count=len(array) + 1, offset=array.offset * 4
    )


def value_sizes(array: pa.Array) -> np.ndarray:
    """Every value's length in bytes (never less than its length in characters)."""
    return np.diff(value_offsets(array))


class PairBlock:
    """``source_rows`` (int64), cleaned ``questions``, ``answers`` and ``categories`` (string
    arrays without nulls; an empty category means none), the ``content_hashes`` and the
    ``question_keys`` (``QUESTION_KEY`` array, see normalize.question_key)."""

    __slots__ = (
        "source_rows", "questions", "answers", "categories", "content_hashes", "question_keys"
    )  # fmt: skip

    def __init__(
        self,
        source_rows: np.ndarray,
        questions: pa.Array,
        answers: pa.Array,
        categories: pa.Array,
        content_hashes: list[str],
        question_keys: np.ndarray,
    ) -> None:
        self.source_rows = source_rows
        self.questions, self.answers, self.categories = questions, answers, categories
        self.content_hashes = content_hashes
        self.question_keys = question_keys

    @classmethod
    def of(cls, pairs: Sequence[Pair]) -> PairBlock:
        return cls(
            np.array([p.source_row for p in pairs], dtype=np.int64),
            utf8_array([p.question for p in pairs]),
            utf8_array([p.answer for p in pairs]),
            utf8_array([p.category or "" for p in pairs]),
            [p.content_hash for p in pairs],
            question_keys([p.question for p in pairs]),
        )

    @classmethod
    def joined(cls, blocks: Iterable[PairBlock]) -> PairBlock:
        blocks = [block for block in blocks if len(block)]
        if len(blocks) == 1:
            return blocks[0]
        if not blocks:
            return cls.of([])
        return cls(
            np.concatenate([b.source_rows for b in blocks]),
            pa.concat_arrays([b.questions for b in blocks]),
            pa.concat_arrays([b.answers for b in blocks]),
            pa.concat_arrays([b.categories for b in blocks]),
            [digest for b in blocks for digest in b.content_hashes],
            np.concatenate([b.question_keys for b in blocks]),
        )

    def __len__(self) -> int:
        return len(self.content_hashes)

    def __getitem__(self, rows: slice) -> PairBlock:
        start, stop, _ = rows.indices(len(self))
        return PairBlock(
            self.source_rows[start:stop],
            self.questions.slice(start, stop - start),
            self.answers.slice(start, stop - start),
            self.categories.slice(start, stop - start),
            self.content_hashes[start:stop],
            self.question_keys[start:stop],
        )

    def take(self, positions: np.ndarray) -> PairBlock:
        """The pairs at ``positions`` (ascending), in that order."""
        if len(positions) == len(self):
            return self
        indices = pa.py_buffer(np.asarray(positions, dtype=np.int64))
        taken = pa.Array.from_buffers(pa.int64(), len(positions), [None, indices])
        hashes = self.content_hashes
        return PairBlock(
            self.source_rows[positions],
            self.questions.take(taken),
            self.answers.take(taken),
            self.categories.take(taken),
            [hashes[position] for position in positions.tolist()],
            self.question_keys[positions],
        )

    def text_bytes(self) -> int:
        """Bytes of question and answer text (what the batch budget counts)."""
        return int(value_sizes(self.questions).sum() + value_sizes(self.answers).sum())

    def pairs(self) -> list[Pair]:
        categories = [text or None for text in self.categories.to_pylist()]
        fields = zip(
            self.source_rows.tolist(),
            self.questions.to_pylist(),
            self.answers.to_pylist(),
            categories,
            self.content_hashes,
            strict=True,
        )
        return [Pair(*values) for values in fields]
