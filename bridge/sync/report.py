"""``/a2e/latency`` (p50, p95 in ms) once a second to every OSC output that asks for it.

One performer: ``/a2e/latency f f``.  An output serving several performers sends one
message per performer under its subject, as its frames are: ``/a2e/<subject>/latency``.
Built once a second with python-osc (not per frame), sent on the output's own socket.
"""

from __future__ import annotations

from collections.abc import Sequence

from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.config import OutputConfig
from bridge.outputs.base import Output
from bridge.sync.latency import LatencyTracker

LATENCY_ADDRESS = "/a2e/latency"
EVERY_S = 1.0


def latency_address(subject: str | None) -> str:
    return LATENCY_ADDRESS if subject is None else f"/a2e/{subject}/latency"


class LatencyReport:
    """Sends each asking output its performers' latency p50/p95, once a second."""

    def __init__(self, outputs: Sequence[tuple[OutputConfig, Output]], tracker: LatencyTracker) -> None:
        self.tracker = tracker
        self.targets: list[tuple[Output, list[tuple[int, str]]]] = []
        for cfg, out in outputs:
            if cfg.kind != "osc" or not cfg.latency_report:
                continue
            several = len(out.encoders) > 1
            served = [(i, latency_address(getattr(enc, "subject", None) if several else None))
                      for i, enc in sorted(out.encoders.items())]  # fmt: skip
            self.targets.append((out, served))
        self._next = 0.0
        self.sent = 0

    def maybe_send(self, now: float) -> None:
        """Send the report if a second has passed since the last one."""
        if not self.targets or now < self._next:
            return
        self._next = now + EVERY_S
        for out, served in self.targets:
            for performer, address in served:
                p50, p95 = self.tracker.percentiles(performer, now)
                if p50 is None or p95 is None:
                    continue
                msg = OscMessageBuilder(address)
                msg.add_arg(float(p50), OscMessageBuilder.ARG_TYPE_FLOAT)
                msg.add_arg(float(p95), OscMessageBuilder.ARG_TYPE_FLOAT)
                out.transport.send(msg.build().dgram)
                self.sent += 1
