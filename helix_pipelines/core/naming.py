"""Safe names for partitions and stored files, derived from what users drop."""

from __future__ import annotations

import re
import unicodedata

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_STEM = 48


def safe_stem(file_name: str) -> str:
    """The file name reduced to `[A-Za-z0-9._-]`: no path, no `..`, never empty."""
    base = file_name.replace("\\", "/").rsplit("/", 1)[-1]
    ascii_name = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    cleaned = _UNSAFE.sub("_", ascii_name)
    cleaned = re.sub(r"\.{2,}", ".", cleaned).strip("._-")
    return cleaned[:MAX_STEM].strip("._-") or "file"


def partition_key_for(file_name: str, sha256: str, generation: int = 0) -> str:
    """Readable and safe (`[A-Za-z0-9._-]`, no `...`, no comma): `faq.csv-1a2b3c4d5e`.
    A later import of the same content gets `-2`, `-3`... so each stays its own partition."""
    key = f"{safe_stem(file_name)}-{sha256[:10]}"
    return key if generation <= 1 else f"{key}-{generation}"
