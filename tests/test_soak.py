"""``scripts/soak.sh``: a short soak through the real script, bridge process and receivers."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_short_soak_reports_every_frame_once(tmp_path: Path) -> None:
    report = tmp_path / "soak.json"
    env = {**os.environ, "A2E_BRIDGE_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [str(ROOT / "scripts" / "soak.sh"), "--seconds", "3", "--json", str(report)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.rstrip().endswith("soak: PASS")
    doc = json.loads(report.read_text())
    published = doc["bridge_stats"]["frames_published"]
    assert published == doc["bridge_stats"]["frames_expected"] == 90  # 3 s at 30 fps
    assert set(doc["receivers"]) == {"livelink", "osc", "zmq"}
    for name, r in doc["receivers"].items():
        assert r["received"] == published and r["lost"] == 0, (name, r)
        assert r["duplicated"] == r["out_of_order"] == r["invalid"] == 0, (name, r)
    lines = done.stdout.splitlines()
    for name in ("livelink", "osc", "zmq"):
        row = next(ln for ln in lines if ln.startswith(name)).split()
        assert row[1:] == ["90", "0", "0", "0", "0"], row
    rss = doc["rss_mb"]
    assert rss["start"] and rss["end"] and rss["max"] >= max(rss["start"], rss["end"])
    assert doc["cpu_percent"] is not None and doc["cpu_percent"] >= 0
