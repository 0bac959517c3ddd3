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

Several performers: a guard is built for N of them and checks ``[P, F, channels]`` blocks
(``rows`` says which performers, as in the post chain); each performer has its own last
finite values, its own episodes and counts, and its own log lines (naming it), so one
performer's broken output never touches another's frames or messages.  The single-stream
form (``[F, channels]`` blocks) is the batch of one.
"""

from __future__ import annotations

import logging

import numpy as np

from bridge.blendshapes import NUM_BLENDSHAPES
from bridge.frame import FPS
from bridge.post.base import Scratch

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
    """Replaces NaN/Inf in a block with each channel's last finite value (and bounds the rest to
    +-:data:`LIMIT`), per performer: blocks ``[P, F, channels]`` (or ``[F, channels]`` for one).

    Vectorised over the whole batch and allocation-free once the largest block has been
    seen: each performer's block is viewed below one row holding its last finite values,
    each cell gets the index of the latest finite row at or above it (a running maximum
    along the frames), and the bad cells are gathered from there.  The common case, every
    value within the limit, is three cheap numpy calls (abs, compare, count) and one copy.
    """

    def __init__(self, channels: int, max_frames: int = 32, performers: int = 1) -> None:
        self.channels = channels
        self.performers = performers
        #: each performer's last finite values ``[N, channels]``; rest until a finite value arrives
        self.last_by_performer = np.zeros((performers, channels), dtype=np.float32)
        self._scratch = Scratch()
        #: per frame of the last block that had a non-finite value: True where it had one ([P, F])
        self.bad_frames = np.zeros((performers, max_frames), dtype=bool)

    @property
    def last(self) -> np.ndarray:
        """The last finite values: ``[channels]`` for one performer, else ``[N, channels]``."""
        return self.last_by_performer[0] if self.performers == 1 else self.last_by_performer

    @property
    def bad_rows(self) -> np.ndarray:
        """Performer 0's :attr:`bad_frames` (the single-stream view)."""
        return self.bad_frames[0]

    def fix(self, block: np.ndarray, rows: np.ndarray | None = None) -> int:
        """Fix ``block`` in place; return how many frames (of all its performers) had a
        non-finite value (:attr:`bad_frames` says which)."""
        batch = block if block.ndim == 3 else block[None]
        p, n, c = batch.shape
        if n == 0 or p == 0:
            return 0
        last = self.last_by_performer
        finite = self._scratch.get("finite", (p, n + 1, c), bool)[:, 1:]
        # |x| <= LIMIT is False for NaN, Inf and huge values alike: one test for the common case
        np.less_equal(np.abs(batch, out=self._scratch.get("abs", (p, n, c), np.float32)), LIMIT, out=finite)
        if np.count_nonzero(finite) == finite.size:  # a third of .all()'s cost
            self._keep_last(batch, rows)
            return 0
        np.isfinite(batch, out=finite)
        if np.count_nonzero(finite) == finite.size:  # finite, some beyond the limit
            bound(batch)
            self._keep_last(batch, rows)
            return 0
        fin_ext = self._scratch.get("finite", (p, n + 1, c), bool)
        ext = self._scratch.get("ext", (p, n + 1, c), np.float32)
        idx = self._scratch.get("idx", (p, n + 1, c), np.intp)
        filled = self._scratch.get("filled", (p, n + 1, c), np.float32)
        fin_ext[:, 0] = True  # row 0: the last finite values
        ext[:, 0] = last if rows is None else last[rows]
        ext[:, 1:] = batch
        # idx = row number where finite, else 0; a running max gives the latest finite row;
        # then the flat index of that row's cell: (performer * (n + 1) + row) * c + channel
        np.multiply(fin_ext, np.arange(n + 1, dtype=np.intp)[None, :, None], out=idx)
        np.maximum.accumulate(idx, axis=1, out=idx)
        idx += (np.arange(p, dtype=np.intp) * (n + 1))[:, None, None]
        idx *= c
        idx += np.arange(c, dtype=np.intp)
        np.take(ext.reshape(-1), idx, out=filled)
        bad = self._scratch.get("bad", (p, n, c), bool)
        np.logical_not(finite, out=bad)
        np.copyto(batch, filled[:, 1:], where=bad)
        self._last_bad = bad
        bound(batch)
        self._keep_last(batch, rows)
        if self.bad_frames.shape[0] < p or self.bad_frames.shape[1] < n:
            self.bad_frames = np.zeros(
                (max(p, self.bad_frames.shape[0]), max(n, self.bad_frames.shape[1])), bool
            )
        frames_ok = self._scratch.get("frames_ok", (p, n), bool)
        np.all(finite, axis=2, out=frames_ok)
        self.bad_frames[...] = False
        np.logical_not(frames_ok, out=self.bad_frames[:p, :n])
        return p * n - int(np.count_nonzero(frames_ok))

    def _keep_last(self, batch: np.ndarray, rows: np.ndarray | None) -> None:
        if rows is None:
            self.last_by_performer[...] = batch[:, -1]
        else:
            self.last_by_performer[rows] = batch[:, -1]

    def bad_channels(self, i: int, f: int) -> int:
        """How many channels were non-finite in batch row ``i``'s frame ``f`` of the last block
        that had a non-finite value."""
        return int(np.count_nonzero(self._last_bad[i, f]))


class OutputGuard:
    """What the hop loop runs on the model's block: blendshapes and speech probability made
    finite, non-finite frames counted, the fault said once when it starts and when it ends,
    per performer."""

    def __init__(self, channels: int = NUM_BLENDSHAPES, max_frames: int = 32, performers: int = 1,
                 names: list[str] | None = None) -> None:  # fmt: skip
        """``names``: each performer's name for the log lines (none: the single-stream lines)."""
        self.performers = performers
        self.names = names
        self.shapes = LastFinite(channels, max_frames, performers)
        self.speech = LastFinite(1, max_frames, performers)
        self.frames_by_performer = np.zeros(performers, dtype=np.int64)  #: frames that had a NaN/Inf
        self.episodes_by_performer = np.zeros(performers, dtype=np.int64)  #: times the fault started
        self.active_by_performer = np.zeros(performers, dtype=bool)  #: inside an episode now
        self._episode_frames = np.zeros(performers, dtype=np.int64)
        self._finite_run = np.zeros(performers, dtype=np.int64)
        self._n_active = 0

    # the totals over all performers (for one performer: its own, as before)
    @property
    def frames(self) -> int:
        return int(self.frames_by_performer.sum())

    @property
    def episodes(self) -> int:
        return int(self.episodes_by_performer.sum())

    @property
    def active(self) -> bool:
        return self._n_active > 0

    def check(self, block: np.ndarray, speech_prob: np.ndarray | None, first_frame: int | np.ndarray,
              rows: np.ndarray | None = None) -> int:  # fmt: skip
        """Make ``block`` (``[P, F, channels]``, or ``[F, channels]`` for one) and
        ``speech_prob`` (``[P, F]`` / ``(F,)``) finite in place; return how many frames had to
        be fixed.  ``first_frame``: each row's first frame number ``[P]`` (or an int);
        ``rows``: which performers the rows are (None: all, in order)."""
        batch = block if block.ndim == 3 else block[None]
        p, n = batch.shape[0], batch.shape[1]
        bad_shapes = self.shapes.fix(batch, rows)
        bad_speech = 0
        if speech_prob is not None:
            sp = speech_prob.reshape(p, n, 1)
            bad_speech = self.speech.fix(sp, rows)
        if bad_shapes or bad_speech:
            return self._faulty(p, n, bad_shapes, bad_speech, first_frame, rows)
        if self._n_active:
            self._finite(np.arange(p), n, first_frame, rows)
        return 0

    def _performer(self, i: int, rows: np.ndarray | None) -> int:
        return i if rows is None else int(rows[i])

    def _finite(self, batch_rows: np.ndarray, n: int, first_frame: int | np.ndarray,
                rows: np.ndarray | None) -> None:  # fmt: skip
        """Batch rows whose block was all finite: episodes end after a second of that."""
        perf = batch_rows if rows is None else rows[batch_rows]
        on = self.active_by_performer[perf]
        if not on.any():
            return
        for i in batch_rows[on]:
            k = self._performer(int(i), rows)
            self._finite_run[k] += n
            if self._finite_run[k] >= END_AFTER_FRAMES:
                first = int(first_frame) if np.ndim(first_frame) == 0 else int(first_frame[i])  # type: ignore[index]
                self._end(k, first + n - int(self._finite_run[k]))

    def _faulty(self, p: int, n: int, bad_shapes: int, bad_speech: int, first_frame: int | np.ndarray,
                rows: np.ndarray | None) -> int:  # fmt: skip
        frames = self._rows(p, n, bad_shapes, bad_speech)  # [P, F]: which frames had a NaN/Inf
        per_row = np.count_nonzero(frames, axis=1)
        for i in np.flatnonzero(per_row):
            k = self._performer(int(i), rows)
            row = frames[i]
            bad = int(per_row[i])
            self.frames_by_performer[k] += bad
            self._finite_run[k] = int(np.argmax(row[::-1]))  # finite frames after the last bad one
            if not self.active_by_performer[k]:
                first = int(first_frame) if np.ndim(first_frame) == 0 else int(first_frame[i])  # type: ignore[index]
                shapes_bad = bool(bad_shapes) and bool(self.shapes.bad_frames[i, :n].any())
                speech_bad = bool(bad_speech) and bool(self.speech.bad_frames[i, :n].any())
                self._start(k, i, first + int(np.argmax(row)), shapes_bad, speech_bad)
            self._episode_frames[k] += bad
        clean = np.flatnonzero(per_row == 0)
        if self._n_active and clean.size:
            self._finite(clean, n, first_frame, rows)
        return int(per_row.sum())

    def _rows(self, p: int, n: int, bad_shapes: int, bad_speech: int) -> np.ndarray:
        """Which frames of the block had a non-finite value (blendshapes or speech), ``[P, F]``."""
        if not bad_speech:
            return self.shapes.bad_frames[:p, :n]
        if not bad_shapes:
            return self.speech.bad_frames[:p, :n]
        return self.shapes.bad_frames[:p, :n] | self.speech.bad_frames[:p, :n]

    def _who(self, k: int) -> str:
        return f"performer {self.names[k]}: " if self.names else ""

    def _start(self, k: int, i: int, frame: int, bad_shapes: bool, bad_speech: bool) -> None:
        self.active_by_performer[k] = True
        self._n_active += 1
        self.episodes_by_performer[k] += 1
        self._episode_frames[k] = 0
        parts = []
        if bad_shapes:
            f = int(np.argmax(self.shapes.bad_frames[i]))
            parts.append(f"{self.shapes.bad_channels(i, f)} blendshape channel(s)")
        if bad_speech:
            parts.append("the speech probability")
        log.warning(
            "%smodel output is NaN/Inf in %s from frame %d; sending each channel's last finite "
            "value instead (the model or its input is broken: check the model file and the audio level)",
            self._who(k), " and ".join(parts), frame,
        )  # fmt: skip

    def _end(self, k: int, frame: int) -> None:
        self.active_by_performer[k] = False
        self._n_active -= 1
        log.warning(
            "%smodel output is finite again from frame %d (%d frame(s) had NaN/Inf and were held)",
            self._who(k), frame, int(self._episode_frames[k]),
        )  # fmt: skip

    def finish(self) -> int:
        """At the end of a run: say so for each performer whose fault was still on; return
        :attr:`frames`."""
        for k in np.flatnonzero(self.active_by_performer):
            log.warning(
                "%smodel output was still NaN/Inf when the run ended (%d frame(s) held in all)",
                self._who(int(k)), int(self.frames_by_performer[k]),
            )  # fmt: skip
            self.active_by_performer[k] = False
        self._n_active = 0
        return self.frames

    def describe(self) -> str:
        """For the progress line: empty while every frame has been finite."""
        return f"non-finite frames {self.frames}" if self.frames else ""
