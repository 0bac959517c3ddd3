"""The two clocks the voice passthrough lives between, and how they drift apart.

The capture's clock (each block's arrival and the ring frame it ends at) and the output's
(each callback's time and the first stream sample it fills) are measured against
``time.monotonic()``.  A callback is late far more often than early, so the lower envelope
of ``t - samples / rate`` over the last seconds is each clock's true schedule (the jitter
of a busy machine only adds).  How the two envelopes move apart over the run is
the drift between the devices' crystals, in ppm; :class:`~bridge.sync.delay.DelayPolicy`
corrects it by single samples in silence.
"""

from __future__ import annotations

import numpy as np

#: how much of each clock's recent history its schedule is taken from
WINDOW_S = 2.0


#: the low percentile taken as a clock's schedule: the minimum, but for the odd early event
SCHEDULE_PERCENTILE = 10.0


def clock_offset(times: np.ndarray, samples: np.ndarray, rate: float) -> float:
    """``times - samples / rate`` at its 10th percentile: the schedule of a clock whose events
    are mostly late, never by much early.  Not the minimum: a driver that catches up after a
    hiccup (JACK's dummy driver does) runs a few periods early, and one such event would
    shift a minimum, and the delay held with it, for a whole window."""
    return float(np.percentile(times - samples / rate, SCHEDULE_PERCENTILE))


def recent(slots_time: np.ndarray, slots_pos: np.ndarray, count: int,
           keep: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The last ``keep`` of ``count`` events written round-robin into the slot arrays (views or copies)."""
    size = slots_time.shape[0]
    keep = min(keep, count, size)
    idx = np.arange(count - keep, count) % size
    return slots_time[idx], slots_pos[idx]


class ClockDrift:
    """How much faster the output clock runs than the input clock, in ppm, from how the two
    offsets move apart over the run (reported after ``min_s`` seconds)."""

    def __init__(self, min_s: float = 10.0) -> None:
        self.min_s = min_s
        self._first: tuple[float, float, float] | None = None
        self._last: tuple[float, float, float] | None = None

    def restart(self) -> None:
        self._first = self._last = None

    def observe(self, now: float, out_offset: float, in_offset: float) -> None:
        if self._first is None:
            self._first = (now, out_offset, in_offset)
        self._last = (now, out_offset, in_offset)

    @property
    def ppm(self) -> float | None:
        if self._first is None or self._last is None or self._last[0] - self._first[0] < self.min_s:
            return None
        t0, o0, i0 = self._first
        t1, o1, i1 = self._last
        return round(-((o1 - o0) - (i1 - i0)) / (t1 - t0) * 1e6, 2)
