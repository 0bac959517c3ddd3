"""The status lines in a terminal: one per performer, redrawn about four times a second.

Only when stdout is a terminal (``a2e-bridge run`` checks); it then replaces the 10-s
progress log line, which stays for logs, pipes and services.  Plain ANSI: the lines are
drawn at the bottom and redrawn in place (cursor up, clear line).  A log line printed
between two redraws scrolls them up; the next redraw draws them again below it.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO

#: redraws per second
RATE_HZ = 4.0
METER = 20  #: characters of the level meter (-60..0 dBFS)


def meter(level_dbfs: float, peak_dbfs: float, width: int = METER) -> str:
    """``[#######----|----]``: the level as bars, the peak as ``|``, -60..0 dBFS."""
    fill = int(round(max(0.0, min(1.0, (level_dbfs + 60.0) / 60.0)) * width))
    peak = int(round(max(0.0, min(1.0, (peak_dbfs + 60.0) / 60.0)) * width))
    cells = ["#" if i < fill else "-" for i in range(width)]
    if 0 < peak <= width:
        cells[peak - 1] = "|"
    return "[" + "".join(cells) + "]"


def status_lines(doc: dict[str, Any]) -> list[str]:
    """One line per performer from a monitor snapshot."""
    fps = doc["frames"]["fps"]
    p95 = doc["latency_ms"]["p95"]
    outs = doc["outputs"]
    ok = sum(1 for o in outs if o["state"] == "ok" and o["enabled"])
    lines = []
    width = max((len(p["name"]) for p in doc["performers"]), default=0)
    for p in doc["performers"]:
        speech = "speech" if p["gate_open"] or (p["speech"] or 0.0) >= 0.5 else "  --  "
        clip = " CLIP" if p["clip"] else ""
        lost = " INPUT LOST" if p["input"] == "lost" else ""
        mute = " MUTED" if p["settings"]["mute"] else ""
        lines.append(
            f"{p['name']:<{width}} {meter(p['level_dbfs'], p['peak_dbfs'])} {p['level_dbfs']:6.1f} dBFS "
            f"{speech}  {fps if fps is not None else 0:5.1f} fps  p95 "
            f"{p95 if p95 is not None else 0:6.1f} ms  outputs {ok}/{len(outs)} ok{clip}{lost}{mute}"
        )
    return lines


class TerminalStatus:
    """Redraws the status lines on its own thread until closed."""

    def __init__(self, monitor: Any, out: TextIO | None = None) -> None:
        self.monitor = monitor
        self.out = out or sys.stdout
        self._stop = threading.Event()
        self._drawn = 0
        self._thread = threading.Thread(target=self._run, name="a2e-terminal", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0 / RATE_HZ):
            try:
                self.draw(status_lines(self.monitor.snapshot()))
            except (OSError, ValueError):  # the terminal went away
                return

    def draw(self, lines: list[str]) -> None:
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        body = "".join(f"\x1b[2K{line}\n" for line in lines)
        self.out.write(up + body)
        self.out.flush()
        self._drawn = len(lines)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
