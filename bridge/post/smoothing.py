"""Per-channel smoothing built for one-frame hops: One Euro filter or EMA.

Upstream smooths a whole block with a centred Savitzky-Golay filter, which needs
frames from the future; at one frame per hop the only honest filters are causal
ones, and every causal low-pass adds delay.  Both filters here state theirs:

* EMA ``y += alpha * (x - y)``: a constant ``(1 - alpha) / alpha`` frames.
* One Euro (Casiez et al., CHI 2012): an EMA whose cut-off rises with the
  channel's speed, so slow drift is smoothed hard while fast mouth movements
  pass with little lag.  Delay ``tau / T = 30 / (2 pi fc)`` frames, largest
  (``min_cutoff``) when the channel is still, falling as it moves.

All 52 channels of every performer of a batch are filtered at once: a few numpy
calls per frame of the block (the filters are recursive, so frames are a loop, performers
and channels are not), on preallocated arrays.  Settings are per performer (``[N, 1]``
rows); the state is ``[N, 52]``.  Input is bounded to +-``bridge.post.finite.LIMIT`` first, so
any finite input, however large, gives finite output.
"""

from __future__ import annotations

import math

import numpy as np

from bridge.blendshapes import NUM_BLENDSHAPES
from bridge.frame import FPS
from bridge.post.base import FrameContext, Scratch, as_batch
from bridge.post.finite import bound


def one_euro_delay_frames(cutoff_hz: float, fps: float = FPS) -> float:
    """Group delay at low frequencies of a one-pole low-pass at ``cutoff_hz``, in frames."""
    return fps / (2.0 * math.pi * cutoff_hz)


class Ema:
    """Exponential moving average per channel: ``y += alpha * (x - y)``."""

    ROW_ARRAYS = ("alpha", "delays", "_y", "_started")

    def __init__(self, alpha: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        self.performers = 1
        self.alpha = np.full((1, 1), alpha, dtype=np.float32)  #: [N, 1]
        self.delays = np.array([round((1.0 - alpha) / alpha)])  #: per performer, frames
        self.delay_frames = int(self.delays[0])
        self._y = np.zeros((1, NUM_BLENDSHAPES), dtype=np.float32)
        self._started = np.zeros(1, dtype=bool)
        self._all_started = False
        self._scratch = Scratch()

    def _stacked(self) -> None:
        self.delay_frames = int(self.delays.max())

    def process(self, values: np.ndarray, ctx: FrameContext | None) -> None:
        values, ctx = as_batch(values, ctx)
        bound(values)  # x - y of two huge values of opposite sign would overflow
        rows = None if ctx is None else ctx.rows
        if rows is None:
            if not self._all_started:
                self._all_started = _start(values, self._y, self._started, None)
            self._run(values, self._y, self.alpha)
            return
        y = self._y[rows]
        if not self._all_started:
            self._all_started = _start(values, y, self._started, rows)
        self._run(values, y, self.alpha[rows])
        self._y[rows] = y

    def set_alpha(self, row: int, alpha: float) -> None:
        """Performer ``row``'s smoothing factor from the next frame on (the console's
        ``smoothing`` command); the filter's state carries on, so there is no jump."""
        self.alpha[row, 0] = np.float32(min(max(alpha, 0.01), 1.0))
        self.delays[row] = round((1.0 - float(self.alpha[row, 0])) / float(self.alpha[row, 0]))
        self._stacked()

    def _run(self, values: np.ndarray, y: np.ndarray, alpha: np.ndarray) -> None:
        d = self._scratch.get("d", y.shape)
        if y.shape[0] == 1:  # one performer: a float32 scalar broadcasts cheaper than a [1, 1] array
            alpha = alpha[0, 0]
        for f in range(values.shape[1]):
            x = values[:, f]
            np.subtract(x, y, out=d)
            d *= alpha
            y += d
            x[...] = y

    def restart(self, rows: np.ndarray | None = None) -> None:
        """Start ``rows`` (every performer: None) from their next frame, forgetting the last pose
        (after an input loss)."""
        self._started[slice(None) if rows is None else rows] = False
        self._all_started = False


def _start(values: np.ndarray, y: np.ndarray, started: np.ndarray, rows: np.ndarray | None) -> bool:
    """A performer's first frame starts its filter at that frame's value (then x - y = 0, so
    the first step leaves it there exactly).  ``y``: the batch rows' state; ``started``: every
    performer's flag.  Returns whether every performer has started (then no more checks)."""
    if values.shape[1]:
        fresh = ~(started if rows is None else started[rows])
        if fresh.any():
            y[fresh] = values[fresh, 0]
            started[slice(None) if rows is None else rows] = True
    return bool(started.all())


class OneEuro:
    """One Euro filter on all 52 channels at a fixed 30 fps.

    Per frame: speed ``dx = (x - y_prev) * fps``, smoothed with a fixed cut-off
    ``d_cutoff``; the value's cut-off is ``min_cutoff + beta * |dx|`` and its
    smoothing factor ``a = 1 / (1 + fps / (2 pi fc))``.  Speed is in weight units
    per second (jawOpen 0 -> 0.6 in 100 ms is 6/s).
    """

    ROW_ARRAYS = ("delays", "_a_d", "_k0", "_k1", "_y", "_dy", "_started")
    STRUCTURE = ("fps",)

    def __init__(self, min_cutoff: float = 4.0, beta: float = 0.3, d_cutoff: float = 1.0,
                 fps: float = FPS) -> None:  # fmt: skip
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError("min_cutoff and d_cutoff must be > 0, beta >= 0")
        self.performers = 1
        self.fps = float(fps)
        self.delays = np.array([round(one_euro_delay_frames(min_cutoff, fps))])  #: per performer
        self.delay_frames = int(self.delays[0])
        row = (1, 1)
        self._a_d = np.full(row, 1.0 / (1.0 + fps / (2.0 * math.pi * d_cutoff)), dtype=np.float32)
        # 2 pi fc / fps for the value's cut-off: k0 + k1 * |dx|.  Capped where the filter
        # passes everything anyway (a = 1), so w stays finite for any speed bounded input
        # makes (|dx| < 1e21 with values within +-1e18): k1 * |dx| < 1e36.
        self._k0 = np.full(row, min(2.0 * math.pi * min_cutoff / fps, 1e30), dtype=np.float32)
        self._k1 = np.full(row, min(2.0 * math.pi * beta / fps, 1e15), dtype=np.float32)
        n = NUM_BLENDSHAPES
        self._y = np.zeros((1, n), dtype=np.float32)  # filtered value
        self._dy = np.zeros((1, n), dtype=np.float32)  # filtered speed
        self._started = np.zeros(1, dtype=bool)
        self._all_started = False
        self._scratch = Scratch()

    def _stacked(self) -> None:
        self.delay_frames = int(self.delays.max())

    def process(self, values: np.ndarray, ctx: FrameContext | None) -> None:
        values, ctx = as_batch(values, ctx)
        bound(values)  # speed (x - y) * fps must not overflow
        rows = None if ctx is None else ctx.rows
        # a performer's first frame: y = x, and its speed stays 0 (x - y = 0)
        if rows is None:
            if not self._all_started:
                self._all_started = _start(values, self._y, self._started, None)
            self._run(values, self._y, self._dy, self._a_d, self._k0, self._k1)
            return
        y, dy = self._y[rows], self._dy[rows]
        if not self._all_started:
            self._all_started = _start(values, y, self._started, rows)
        self._run(values, y, dy, self._a_d[rows], self._k0[rows], self._k1[rows])
        self._y[rows], self._dy[rows] = y, dy

    def min_cutoff(self, row: int) -> float:
        """Performer ``row``'s cut-off at rest, in Hz."""
        return float(self._k0[row, 0]) * self.fps / (2.0 * math.pi)

    def set_min_cutoff(self, row: int, min_cutoff: float) -> None:
        """Performer ``row``'s cut-off at rest from the next frame on (the console's
        ``smoothing`` command); the filter's state carries on, so there is no jump."""
        fc = min(max(min_cutoff, 0.01), 15.0)
        self._k0[row, 0] = np.float32(2.0 * math.pi * fc / self.fps)
        self.delays[row] = round(one_euro_delay_frames(fc, self.fps))
        self._stacked()

    def _run(self, values: np.ndarray, y: np.ndarray, dy: np.ndarray, a_d: np.ndarray, k0: np.ndarray,
             k1: np.ndarray) -> None:  # fmt: skip
        t = self._scratch.get("t", y.shape)  # scratch
        a = self._scratch.get("a", y.shape)  # per-channel smoothing factor
        if y.shape[0] == 1:  # one performer: float32 scalars broadcast cheaper than [1, 1] arrays
            a_d, k0, k1 = a_d[0, 0], k0[0, 0], k1[0, 0]
        fps, one = np.float32(self.fps), np.float32(1.0)
        for f in range(values.shape[1]):
            x = values[:, f]
            # speed estimate, low-passed at d_cutoff
            np.subtract(x, y, out=t)
            t *= fps
            t -= dy
            t *= a_d
            dy += t
            # a = w / (1 + w) with w = 2 pi (min_cutoff + beta |dy|) / fps (finite: bounded
            # input, capped k0 and k1, so never inf / inf)
            np.abs(dy, out=a)
            a *= k1
            a += k0
            np.add(a, one, out=t)
            a /= t
            # y += a (x - y)
            np.subtract(x, y, out=t)
            t *= a
            y += t
            x[...] = y

    def restart(self, rows: np.ndarray | None = None) -> None:
        """Start ``rows`` (every performer: None) from their next frame, forgetting the last pose
        and speed (after an input loss)."""
        self._started[slice(None) if rows is None else rows] = False
        self._dy[slice(None) if rows is None else rows] = 0.0
        self._all_started = False
