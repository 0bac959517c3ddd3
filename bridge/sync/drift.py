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


#: a change of the two clocks' offset this big from one hop to the next is a step (a period
#: lost or gained by a driver: an xrun), not drift; drift moves 0.03 ms a hop at 1000 ppm
STEP_S = 0.002


class ClockDrift:
    """How much faster the output clock runs than the input clock, in ppm, from how the two
    offsets move apart over the run (reported after ``min_s`` seconds).  Steps (a driver
    that lost or gained a period) are counted apart and left out of the rate."""

    def __init__(self, min_s: float = 10.0) -> None:
        self.min_s = min_s
        self.steps = 0  #: steps seen (each corrected like drift, in silence)
        self._first: tuple[float, float] | None = None  #: (time, output - input offset)
        self._last: tuple[float, float] | None = None
        self._stepped = 0.0  #: the steps' sum (s)

    def restart(self) -> None:
        self._first = self._last = None
        self._stepped = 0.0

    def observe(self, now: float, out_offset: float, in_offset: float) -> None:
        gap = out_offset - in_offset
        if self._first is None:
            self._first = (now, gap)
        elif self._last is not None and abs(gap - self._last[1]) > STEP_S:
            self._stepped += gap - self._last[1]
            self.steps += 1
        self._last = (now, gap)

    @property
    def ppm(self) -> float | None:
        if self._first is None or self._last is None or self._last[0] - self._first[0] < self.min_s:
            return None
        (t0, g0), (t1, g1) = self._first, self._last
        return round(-(g1 - g0 - self._stepped) / (t1 - t0) * 1e6, 2)
