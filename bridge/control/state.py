"""The newest values of every performer, written by the hop loop, read by the console.

Preallocated arrays with a leading performer axis, filled once per post block by
:class:`~bridge.control.live.LiveControls` (a few row copies, no allocation).  Readers
(the web console, /metrics, the terminal line) copy what they need from their own
threads without a lock: the hop loop never waits for them, and a reader that races a
write sees a value one frame old, which a display cannot tell.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bridge.blendshapes import NUM_BLENDSHAPES


class LiveState:
    """Per performer: the last frame's raw and post values, its loudness, the block's peak."""

    def __init__(self, performers: int) -> None:
        n = performers
        self.raw = np.zeros((n, NUM_BLENDSHAPES), dtype=np.float32)  #: the model's values, before post
        self.post = np.zeros((n, NUM_BLENDSHAPES), dtype=np.float32)  #: what the outputs got
        self.rms = np.zeros(n, dtype=np.float32)  #: RMS of the last frame's own audio
        self.peak = np.zeros(n, dtype=np.float32)  #: highest |sample| since a reader last took it
        self.speech = np.full(n, np.nan, dtype=np.float32)  #: CTC speech probability (NaN: none)
        self.frame = np.full(n, -1, dtype=np.int64)  #: number of the newest frame
        self.last_block = 0.0  #: ``time.monotonic()`` of the newest block
        #: per performer, the newest live calibration's outcome (plain dict), or None
        self.calibration: list[dict[str, Any] | None] = [None] * n

    def take_peak(self) -> np.ndarray:
        """The peaks since the last call, and start again (one reader: the monitor)."""
        out = self.peak.copy()
        self.peak[...] = 0.0
        return out
