"""Nothing non-finite leaves the bridge: NaN/Inf from the model are replaced before anything
else sees them.

A broken or overdriven model (0/0 in a graph, an fp16 overflow, audio at 3e38) emits NaN or
Inf.  Every receiver would take them at face value (a Live Link rig with NaN weights
vanishes, standard JSON parsers reject ``nan``), and a post-processing stage fed one NaN keeps
it in its state forever.  So the hop loop hands each block the model returned to
:class:`OutputGuard` right after inference, before post-processing: a frame's non-finite
channels take that channel's last finite value (rest, 0, if it never had one), the frame is
counted, and the fault is said once when it starts and once when it ends.  Values beyond
+-:data:`LIMIT` (1e18, meaningless as a weight) are sent as the limit, so no encoder's
arithmetic (a sum of weighted channels) can overflow either.

Post-processing stages bound their working values with :func:`bound` where their arithmetic
could overflow, so that finite input, however large, stays finite through them.
"""

from __future__ import annotations

import logging

import numpy as np

from bridge.blendshapes import NUM_BLENDSHAPES
from bridge.frame import FPS

log = logging.getLogger(__name__)

#: Largest magnitude post-processing works with.  No blendshape weight means anything near
#: it, and below it every stage's arithmetic (differences, speeds x 30, gains) stays finite
#: in float32.
LIMIT = np.float32(1e18)
_NEG_LIMIT = -LIMIT

#: Finite frames in a row after which a non-finite episode counts as over (1 s): a model
#: that flickers between NaN and numbers is one episode, not a line per frame.
END_AFTER_FRAMES = FPS


def bound(values: np.ndarray) -> np.ndarray:
    """Clip ``values`` to +-:data:`LIMIT` in place (Inf becomes the limit; NaN stays NaN).

    Two ufuncs with float32 scalars: a third of ``np.clip``'s overhead on one frame."""
    np.minimum(values, LIMIT, out=values)
    return np.maximum(values, _NEG_LIMIT, out=values)


class LastFinite:
    """Replaces NaN/Inf in a block ``(n, channels)`` with each channel's last finite value
    (and bounds the rest to +-:data:`LIMIT`).

    Vectorised over the whole block and allocation-free once the largest block has been
    seen: the block is viewed below one row holding the last finite values, each cell gets
    the index of the latest finite row at or above it (a running maximum), and the bad cells
    are gathered from there.  The common case, every value within the limit, is three cheap
    numpy calls (abs, compare, count).
    """

    def __init__(self, channels: int, max_frames: int = 32) -> None:
        self.channels = channels
        self.last = np.zeros(channels, dtype=np.float32)  #: rest until a finite value arrives
        self._grow(max_frames)

    def _grow(self, frames: int) -> None:
        c = self.channels
        self._finite = np.zeros((frames + 1, c), dtype=bool)
        self._abs = np.zeros((frames, c), dtype=np.float32)
        self._bad = np.zeros((frames, c), dtype=bool)
        self._rows_ok = np.zeros(frames + 1, dtype=bool)
        self._ext = np.zeros((frames + 1, c), dtype=np.float32)
        self._idx = np.zeros((frames + 1, c), dtype=np.intp)
        self._filled = np.zeros((frames + 1, c), dtype=np.float32)
        self._row_ids = np.arange(frames + 1, dtype=np.intp)[:, None]
        self._col_ids = np.arange(c, dtype=np.intp)[None, :]
        #: per row of the last block that had a non-finite value: True where the row had one
        self.bad_rows = np.zeros(frames, dtype=bool)

    def fix(self, block: np.ndarray) -> int:
        """Fix ``block`` in place; return how many of its rows had a non-finite value."""
        n = block.shape[0]
        if n == 0:
            return 0
        if n > self._bad.shape[0]:
            self._grow(n)
        finite = self._finite[1 : n + 1]
        # |x| <= LIMIT is False for NaN, Inf and huge values alike: one test for the common case
        np.less_equal(np.abs(block, out=self._abs[:n]), LIMIT, out=finite)
        if np.count_nonzero(finite) == finite.size:  # a third of .all()'s cost
            self.last[:] = block[n - 1]
            return 0
        np.isfinite(block, out=finite)
        if np.count_nonzero(finite) == finite.size:  # finite, some beyond the limit
            bound(block)
            self.last[:] = block[n - 1]
            return 0
        c = self.channels
        ext, idx, filled = self._ext[: n + 1], self._idx[: n + 1], self._filled[: n + 1]
        self._finite[0] = True  # row 0: the last finite values
        ext[0] = self.last
        ext[1:] = block
        # idx = row number where finite, else 0; a running max gives the latest finite row.
        np.multiply(self._finite[: n + 1], self._row_ids[: n + 1], out=idx)
        np.maximum.accumulate(idx, axis=0, out=idx)
        idx *= c
        idx += self._col_ids
        np.take(ext.reshape(-1), idx, out=filled)
        bad = self._bad[:n]
        np.logical_not(finite, out=bad)
        np.copyto(block, filled[1:], where=bad)
        bound(block)
        self.last[:] = block[n - 1]
        rows_ok = self._rows_ok[:n]
        np.all(finite, axis=1, out=rows_ok)
        np.logical_not(rows_ok, out=self.bad_rows[:n])
        return n - int(np.count_nonzero(rows_ok))


class OutputGuard:
    """What the hop loop runs on the model's block: blendshapes and speech probability made
    finite, non-finite frames counted, the fault said once when it starts and when it ends."""

    def __init__(self, channels: int = NUM_BLENDSHAPES, max_frames: int = 32) -> None:
        self.shapes = LastFinite(channels, max_frames)
        self.speech = LastFinite(1, max_frames)
        self.frames = 0  #: frames that had a non-finite value (blendshapes or speech)
        self.episodes = 0  #: times the fault started
        self.active = False  #: inside an episode now
        self._episode_frames = 0
        self._finite_run = 0
        self._ended_at = 0

    def check(self, block: np.ndarray, speech_prob: np.ndarray | None, first_frame: int) -> int:
        """Make ``block`` (n x channels) and ``speech_prob`` (n,) finite in place; return how
        many frames had to be fixed."""
        n = block.shape[0]
        bad_shapes = self.shapes.fix(block)
        bad_speech = self.speech.fix(speech_prob.reshape(-1, 1)) if speech_prob is not None else 0
        if bad_shapes or bad_speech:
            rows = self._rows(n, bad_shapes, bad_speech)
            bad = int(np.count_nonzero(rows))
            self.frames += bad
            self._finite_run = int(np.argmax(rows[::-1]))  # finite rows after the last bad one
            if not self.active:
                self._start(first_frame + int(np.argmax(rows)), bad_shapes, bad_speech)
            self._episode_frames += bad
            return bad
        if self.active:
            self._finite_run += n
            if self._finite_run >= END_AFTER_FRAMES:
                self._end(first_frame + n - self._finite_run)
        return 0

    def _rows(self, n: int, bad_shapes: int, bad_speech: int) -> np.ndarray:
        """Which rows of the block had a non-finite value (blendshapes or speech)."""
        if not bad_speech:
            return self.shapes.bad_rows[:n]
        if not bad_shapes:
            return self.speech.bad_rows[:n]
        return self.shapes.bad_rows[:n] | self.speech.bad_rows[:n]

    def _start(self, frame: int, bad_shapes: int, bad_speech: int) -> None:
        self.active = True
        self.episodes += 1
        self._episode_frames = 0
        parts = []
        if bad_shapes:
            row = int(np.argmax(self.shapes.bad_rows))
            parts.append(f"{np.count_nonzero(self.shapes._bad[row])} blendshape channel(s)")
        if bad_speech:
            parts.append("the speech probability")
        log.warning(
            "model output is NaN/Inf in %s from frame %d; sending each channel's last finite "
            "value instead (the model or its input is broken: check the model file and the audio level)",
            " and ".join(parts), frame,
        )  # fmt: skip

    def _end(self, frame: int) -> None:
        self.active = False
        log.warning(
            "model output is finite again from frame %d (%d frame(s) had NaN/Inf and were held)",
            frame, self._episode_frames,
        )  # fmt: skip

    def finish(self) -> int:
        """At the end of a run: say so if the fault was still on; return :attr:`frames`."""
        if self.active:
            log.warning(
                "model output was still NaN/Inf when the run ended (%d frame(s) held in all)", self.frames
            )
            self.active = False
        return self.frames

    def describe(self) -> str:
        """For the progress line: empty while every frame has been finite."""
        return f"non-finite frames {self.frames}" if self.frames else ""
