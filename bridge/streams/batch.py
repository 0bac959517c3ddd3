"""The buffers of one batched hop, made once: windows in, blocks and their context out.

Per turn the engine gathers the windows of the performers whose hop is due into
``windows[:B]`` (one model call), then, per group of hops with the same stride, copies
each row's published frames into ``values[:P, :F]`` and fills the context the post
chain reads (frame numbers, per-frame loudness, the block's audio right-aligned,
which performers the rows are).  Nothing here allocates once the shapes are warm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bridge.blendshapes import HEAD_EYE_NAMES, NUM_BLENDSHAPES
from bridge.frame import frame_end_sample
from bridge.post.base import FrameContext
from bridge.streams.performer import Performer
from bridge.streams.scheduler import Hop


class HopBatch:
    """Preallocated ``[N, ...]`` buffers for up to ``performers`` rows."""

    def __init__(self, performers: int, window_samples: int, window_frames: int) -> None:
        n, f = performers, window_frames
        self.performers = n
        self.windows = np.zeros((n, window_samples), dtype=np.float32)
        # Written once now: np.zeros maps its pages on first write, and the first hop's gather
        # then paid for all of them (29 ms for 256 one-second windows).
        self.windows.fill(0.0)
        self.identities = np.zeros(n, dtype=np.int64)
        # flat storage, viewed as C-contiguous [P, F, ...] for each block (stages may reshape)
        self._values = np.zeros(n * f * NUM_BLENDSHAPES, dtype=np.float32)
        self._rms = np.zeros(n * f, dtype=np.float32)
        self._speech = np.zeros(n * f, dtype=np.float32)
        self._head = np.zeros(n * f * len(HEAD_EYE_NAMES), dtype=np.float32)
        self._audio = np.zeros(n * (frame_end_sample(f) + 1), dtype=np.float32)
        self._square = np.zeros_like(self._audio)
        self.first = np.zeros(n, dtype=np.int64)
        self.rows = np.zeros(n, dtype=np.intp)
        self._all = np.arange(n, dtype=np.intp)
        self._last: tuple[tuple[int, int, int], int] | None = None  #: the last call's rows and window end
        self._runs_due: list[tuple[Performer, Hop]] | None = None  #: the call :meth:`runs` last saw
        self._runs_all: list[tuple[int, int]] = []
        self._starts = np.zeros(n * f, dtype=np.intp)
        self._lens = np.zeros(n * f, dtype=np.float32)

    def runs(self, due: list[tuple[Performer, Hop]]) -> list[tuple[int, int]]:
        """``due``'s rows as runs that copy as one slice (see :func:`_runs`), worked out once
        per model call however many steps ask."""
        if due is not self._runs_due:
            self._runs_due, self._runs_all = due, _runs(due, range(len(due)))
        return self._runs_all

    def gather_windows(self, due: list[tuple[Performer, Hop]]) -> np.ndarray:
        """Each due performer's window, one row each: ``[B, window_samples]`` (a view).
        Performers in step on shared histories are copied as one slice."""
        windows = self.windows
        for b, e in self.runs(due):
            p, hop = due[b]
            history = p.stream.history
            if e - b > 1:
                assert history.shared is not None
                windows[b:e] = history.shared.windows(slice(history.row, history.row + e - b), hop.window_end)
            else:
                windows[b] = history.window_ending(hop.window_end)
        return windows[: len(due)]

    def identities_for(self, due: list[tuple[Performer, Hop]]) -> np.ndarray:
        """Each due performer's LAM identity, one row each (a view)."""
        self.identities[: len(due)] = [p.identity for p, _hop in due]
        return self.identities[: len(due)]

    def continuing(self, due: list[tuple[Performer, Hop]]) -> np.ndarray | None:
        """The new samples of ``due``'s windows (``[B, k]``, a view) when they continue the
        last call's: the same performers in the same rows (consecutive rows of one history
        array, or one performer), every window moved on by the same 1..window samples.
        None otherwise.  Called once per model call: it remembers this one."""
        n = len(due)
        runs = self.runs(due)
        p, hop = due[0]
        history = p.stream.history
        if runs != [(0, n)]:
            self._last = None
            return None
        key = (id(history.shared) if history.shared is not None else id(history), history.row, n)
        last, self._last = self._last, (key, hop.window_end)
        if last is None or last[0] != key:
            return None
        start, end = last[1], hop.window_end
        if not 0 < end - start <= history.window:
            return None
        if history.shared is not None:
            return history.shared.spans(slice(history.row, history.row + n), start, end)
        return history.span(start, end)[None, :]

    def block(self, out: np.ndarray, rows: list[int], due: list[tuple[Performer, Hop]],
              lo: int, stride: int) -> tuple[np.ndarray, FrameContext]:  # fmt: skip
        """Batch rows ``rows`` of the model output (all with this ``stride``, their frames
        starting at window frame ``lo``) as a post block ``[P, F, 52]`` and its context."""
        p_count, f = len(rows), stride
        values = _view(self._values, (p_count, f, NUM_BLENDSHAPES))
        rms, head = _view(self._rms, (p_count, f)), _view(self._head, (p_count, f, len(HEAD_EYE_NAMES)))
        first, perf = self.first[:p_count], self.rows[:p_count]
        head[...] = 0.0
        r0 = rows[0]
        if rows[-1] - r0 + 1 == p_count:  # the usual case: one copy for the block
            values[...] = out[r0 : r0 + p_count, lo : lo + f]
        else:
            for i, b in enumerate(rows):
                values[i] = out[b, lo : lo + f]
        perf[:] = [due[b][0].index for b in rows]
        runs = self.runs(due) if len(rows) == len(due) else _runs(due, rows)  # all rows, in order
        # each run's frame boundaries: frame k of the run's rows is [bounds[k], bounds[k + 1])
        spans = []
        width = 0
        for i0, i1 in runs:
            hop = due[rows[i0]][1]
            first[i0:i1] = hop.first
            bounds = [frame_end_sample(hop.first - 1) if hop.first else 0]
            bounds += [frame_end_sample(hop.first + k) for k in range(f)]
            spans.append(bounds)
            width = max(width, bounds[-1] - bounds[0])
        audio = _view(self._audio, (p_count, width))
        # Each frame's own samples, as flat offsets into ``audio`` (rows right-aligned, their
        # left padding zero): one reduceat gives every frame's sum of squares.
        starts = _view(self._starts, (p_count, f))
        lens = _view(self._lens, (p_count, f))
        for (i0, i1), bounds in zip(runs, spans, strict=True):
            history = due[rows[i0]][0].stream.history
            start, end = bounds[0], bounds[-1]
            n = end - start
            if i1 - i0 > 1:
                assert history.shared is not None
                audio[i0:i1, width - n :] = history.shared.spans(slice(history.row, history.row + i1 - i0),
                                                                 start, end)  # fmt: skip
            else:
                audio[i0, width - n :] = history.span(start, end)
            audio[i0:i1, : width - n] = 0.0
            edges = np.asarray(bounds)
            starts[i0:i1] = (self._all[i0:i1, None] * width + (width - n - start)) + edges[None, :-1]
            lens[i0:i1] = np.diff(edges)[None, :]
        flat = audio.reshape(-1)
        square = _view(self._square, (flat.shape[0],))
        np.multiply(flat, flat, out=square)
        flat_rms = rms.reshape(-1)
        np.add.reduceat(square, starts.reshape(-1), out=flat_rms)
        np.divide(flat_rms, lens.reshape(-1), out=flat_rms)
        np.sqrt(flat_rms, out=flat_rms)
        every = p_count == self.performers and bool((perf == self._all).all())
        ctx = FrameContext(first, rms, None, head, audio=audio, rows=None if every else perf)
        return values, ctx

    def speech(self, rows: int, stride: int) -> np.ndarray:
        """A ``[rows, stride]`` buffer for the speech probability of a block."""
        return _view(self._speech, (rows, stride))


def _view(flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The first ``prod(shape)`` elements of ``flat`` as a C-contiguous array of ``shape``."""
    return flat[: int(np.prod(shape))].reshape(shape)



def _runs(due: list[tuple[Performer, Hop]], rows: Sequence[int]) -> list[tuple[int, int]]:
    """``rows`` (indices into ``due``) as runs ``[i0, i1)`` that can be copied as one slice:
    one hop shared by performers on consecutive rows of one :class:`SharedHistories` (the
    engine plans performers in step once, so their hops are one object)."""
    runs = []
    i, n = 0, len(rows)
    while i < n:
        p, hop = due[rows[i]]
        history = p.stream.history
        shared, row = history.shared, history.row
        j = i + 1
        if shared is not None:
            while j < n:
                q, other = due[rows[j]]
                h = q.stream.history
                if other is not hop or h.shared is not shared or h.row != row + (j - i):
                    break
                j += 1
        runs.append((i, j))
        i = j
    return runs
