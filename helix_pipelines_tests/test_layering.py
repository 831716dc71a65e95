"""Imports point down only: core <- db, embedding <- pipeline <- defs <- the command line.

db and embedding are siblings (neither imports the other); defs may also use `metrics`, the
Prometheus adapter, which imports none of the layers below at module level."""

from __future__ import annotations

import ast
from pathlib import Path

import helix_pipelines

RANK = {"core": 0, "db": 1, "embedding": 1, "pipeline": 2, "defs": 3}
ALLOWED_SIDE_MODULES = {"defs": {"metrics"}}
PACKAGE = Path(helix_pipelines.__file__).parent


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            if node.module == "helix_pipelines":
                names.extend(f"helix_pipelines.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return [name for name in names if name.startswith("helix_pipelines.")]


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        layer = parts[0] if len(parts) > 1 else None
        if layer not in RANK:
            continue
        for module in imported_modules(path):
            target = module.split(".")[1]
            if target == layer or target in ALLOWED_SIDE_MODULES.get(layer, ()):
                continue
            if RANK.get(target, 99) >= RANK[layer]:
                found.append(f"{path.relative_to(PACKAGE)} imports {module}")
    return found


def test_imports_point_down_only():
    assert violations() == []
