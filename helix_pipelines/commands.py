"""The operator verbs beyond `dev` and `db`: import, status, recover, embed, rollback, search,
metrics."""

from __future__ import annotations


def register(verbs, *, add_json_flag) -> None:
    """Added as each capability lands."""
