"""Run statistics: constant-memory percentiles and the JSON summary of a run.

Histograms have fixed bins, so recording is O(1) with no allocation and a
run of hours costs the same memory as a run of seconds.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Histogram:
    """Millisecond values in fixed bins (``resolution_ms`` wide up to ``max_ms``)."""

    def __init__(self, max_ms: float = 5000.0, resolution_ms: float = 0.05) -> None:
        self.resolution = resolution_ms
        self.counts = np.zeros(int(max_ms / resolution_ms) + 1, dtype=np.int64)
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, ms: float) -> None:
        i = int(ms / self.resolution)
        if i >= self.counts.shape[0]:
            i = self.counts.shape[0] - 1
        elif i < 0:
            i = 0
        self.counts[i] += 1
        self.n += 1
        self.total += ms
        if ms > self.max:
            self.max = ms

    def add_many(self, ms: np.ndarray) -> None:
        """:meth:`add` for every value of ``ms`` (a block of frames), in a few array calls."""
        if ms.shape[0] == 0:
            return
        i = (ms / self.resolution).astype(np.int64)
        np.clip(i, 0, self.counts.shape[0] - 1, out=i)
        np.add.at(self.counts, i, 1)
        self.n += int(ms.shape[0])
        self.total += float(ms.sum())
        top = float(ms.max())
        if top > self.max:
            self.max = top

    def percentile(self, q: float) -> float | None:
        if self.n == 0:
            return None
        rank = int(np.ceil(q / 100.0 * self.n))
        idx = int(np.searchsorted(np.cumsum(self.counts), max(rank, 1)))
        return round((idx + 0.5) * self.resolution, 3)

    def summary(self) -> dict[str, float | None]:
        return {
            "p50": self.percentile(50),
            "p99": self.percentile(99),
            "mean": round(self.total / self.n, 3) if self.n else None,
            "max": round(self.max, 3) if self.n else None,
        }


@dataclass
class RunStats:
    """What one run did; ``as_dict()`` is the ``--stats`` / ``bench --json`` document."""

    latency: Histogram = field(default_factory=Histogram)
    inference: Histogram = field(default_factory=Histogram)
    interval: Histogram = field(default_factory=Histogram)
    #: where a hop's latency goes (ms): ``wake`` its newest audio's arrival -> the hop loop
    #: starts it; ``hop`` start -> its frames handed to the sender (the model included);
    #: ``queue`` hand-off -> the sender starts on them (sends: the sender's ``send_ms``)
    phases: dict[str, Histogram] = field(
        default_factory=lambda: {"wake": Histogram(), "hop": Histogram(), "queue": Histogram()})
    frames_published: int = 0
    frames_dropped: int = 0
    frames_expected: int = 0
    nonfinite_frames: int = 0  #: frames whose model output had NaN/Inf (sent with last finite values)
    inferences: int = 0
    busy_s: float = 0.0  #: hop-loop time spent working (not waiting for audio)
    inference_s: float = 0.0
    busy_cpu_s: float = 0.0  #: the same, in the hop thread's CPU time
    inference_cpu_s: float = 0.0
    provider: str = ""
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    _wall0: float = field(default_factory=time.monotonic)
    _cpu0: float = field(default_factory=time.process_time)
    _last_send: float | None = None

    def record_send(self, now: float, latency_ms: float, interval: bool = True) -> None:
        """One frame sent; ``interval``: it counts for the send interval (the first performer's
        frames only, when there are several: the interval is one face's frame pacing)."""
        self.latency.add(latency_ms)
        if not interval:
            self.frames_published += 1
            return
        if self._last_send is not None:
            self.interval.add((now - self._last_send) * 1000.0)
        self._last_send = now
        self.frames_published += 1

    def record_latencies(self, latency_ms: np.ndarray) -> None:
        """Frames sent that do not count for the send interval (see :meth:`record_send`),
        recorded as one block."""
        self.latency.add_many(latency_ms)
        self.frames_published += int(latency_ms.shape[0])

    def as_dict(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self._wall0, 1e-9)
        cpu = time.process_time() - self._cpu0
        frames = max(self.frames_published, 1)
        stride = self.frames_published / self.inferences if self.inferences else None
        return {
            "frames_published": self.frames_published,
            "frames_expected": self.frames_expected,
            "frames_dropped": self.frames_dropped,
            "nonfinite_frames": self.nonfinite_frames,
            "latency_ms": self.latency.summary(),
            "inference_ms": self.inference.summary(),
            "interval_ms": self.interval.summary(),
            "stride": round(stride, 3) if stride else None,
            "inferences": self.inferences,
            "provider": self.provider,
            "model": self.model,
            "cpu_percent": round(100.0 * cpu / wall, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
            # CPU time of the hop thread outside inference: immune to waiting for a core.
            "overhead_ms_per_frame": round(
                1000.0 * max(self.busy_cpu_s - self.inference_cpu_s, 0.0) / frames, 4
            ),
            # The same work in wall time, which includes waiting for a core on a busy machine.
            "overhead_wall_ms_per_frame": round(
                1000.0 * max(self.busy_s - self.inference_s, 0.0) / frames, 4
            ),
            "wall_s": round(wall, 3),
            **self.extra,
        }
