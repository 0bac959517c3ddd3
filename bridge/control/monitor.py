"""What the console shows, as plain JSON-able values: the state, the warnings, the health.

The monitor runs on the console's threads (web server, terminal line, /metrics), never in
the hop loop.  It reads the engine's counters and the :class:`~bridge.control.state.LiveState`
arrays without a lock, and keeps a short history of its own (two seconds of samples) for
what a run-long counter cannot say: frames per second now, latency percentiles now,
frames dropped lately.  Readers share one snapshot per ``MIN_INTERVAL_S``.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from bridge.blendshapes import ARKIT_NAMES, canonical_index
from bridge.control.live import LiveControls, db

#: readers asking more often than this share a snapshot
MIN_INTERVAL_S = 0.04
#: the "now" figures (fps, latency percentiles, recent drops) cover this much time
WINDOW_S = 2.0
#: latency/inference histogram bins kept per sample (0.05 ms each: up to 1 s; beyond is one bin)
_BINS = 20000
#: frames must have flowed this recently for /health to say ok or degraded (else down)
FLOWING_S = 1.0
SILENT_DBFS, SILENT_S = -60.0, 5.0
CLIP_PEAK, CLIP_HOLD_S = 0.999, 1.0
#: the mouth channels whose raw value the page shows beside the post value
RAW_CHANNELS = ("jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthSmileLeft",
                "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthLowerDownLeft",
                "mouthUpperUpLeft")  # fmt: skip
_RAW_IDX = [canonical_index(n) for n in RAW_CHANNELS]
_DIGITS = re.compile(r"-?\d+(\.\d+)?")


def _hist(h: Any) -> np.ndarray:
    """A Histogram's counts folded to ``_BINS + 1`` bins (the last holds everything beyond)."""
    c = h.counts
    out = np.empty(_BINS + 1, dtype=np.int64)
    out[:_BINS] = c[:_BINS]
    out[_BINS] = int(c[_BINS:].sum())
    return out


def _percentile(counts: np.ndarray, q: float, resolution: float) -> float | None:
    n = int(counts.sum())
    if n == 0:
        return None
    rank = max(1, int(math.ceil(q / 100.0 * n)))
    idx = int(np.searchsorted(np.cumsum(counts), rank))
    return round((idx + 0.5) * resolution, 2)


class Monitor:
    """Snapshots of a running bridge for the console's readers (any thread)."""

    def __init__(self, bridge: Any, live: LiveControls, commands: Any) -> None:
        self.bridge, self.live, self.commands = bridge, live, commands
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, int, int, np.ndarray, np.ndarray, int]] = deque()
        self._snapshot: dict[str, Any] | None = None
        self._at = 0.0
        n = len(bridge.performers)
        self._clip_until = np.zeros(n)
        self._loud_since = np.full(n, time.monotonic())  #: last time each input was above silence
        self._peak = np.zeros(n, dtype=np.float32)
        self.started = time.monotonic()
        self.events: deque[dict[str, Any]] = deque(maxlen=50)  #: warnings as they began
        self._active: set[str] = set()

    # ---- the snapshot ---------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The whole live state (shared by readers within ``MIN_INTERVAL_S``)."""
        with self._lock:
            now = time.monotonic()
            if self._snapshot is None or now - self._at >= MIN_INTERVAL_S:
                self._snapshot = self._build(now)
                self._at = now
            return self._snapshot

    def _sample(self, now: float) -> tuple[float, int, int, np.ndarray, np.ndarray, int]:
        b = self.bridge
        s = b.stats
        published = sum(p.published for p in b.performers)
        dropped = sum(p.scheduler.dropped for p in b.performers)
        return (now, published, dropped, _hist(s.latency), _hist(s.inference), s.inferences)

    def _build(self, now: float) -> dict[str, Any]:
        b, live = self.bridge, self.live
        st = live.state
        s = b.stats
        sample = self._sample(now)
        self._samples.append(sample)
        while len(self._samples) > 2 and now - self._samples[0][0] > WINDOW_S:
            self._samples.popleft()
        old = self._samples[0]
        if len(self._samples) == 1:  # the first look: the figures since the start
            old = (self.started, 0, 0, np.zeros_like(sample[3]), np.zeros_like(sample[4]), 0)
        dt = max(now - old[0], 1e-9)
        lat, inf = sample[3] - old[3], sample[4] - old[4]
        res_l, res_i = s.latency.resolution, s.inference.resolution
        recent_frames = sample[1] - old[1]
        recent_inf = sample[5] - old[5]
        recent_drops = sample[2] - old[2]
        # frames per second of one face (every performer's frames, averaged over performers)
        fps = round(recent_frames / dt / len(b.performers), 1)
        peaks = st.take_peak()
        self._clip_until[peaks >= CLIP_PEAK] = now + CLIP_HOLD_S
        flowing = self._flowing(now)
        performers = []
        for i, p in enumerate(b.performers):
            g = b.groups[p.group]
            level = db(float(st.rms[i]))
            lost = g.watch.loss is not None
            if level > SILENT_DBFS or lost:
                self._loud_since[i] = now
            speech = float(st.speech[i])
            settings = live.settings(i)
            p50, p95 = b.sync.tracker.percentiles(i, now)
            performers.append({
                "index": i, "name": p.name, "subject": p.subject, "frame": int(st.frame[i]),
                "level_dbfs": round(level, 1), "peak_dbfs": round(db(float(peaks[i])), 1),
                "clip": bool(self._clip_until[i] > now),
                "speech": None if math.isnan(speech) else round(speech, 3),
                "gate_open": settings.get("gate_open"),
                "input": "lost" if lost else "ok", "input_name": g.source.name,
                "published": p.published, "dropped": p.scheduler.dropped,
                "latency_ms": {"p50": p50, "p95": p95},  # its own frames, the last 10 s
                "values": [round(float(v), 4) for v in st.post[i]],
                "raw": {n: round(float(st.raw[i, j]), 4)
                        for n, j in zip(RAW_CHANNELS, _RAW_IDX, strict=True)},
                "settings": settings, "calibration": st.calibration[i],
                "silent_s": round(now - self._loud_since[i], 1),
            })  # fmt: skip
        outputs = []
        for oid, o in zip(live.output_ids, b.outputs, strict=True):
            h = o.health()
            stats = o.stats()
            outputs.append({"id": oid, "name": o.name, "enabled": bool(o.enabled), "state": h.state,
                            "error": h.error, "sent": int(stats.get("sent", 0)),
                            "errors": int(stats.get("errors", 0)), "stats": dict(stats)})  # fmt: skip
        fallback = s.extra.get("fallback")
        if isinstance(fallback, dict) and str(fallback.get("reason", "")).startswith("switch requested"):
            fallback = None  # a switch asked for from the console is no fallback
        doc: dict[str, Any] = {
            "time": round(time.time(), 3),
            "uptime_s": round(now - self.started, 1),
            "model": {"preset": b.model.preset, "provider": b.runner.provider, "file": b.runner.path.name,
                      "fallback": dict(fallback) if isinstance(fallback, dict) else None,
                      "fallback_error": s.extra.get("fallback_error")},  # fmt: skip
            "frames": {"published": s.frames_published, "dropped": sample[2], "fps": fps,
                       "dropped_recent": recent_drops, "nonfinite": b.guard.frames},  # fmt: skip
            "latency_ms": {"p50": _percentile(lat, 50, res_l), "p95": _percentile(lat, 95, res_l),
                           "run_p50": s.latency.percentile(50),
                           "run_p95": s.latency.percentile(95)},  # fmt: skip
            "inference_ms": {"p50": _percentile(inf, 50, res_i), "p95": _percentile(inf, 95, res_i)},
            "stride": round(recent_frames / recent_inf / len(b.performers), 2) if recent_inf else None,
            "max_latency_ms": b.cfg.schedule.max_latency_ms,
            "performers": performers,
            "passthrough": b.sync.passthrough_state(),  # the voice played as late as the face
            "outputs": outputs,
            "commands": {"accepted": self.commands.accepted, "refused": self.commands.refused},
            "flowing": flowing,
        }
        doc["warnings"] = self._warnings(doc, now)
        doc["health"] = self._health(doc)
        doc["events"] = list(self.events)
        return doc

    def _flowing(self, now: float) -> bool:
        """Frames went out within ``FLOWING_S``: through post, or at rest while an input is lost."""
        b = self.bridge
        if now - self.live.state.last_block < FLOWING_S:
            return True
        for g in b.groups:
            loss = g.watch.loss
            if loss is not None and now - loss.next_frame_due < FLOWING_S:
                return True
        return False

    def _warnings(self, doc: dict[str, Any], now: float) -> list[str]:
        out = []
        several = len(doc["performers"]) > 1
        for p in doc["performers"]:
            who = f"{p['name']}: " if several else ""
            if p["input"] == "lost":
                out.append(f"{who}input {p['input_name']!r} lost (the face rests until it is back)")
            elif p["silent_s"] >= SILENT_S:
                out.append(f"{who}input silent for {p['silent_s']:.0f} s (below {SILENT_DBFS:g} dBFS): "
                           "is the microphone muted or the wrong one?")  # fmt: skip
            if p["clip"]:
                out.append(f"{who}input clipping (peak at full scale): lower the input gain")
            cal = p["calibration"]
            if cal and cal.get("state") == "refused":
                out.append(cal["reason"])
        for o in doc["outputs"]:
            if o["state"] == "unreachable":
                out.append(f"output {o['id']}: no receiver ({o['error'] or 'unreachable'})")
            if not o["enabled"]:
                out.append(f"output {o['id']}: disabled from the console")
        if doc["frames"]["dropped_recent"]:
            out.append(f"model missing deadlines: {doc['frames']['dropped_recent']} frame(s) dropped in the "
                       f"last {WINDOW_S:g} s")  # fmt: skip
        p95 = doc["latency_ms"]["p95"]
        if p95 is not None and p95 > doc["max_latency_ms"]:
            out.append(f"latency p95 {p95:g} ms is over max_latency_ms {doc['max_latency_ms']:g}")
        if doc["model"]["fallback"]:
            fb = doc["model"]["fallback"]
            out.append(f"running {fb['to']} instead of {fb['from']}: {fb['reason']}")
        if not doc["flowing"]:
            out.append("no frames are flowing")
        # an event when a warning begins; its figures (seconds, counts) may change meanwhile
        current = {_DIGITS.sub("#", w): w for w in out}
        for key, w in current.items():
            if key not in self._active:
                self.events.append({"time": round(time.time(), 3), "warning": w})
        self._active = set(current)
        return out

    def _health(self, doc: dict[str, Any]) -> dict[str, Any]:
        if not doc["flowing"]:
            return {"status": "down", "reasons": ["no frames are flowing"]}
        reasons = []
        for p in doc["performers"]:
            if p["input"] == "lost":
                reasons.append(f"input lost: {p['input_name']}")
        if doc["model"]["fallback"]:
            reasons.append(f"fallback active: {doc['model']['fallback']['to']}")
        for o in doc["outputs"]:
            if o["state"] == "unreachable":
                reasons.append(f"receiver unreachable: {o['id']} ({o['error']})")
        if doc["frames"]["dropped_recent"]:
            reasons.append(f"deadlines missed: {doc['frames']['dropped_recent']} frame(s) dropped lately")
        return {"status": "degraded" if reasons else "ok", "reasons": reasons,
                "fps": doc["frames"]["fps"], "frames_published": doc["frames"]["published"]}  # fmt: skip

    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) for /health: 200 ok or degraded while frames flow, else 503."""
        h = self.snapshot()["health"]
        return (503 if h["status"] == "down" else 200), h


#: the 52 names in the order of every performer's ``values``
NAMES = list(ARKIT_NAMES)
