"""A batch's pairs as PostgreSQL's binary COPY stream, built from their Arrow columns.

The format (PostgreSQL docs, "COPY", binary format): a signature and header, then per row a
16-bit field count and each field as a 32-bit length (-1 for NULL) followed by its bytes, then
a trailer. Each part of a row is an array here and pyarrow joins them row by row in one call,
so the stream costs no Python call per pair and leaves the GIL to the parser.
"""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from helix_pipelines.core.parsing.pair_block import (
    QUESTION_KEY,
    PairBlock,
    binary_array,
    value_offsets,
    value_sizes,
)

# Signature, flags (no OIDs), header extension length.
SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(4) + bytes(4)
COLUMNS = "import_job_id, source_row, question, answer, category, content_hash, question_key"
HASH_BYTES = 64  # hex SHA-256
ROWS_PER_WRITE = 1000

# Field count, the job id (uuid) and the source row (int4): the same width on every row.
_HEAD = np.dtype(
    [("fields", ">i2"), ("job_len", ">i4"), ("job", "V16"), ("row_len", ">i4"), ("row", ">i4")]
)
# The content hash (text) and the question key (uuid): also the same width on every row.
_TAIL = np.dtype(
    [("hash_len", ">i4"), ("hash", f"S{HASH_BYTES}"), ("key_len", ">i4"), ("key", QUESTION_KEY)]
)


def _fixed_width(data: bytes, width: int, count: int) -> pa.Array:
    """``count`` binary values of ``width`` bytes each, back to back in ``data``."""
    return binary_array(np.arange(count + 1, dtype=np.int32) * width, data)


_NOTHING = _fixed_width(b"", 0, 1)[0]  # the empty separator for binary_join_element_wise


def _lengths(sizes: np.ndarray) -> pa.Array:
    return _fixed_width(sizes.astype(">i4").tobytes(), 4, len(sizes))


def _heads(job_id: uuid.UUID, rows: np.ndarray) -> pa.Array:
    head = np.zeros(len(rows), dtype=_HEAD)
    head["fields"], head["job_len"], head["row_len"] = 7, 16, 4
    head["job"] = np.void(job_id.bytes)
    head["row"] = rows
    return _fixed_width(head.tobytes(), _HEAD.itemsize, len(rows))


def _tails(block: PairBlock) -> pa.Array:
    tail = np.zeros(len(block), dtype=_TAIL)
    tail["hash_len"], tail["key_len"] = HASH_BYTES, QUESTION_KEY.itemsize
    hashes = "".join(block.content_hashes).encode("ascii")
    tail["hash"] = np.frombuffer(hashes, dtype=f"S{HASH_BYTES}")
    tail["key"] = block.question_keys
    return _fixed_width(tail.tobytes(), _TAIL.itemsize, len(block))


def copy_rows(job_id: uuid.UUID, block: PairBlock) -> memoryview:
    """The rows of ``block`` (without signature and trailer), in ``COLUMNS`` order. Every
    content hash must be 64 hex characters; an empty category is stored as NULL."""
    category_sizes = value_sizes(block.categories)
    parts = [
        _heads(job_id, block.source_rows),
        _lengths(value_sizes(block.questions)),
        block.questions.view(pa.binary()),
        _lengths(value_sizes(block.answers)),
        block.answers.view(pa.binary()),
        _lengths(np.where(category_sizes == 0, -1, category_sizes)),
        block.categories.view(pa.binary()),
        _tails(block),
    ]
    joined = pc.binary_join_element_wise(*parts, _NOTHING)
    offsets = value_offsets(joined)
    return memoryview(joined.buffers()[2])[int(offsets[0]) : int(offsets[-1])]


def copy_pairs(cursor, job_id: uuid.UUID, block: PairBlock) -> None:
    """COPY the block into qa_pair through a psycopg cursor (in the caller's transaction). The
    stream is laid out ROWS_PER_WRITE rows at a time: a whole batch's would be one more copy of
    its text in memory while it is sent."""
    with cursor.copy(f"COPY qa_pair ({COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(SIGNATURE)  # psycopg adds the trailer
        for start in range(0, len(block), ROWS_PER_WRITE):
            copy.write(copy_rows(job_id, block[start : start + ROWS_PER_WRITE]))
