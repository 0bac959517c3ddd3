"""Procedural eye blinks, scheduled on the frame clock.

An audio-driven model has no reason to blink, and a face that never blinks
looks dead.  Upstream pastes 7-frame blink shapes into each block every 40-100
frames, but only when a block has more than 7 new frames, so at one-frame hops
it never fires.  Here the schedule lives on frame numbers instead: the next
blink starts ``uniform(min_interval_s, max_interval_s)`` after the previous one
started, whatever the hop size, and a blink that straddles hops simply
continues.  Frames skipped by the scheduler skip the same part of the blink.

Delay: none.  Each blink is one 7-frame shape (233 ms: a fast close, a frame
held shut, a slower open), scaled 85-100 % of ``strength`` so no two are alike.
"""

from __future__ import annotations

import numpy as np

from bridge.blendshapes import canonical_index
from bridge.frame import FPS
from bridge.post.base import FrameContext

#: A natural blink, 7 frames at 30 fps: the lid drops in ~2 frames and rises in ~4.
BLINK_SHAPE = np.array([0.35, 0.88, 1.0, 0.82, 0.46, 0.18, 0.05], dtype=np.float32)
BLINK_FRAMES = BLINK_SHAPE.shape[0]


class Blinks:
    """Writes blinks into eyeBlinkLeft/Right (max with the model's value, or instead of it)."""

    delay_frames = 0

    def __init__(
        self,
        *,
        min_interval_s: float = 2.0,
        max_interval_s: float = 6.0,
        strength: float = 1.0,
        replace_model: bool = True,
        seed: int | None = None,
        fps: int = FPS,
    ) -> None:
        if not 0 < min_interval_s <= max_interval_s:
            raise ValueError("blink intervals need 0 < min_interval_s <= max_interval_s")
        self.min_frames = max(BLINK_FRAMES + 1, round(min_interval_s * fps))
        self.max_frames = max(self.min_frames, round(max_interval_s * fps))
        self.strength = float(strength)
        self.replace_model = replace_model
        self.rng = np.random.default_rng(seed)
        self.left = canonical_index("eyeBlinkLeft")
        self.right = canonical_index("eyeBlinkRight")
        self.start: int | None = None  #: frame number where the current/next blink starts
        self.scale = 1.0
        self.starts: list[int] = []  #: blink start frames so far (for tests and plots; bounded)

    def _interval(self) -> int:
        return int(self.rng.integers(self.min_frames, self.max_frames + 1))

    def _schedule(self, start: int) -> None:
        self.start = start
        self.scale = self.strength * float(self.rng.uniform(0.85, 1.0))
        if len(self.starts) < 100_000:
            self.starts.append(start)

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        if self.start is None:
            # The first blink comes somewhere in the first interval, not at a fixed time.
            self._schedule(ctx.first_frame + int(self.rng.integers(BLINK_FRAMES, self.max_frames + 1)))
        left, right = self.left, self.right
        for i in range(values.shape[0]):
            k = ctx.first_frame + i
            assert self.start is not None
            while k >= self.start + BLINK_FRAMES:
                self._schedule(self.start + self._interval())
            row = values[i]
            if self.replace_model:
                row[left] = 0.0
                row[right] = 0.0
            phase = k - self.start
            if phase >= 0:
                v = float(BLINK_SHAPE[phase]) * self.scale
                row[left] = max(float(row[left]), v)
                row[right] = max(float(row[right]), v)
