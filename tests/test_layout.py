"""The package reads as the dataflow: no import cycle, the running bridge apart from the model tooling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_import_cycle_and_runtime_apart_from_tooling() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_imports.py")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_checker_sees_a_cycle(tmp_path: Path) -> None:
    """The checker is not blind: a lazy import back from a leaf module is a cycle."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import check_imports
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    g = check_imports.graph()
    assert check_imports.cycles(g) == []
    g["bridge.frame"] = g["bridge.frame"] | {"bridge.cli.main"}
    assert any("bridge.frame" in c and "bridge.cli.main" in c for c in check_imports.cycles(g))
