"""What the engine holds for sync: the latency tracker, the report, the passthrough.

The engine calls :meth:`SyncHub.block` and :meth:`SyncHub.published` once per published
block, :meth:`start`/:meth:`stop` around the run and :meth:`counters` for ``--stats``;
the passthrough is fed by its capture group's tap (``CaptureGroup.tap``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.config import BridgeConfig
from bridge.errors import BridgeError
from bridge.outputs.base import Output
from bridge.sync.delay import DelayPolicy
from bridge.sync.devices import resolve_output_device
from bridge.sync.latency import LatencyTracker
from bridge.sync.report import LatencyReport

if TYPE_CHECKING:
    from bridge.streams.capture import CaptureGroup
    from bridge.streams.performer import Performer
    from bridge.sync.passthrough import Passthrough


class SyncHub:
    """Per-performer latency (and its report), and the voice passthrough if configured."""

    def __init__(self, cfg: BridgeConfig, outputs: Sequence[Output], performers: Sequence[Performer],
                 captures: Sequence[CaptureGroup], window_frames: int) -> None:  # fmt: skip
        self.names = [p.name for p in cfg.cast]
        self.tracker = LatencyTracker(len(cfg.cast), max_stride=max(window_frames, 1))
        self.report = LatencyReport(list(zip(cfg.outputs, outputs, strict=True)), self.tracker)
        self.passthrough: Passthrough | None = None
        self._block = self.tracker.block(1, 1)
        sync = cfg.sync
        if sync.passthrough_device is None:
            return
        index = self.names.index(sync.performer) if sync.performer is not None else 0
        performer = next(p for p in performers if p.index == index)
        capture = captures[performer.group]
        inp = cfg.cast[index].input
        if inp.kind == "file" and not inp.realtime:
            raise BridgeError(f"{cfg.source}: sync.passthrough_device plays the voice as it is "
                              "captured: it needs a device input or a file played at real time "
                              "(not --fast)")  # fmt: skip
        channel = sync.channel if sync.channel is not None else inp.channel
        source = capture.source
        # a channel index is the device's (a group opens every channel up to the highest)
        take = None if channel == "mix" else int(channel)
        from bridge.sync.passthrough import Passthrough

        fixed = None if sync.delay_ms == "auto" else float(sync.delay_ms)
        policy = DelayPolicy(sync.samplerate or source.samplerate, fixed, sync.receiver_ms)
        tracker = self.tracker

        def p95() -> tuple[float | None, int]:
            return tracker.percentiles(index)[1], tracker.frames(index)

        try:
            device = resolve_output_device(sync.passthrough_device)
            self.passthrough = Passthrough(device, source.samplerate, source.channels, take, inp.blocksize,
                                           policy, p95, getattr(source, "worker", None),
                                           out_rate=sync.samplerate)  # fmt: skip
        except BridgeError as e:
            raise BridgeError(f"{cfg.source}: {e}") from None
        self.passthrough.set_silence(sync.silence_db)
        self.passthrough.attach(source.ring)
        capture.tap = self.passthrough.feed

    def block(self, rows: int, stride: int) -> np.ndarray:
        """The array the hop loop fills with one block's latencies (ms), ``[rows, stride]``."""
        self._block = self.tracker.block(rows, stride)
        return self._block

    def published(self, performers: Sequence[int] | np.ndarray, now: float) -> None:
        """The block :meth:`block` gave was sent: record it, report once a second."""
        self.tracker.record(performers, self._block)
        self.report.maybe_send(now)

    def tick(self) -> None:
        """A turn of the hop loop without audio (an input lost): the passthrough's faults still said."""
        if self.passthrough is not None:
            self.passthrough.tick()

    def start(self) -> None:
        if self.passthrough is not None:
            self.passthrough.start()

    def stop(self) -> None:
        if self.passthrough is not None:
            self.passthrough.stop()

    def passthrough_state(self) -> dict[str, Any] | None:
        """The voice passthrough's counters now (for a live view), None without one."""
        if self.passthrough is None:
            return None
        doc = self.passthrough.counters()
        doc.pop("corrections_log", None)
        doc.pop("clock_offset_log", None)
        doc["lost"] = self.passthrough.lost
        return doc

    def describe(self) -> str:
        """The progress line's part: the voice passthrough's state (empty without one)."""
        return "" if self.passthrough is None else f"; {self.passthrough.describe()}"

    def counters(self) -> dict[str, Any]:
        """For ``--stats``: each performer's latency p50/p95 (last 10 s), the passthrough's counters."""
        now = time.monotonic() + 1.0  # past the cache: the final values
        doc: dict[str, Any] = {
            "latency_window_ms": {
                name: dict(zip(("p50", "p95"), self.tracker.percentiles(i, now), strict=True))
                for i, name in enumerate(self.names)
            }
        }
        if self.report.targets:
            doc["latency_reports_sent"] = self.report.sent
        if self.passthrough is not None:
            doc["passthrough"] = self.passthrough.counters()
        return doc
