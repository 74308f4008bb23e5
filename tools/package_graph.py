#!/usr/bin/env python3
"""The arrows between dsvl_cli's top-level parts (a subpackage or a top-level module each), read
from every import (imports inside functions count, and so do module names written in strings),
printed floor by floor: a part stands above everything it imports.

    python tools/package_graph.py          # the graph ARCHITECTURE.md prints
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "dsvl_cli"


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            prefix = node.module or ""
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            out.add(prefix)
            out.update(f"{prefix}.{a.name}" for a in node.names)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(PACKAGE + ".")
              and all(p.isidentifier() for p in node.value.split("."))):
            out.add(node.value)
    return out


def part_arrows(root: Path = ROOT) -> dict[str, set[str]]:
    """part -> the other parts it imports (`models`, `engine`, `wire`, `errors`...)."""
    arrows: dict[str, set[str]] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if len(parts) < 2:
            continue
        module, here = ".".join(parts), parts[1]
        arrows.setdefault(here, set())
        for name in _imports(ast.parse(path.read_text(encoding="utf-8")), module, rel.name == "__init__"):
            bits = name.split(".")
            if len(bits) >= 2 and bits[0] == PACKAGE and bits[1] != here and (
                    (root / PACKAGE / bits[1]).is_dir() or (root / PACKAGE / f"{bits[1]}.py").is_file()):
                arrows[here].add(bits[1])
    return arrows


def floors(arrows: dict[str, set[str]]) -> dict[str, int]:
    """Each part's floor: 1 + the highest floor it imports (0 for a part that imports none).
    Raises ValueError on a circle (no floors then)."""
    floor: dict[str, int] = {}
    def visit(part: str, path: tuple) -> int:
        if part in path:
            raise ValueError("circle: " + " -> ".join(path[path.index(part):] + (part,)))
        if part not in floor:
            floor[part] = 1 + max((visit(b, path + (part,)) for b in arrows.get(part, ())), default=-1)
        return floor[part]
    for part in arrows:
        visit(part, ())
    return floor


def main() -> int:
    arrows = part_arrows()
    try:
        floor = floors(arrows)
    except ValueError as exc:
        print(exc)
        return 1
    for level in sorted(set(floor.values()), reverse=True):
        for part in sorted(p for p in floor if floor[p] == level):
            below = ", ".join(sorted(arrows[part], key=lambda b: (-floor[b], b))) or "-"
            print(f"{level:2d}  {part:<13} -> {below}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
