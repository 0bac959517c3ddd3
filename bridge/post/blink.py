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

Per performer: its own settings, its own random generator (seeded per performer index by
the chain, so faces do not blink in unison) and schedule.  A block of many performers is
vectorised over them; only a performer whose schedule moves within the block (a blink
ends: once every few seconds) goes through the frame-by-frame scheduler, which draws its
random numbers in exactly the order the single-stream stage did.  A batch of a few
performers goes through that scheduler performer by performer (``SMALL_BATCH``).
"""

from __future__ import annotations

import numpy as np

from bridge.blendshapes import canonical_index
from bridge.frame import FPS
from bridge.post.base import FrameContext, Scratch, as_batch

#: A natural blink, 7 frames at 30 fps: the lid drops in ~2 frames and rises in ~4.
BLINK_SHAPE = np.array([0.35, 0.88, 1.0, 0.82, 0.46, 0.18, 0.05], dtype=np.float32)
BLINK_FRAMES = BLINK_SHAPE.shape[0]


_SHAPE64 = BLINK_SHAPE.astype(np.float64)


class Blinks:
    """Writes blinks into eyeBlinkLeft/Right (max with the model's value, or instead of it)."""

    delay_frames = 0
    #: Batches of at most this many performers go performer by performer through the
    #: frame-by-frame scheduler (~2 us a frame each; the vectorised path costs ~10 us a call).
    SMALL_BATCH = 4
    ROW_ARRAYS = ("min_frames", "max_frames", "strength", "replace_model", "start", "scale", "_scheduled",
                  "active")
    ROW_LISTS = ("rngs", "starts_by_performer")

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
        self.performers = 1
        min_frames = max(BLINK_FRAMES + 1, round(min_interval_s * fps))
        self.min_frames = np.array([min_frames], dtype=np.int64)
        self.max_frames = np.array([max(min_frames, round(max_interval_s * fps))], dtype=np.int64)
        self.strength = np.array([float(strength)])
        self.replace_model = np.array([bool(replace_model)])
        self.rngs = [np.random.default_rng(seed)]
        self.left = canonical_index("eyeBlinkLeft")
        self.right = canonical_index("eyeBlinkRight")
        #: frame number where each performer's current/next blink starts (valid once scheduled)
        self.start = np.zeros(1, dtype=np.int64)
        self.scale = np.ones(1)  #: each performer's current blink's scale
        self._scheduled = np.zeros(1, dtype=bool)
        #: per performer: blinks on (the console's ``blink`` command turns a performer's off)
        self.active = np.ones(1, dtype=bool)
        #: blink start frames so far, per performer (for tests and plots; bounded)
        self.starts_by_performer: list[list[int]] = [[]]
        self._scratch = Scratch()
        self._stacked()

    def _stacked(self) -> None:
        self._all_replace = bool(self.replace_model.all())
        self._any_replace = bool(self.replace_model.any())
        self._all_active = bool(self.active.all())

    @property
    def starts(self) -> list[int]:
        """Performer 0's blink start frames."""
        return self.starts_by_performer[0]

    def _interval(self, n: int) -> int:
        return int(self.rngs[n].integers(self.min_frames[n], self.max_frames[n] + 1))

    def _schedule(self, n: int, start: int) -> None:
        self.start[n] = start
        self.scale[n] = self.strength[n] * float(self.rngs[n].uniform(0.85, 1.0))
        starts = self.starts_by_performer[n]
        if len(starts) < 100_000:
            starts.append(start)

    def _row(self, n: int, row: np.ndarray, first: int) -> None:
        """Performer ``n``'s block ``row`` [F, 52] frame by frame (its schedule moves in it)."""
        if not self._scheduled[n]:
            # The first blink comes somewhere in the first interval, not at a fixed time.
            self._scheduled[n] = True
            self._schedule(n, first + int(self.rngs[n].integers(BLINK_FRAMES, self.max_frames[n] + 1)))
        left, right = self.left, self.right
        replace = bool(self.replace_model[n])
        start, scale = int(self.start[n]), float(self.scale[n])  # Python numbers: cheaper per frame
        for i in range(row.shape[0]):
            k = first + i
            while k >= start + BLINK_FRAMES:
                self._schedule(n, start + self._interval(n))
                start, scale = int(self.start[n]), float(self.scale[n])
            frame = row[i]
            if replace:
                frame[left] = 0.0
                frame[right] = 0.0
            phase = k - start
            if phase >= 0:
                v = float(BLINK_SHAPE[phase]) * scale
                frame[left] = max(float(frame[left]), v)
                frame[right] = max(float(frame[right]), v)

    def set_active(self, row: int, on: bool) -> None:
        """Blinks on or off for performer ``row`` from the next frame on (off: the model's
        own eye values pass unchanged)."""
        self.active[row] = on
        self._stacked()

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        if self._all_active:
            self._process(values, ctx)
            return
        values, bctx = as_batch(values, ctx)
        assert bctx is not None
        off = ~(self.active if bctx.rows is None else self.active[bctx.rows])
        eyes = [self.left, self.right]
        kept = values[off][..., eyes]  # the switched-off rows' eyes as the model left them
        self._process(values, bctx)
        for j, ch in enumerate(eyes):
            values[off, :, ch] = kept[..., j]

    def _process(self, values: np.ndarray, ctx: FrameContext) -> None:
        values, bctx = as_batch(values, ctx)
        assert bctx is not None
        p, n = values.shape[0], values.shape[1]
        rows = bctx.rows
        first = np.asarray(bctx.first_frame, dtype=np.int64)
        if p <= self.SMALL_BATCH:
            for i in range(p):
                self._row(i if rows is None else int(rows[i]), values[i], int(first[i]))
            return
        if rows is None:
            start, scale, scheduled, replace = self.start, self.scale, self._scheduled, self.replace_model
        else:
            start, scale = self.start[rows], self.scale[rows]
            scheduled, replace = self._scheduled[rows], self.replace_model[rows]
        # Performers whose schedule moves in this block (their blink ends, or they have none
        # yet) take the frame-by-frame path; that is rare, the rest is a few vector calls.
        sc = self._scratch
        phase0 = sc.get("phase0", (p,), np.int64)
        np.subtract(first, start, out=phase0)  # phase of each row's frame 0
        moving = phase0 + (n - 1) >= BLINK_FRAMES
        moving |= ~scheduled
        if moving.any():
            for i in np.flatnonzero(moving):
                self._row(int(i) if rows is None else int(rows[i]), values[i], int(first[i]))
            still = ~moving
            if not still.any():
                return
        else:
            still = None
        left, right = values[..., self.left], values[..., self.right]  # [P, F] views
        if self._any_replace:
            zero = replace if still is None else replace & still
            if still is None and self._all_replace:
                left[...] = 0.0
                right[...] = 0.0
            elif zero.any():
                left[zero] = 0.0
                right[zero] = 0.0
        # phase in 0..6 is a blink frame (phases >= 7 belong to the moving rows, done above)
        phase = phase0[:, None] + np.arange(n)
        blinking = phase >= 0
        if still is not None:
            blinking &= still[:, None]
        if not blinking.any():
            return
        np.clip(phase, 0, BLINK_FRAMES - 1, out=phase)
        v = (_SHAPE64[phase] * scale[:, None]).astype(np.float32)
        v[~blinking] = -np.inf  # max(x, -inf) = x: frames outside a blink keep their value
        np.maximum(left, v, out=left)
        np.maximum(right, v, out=right)
