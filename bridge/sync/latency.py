"""Each performer's frame latency: the last few seconds in a fixed ring, p50/p95 on demand.

The hop loop hands over one block of latencies per publish (``[rows, stride]``, one row
per performer); recording is a slice copy per row, never per-frame Python work.  The
percentiles are computed with numpy over the window when asked, and cached for a short
while: the once-a-second report, the auto delay and ``--stats`` ask far less often than
frames are sent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

#: frames in each performer's window (10 s at 30 fps)
WINDOW_FRAMES = 300
#: percentiles computed at most this often per performer
CACHE_S = 0.25


class LatencyTracker:
    """Running latency (ms) of each performer's frames: the last ``window`` frames."""

    def __init__(self, performers: int, window: int = WINDOW_FRAMES, max_stride: int = 30) -> None:
        self.window = window
        self._ring = np.zeros((performers, window))
        self._count = np.zeros(performers, dtype=np.int64)  #: frames recorded per performer, ever
        self._block = np.zeros((performers, max_stride))
        self._cache: list[tuple[float, float | None, float | None]] = [(-1e9, None, None)] * performers

    def block(self, rows: int, stride: int) -> np.ndarray:
        """A ``[rows, stride]`` array (reused) for the hop loop to fill with this block's latencies."""
        if self._block.shape[0] < rows or self._block.shape[1] < stride:
            self._block = np.zeros((max(rows, self._block.shape[0]), max(stride, self._block.shape[1])))
        return self._block[:rows, :stride]

    def record(self, performers: Sequence[int] | np.ndarray, latencies: np.ndarray) -> None:
        """Row i of ``latencies`` (ms, in frame order) is performer ``performers[i]``'s block."""
        window = self.window
        rows = np.asarray(performers, dtype=np.intp)
        n = latencies.shape[1]
        if rows.shape[0] > 1 and n < window:
            counts = self._count[rows]
            if (counts == counts[0]).all():  # in step (one capture): one copy for every row
                start = int(counts[0] % window)
                first = min(n, window - start)
                self._ring[rows, start : start + first] = latencies[:, :first]
                if first < n:
                    self._ring[rows, : n - first] = latencies[:, first:]
                self._count[rows] += n
                return
        for i, p in enumerate(performers):
            row = latencies[i]
            n = row.shape[0]
            if n >= window:
                self._ring[p] = row[n - window :]
                self._count[p] += n
                continue
            start = int(self._count[p] % window)
            first = min(n, window - start)
            self._ring[p, start : start + first] = row[:first]
            if first < n:
                self._ring[p, : n - first] = row[first:]
            self._count[p] += n

    def frames(self, performer: int) -> int:
        """Frames recorded for ``performer`` so far."""
        return int(self._count[performer])

    def percentiles(self, performer: int, now: float | None = None) -> tuple[float | None, float | None]:
        """(p50, p95) in ms over ``performer``'s window; (None, None) before any frame."""
        now = time.monotonic() if now is None else now
        at, p50, p95 = self._cache[performer]
        if now - at < CACHE_S:
            return p50, p95
        n = min(int(self._count[performer]), self.window)
        if n == 0:
            return None, None
        q = np.percentile(self._ring[performer, :n], (50.0, 95.0))
        p50, p95 = round(float(q[0]), 2), round(float(q[1]), 2)
        self._cache[performer] = (now, p50, p95)
        return p50, p95
