"""Per-channel smoothing built for one-frame hops: One Euro filter or EMA.

Upstream smooths a whole block with a centred Savitzky-Golay filter, which needs
frames from the future; at one frame per hop the only honest filters are causal
ones, and every causal low-pass adds delay.  Both filters here state theirs:

* EMA ``y += alpha * (x - y)``: a constant ``(1 - alpha) / alpha`` frames.
* One Euro (Casiez et al., CHI 2012): an EMA whose cut-off rises with the
  channel's speed, so slow drift is smoothed hard while fast mouth movements
  pass with little lag.  Delay ``tau / T = 30 / (2 pi fc)`` frames, largest
  (``min_cutoff``) when the channel is still, falling as it moves.

All 52 channels are filtered at once with preallocated vectors: a few numpy
calls per frame, no allocation.  Input is bounded to +-``bridge.finite.LIMIT`` first, so
any finite input, however large, gives finite output.
"""

from __future__ import annotations

import math

import numpy as np

from bridge.blendshapes import NUM_BLENDSHAPES
from bridge.finite import bound
from bridge.frame import FPS
from bridge.post.base import FrameContext


def one_euro_delay_frames(cutoff_hz: float, fps: float = FPS) -> float:
    """Group delay at low frequencies of a one-pole low-pass at ``cutoff_hz``, in frames."""
    return fps / (2.0 * math.pi * cutoff_hz)


class Ema:
    """Exponential moving average per channel: ``y += alpha * (x - y)``."""

    def __init__(self, alpha: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = np.float32(alpha)
        self.delay_frames = round((1.0 - alpha) / alpha)
        self._y = np.zeros(NUM_BLENDSHAPES, dtype=np.float32)
        self._d = np.zeros(NUM_BLENDSHAPES, dtype=np.float32)
        self._started = False

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        y, d = self._y, self._d
        bound(values)  # x - y of two huge values of opposite sign would overflow
        for row in values:
            if not self._started:
                y[:] = row
                self._started = True
                continue
            np.subtract(row, y, out=d)
            d *= self.alpha
            y += d
            row[:] = y

    def restart(self) -> None:
        """Start from the next frame, forgetting the last pose (after an input loss)."""
        self._started = False


class OneEuro:
    """One Euro filter on all 52 channels at a fixed 30 fps.

    Per frame: speed ``dx = (x - y_prev) * fps``, smoothed with a fixed cut-off
    ``d_cutoff``; the value's cut-off is ``min_cutoff + beta * |dx|`` and its
    smoothing factor ``a = 1 / (1 + fps / (2 pi fc))``.  Speed is in weight units
    per second (jawOpen 0 -> 0.6 in 100 ms is 6/s).
    """

    def __init__(self, min_cutoff: float = 4.0, beta: float = 0.3, d_cutoff: float = 1.0,
                 fps: float = FPS) -> None:  # fmt: skip
        if min_cutoff <= 0 or d_cutoff <= 0 or beta < 0:
            raise ValueError("min_cutoff and d_cutoff must be > 0, beta >= 0")
        self.min_cutoff, self.beta, self.fps = float(min_cutoff), float(beta), float(fps)
        self.delay_frames = round(one_euro_delay_frames(min_cutoff, fps))
        self._a_d = np.float32(1.0 / (1.0 + fps / (2.0 * math.pi * d_cutoff)))
        # 2 pi fc / fps for the value's cut-off: k0 + k1 * |dx|.  Capped where the filter
        # passes everything anyway (a = 1), so w stays finite for any speed bounded input
        # makes (|dx| < 1e21 with values within +-1e18): k1 * |dx| < 1e36.
        self._k0 = np.float32(min(2.0 * math.pi * min_cutoff / fps, 1e30))
        self._k1 = np.float32(min(2.0 * math.pi * beta / fps, 1e15))
        n = NUM_BLENDSHAPES
        self._y = np.zeros(n, dtype=np.float32)  # filtered value
        self._dy = np.zeros(n, dtype=np.float32)  # filtered speed
        self._t = np.zeros(n, dtype=np.float32)  # scratch
        self._a = np.zeros(n, dtype=np.float32)  # scratch: per-channel smoothing factor
        self._started = False

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        y, dy, t, a = self._y, self._dy, self._t, self._a
        bound(values)  # speed (x - y) * fps must not overflow
        for row in values:
            if not self._started:
                y[:] = row
                self._started = True
                continue
            # speed estimate, low-passed at d_cutoff
            np.subtract(row, y, out=t)
            t *= np.float32(self.fps)
            t -= dy
            t *= self._a_d
            dy += t
            # a = w / (1 + w) with w = 2 pi (min_cutoff + beta |dy|) / fps (finite: bounded
            # input, capped k0 and k1, so never inf / inf)
            np.abs(dy, out=a)
            a *= self._k1
            a += self._k0
            np.add(a, np.float32(1.0), out=t)
            a /= t
            # y += a (x - y)
            np.subtract(row, y, out=t)
            t *= a
            y += t
            row[:] = y

    def restart(self) -> None:
        """Start from the next frame, forgetting the last pose and speed (after an input loss)."""
        self._started = False
        self._dy[:] = 0.0
