"""The tests docs/reliability.md names exist: the fault table cannot point at nothing."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def named_tests(doc: str) -> list[tuple[str, str]]:
    """(file, test name) for every ``tests/x.py::name`` and every ``::name`` after it in a cell."""
    out = []
    for cell in re.findall(r"\|([^|]*tests/[^|]*)\|", doc):
        current = None
        for file, name in re.findall(r"(tests/[\w/]+\.py)?::(\w+)", cell):
            current = file or current
            assert current, f"'::{name}' without a file before it in: {cell.strip()}"
            out.append((current, name))
    return out


def test_every_test_named_in_reliability_md_exists() -> None:
    refs = named_tests((ROOT / "docs" / "reliability.md").read_text(encoding="utf-8"))
    assert len(refs) >= 30
    missing = []
    for file, name in refs:
        tree = ast.parse((ROOT / file).read_text(encoding="utf-8"))
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        if name not in names:
            missing.append(f"{file}::{name}")
    assert not missing, missing
