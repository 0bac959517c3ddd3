"""The buffers of one batched hop, made once: windows in, blocks and their context out.

Per turn the engine gathers the windows of the performers whose hop is due into
``windows[:B]`` (one model call), then, per group of hops with the same stride, copies
each row's published frames into ``values[:P, :F]`` and fills the context the post
chain reads (frame numbers, per-frame loudness, the block's audio right-aligned,
which performers the rows are).  Nothing here allocates once the shapes are warm.
"""

from __future__ import annotations

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

    def gather_windows(self, due: list[tuple[Performer, Hop]]) -> np.ndarray:
        """Each due performer's window, one row each: ``[B, window_samples]`` (a view)."""
        for b, (p, hop) in enumerate(due):
            self.windows[b] = p.stream.history.window_ending(hop.window_end)
            self.identities[b] = p.identity
        return self.windows[: len(due)]

    def block(self, out: np.ndarray, rows: list[int], due: list[tuple[Performer, Hop]],
              lo: int, stride: int) -> tuple[np.ndarray, FrameContext]:  # fmt: skip
        """Batch rows ``rows`` of the model output (all with this ``stride``, their frames
        starting at window frame ``lo``) as a post block ``[P, F, 52]`` and its context."""
        p_count, f = len(rows), stride
        values = _view(self._values, (p_count, f, NUM_BLENDSHAPES))
        rms, head = _view(self._rms, (p_count, f)), _view(self._head, (p_count, f, len(HEAD_EYE_NAMES)))
        first, perf = self.first[:p_count], self.rows[:p_count]
        head[...] = 0.0
        width = 0
        r0 = rows[0]
        consecutive = rows[-1] - r0 + 1 == p_count
        if consecutive:  # the usual case: one copy for the block
            values[...] = out[r0 : r0 + p_count, lo : lo + f]
        for i, b in enumerate(rows):
            performer, hop = due[b]
            if not consecutive:
                values[i] = out[b, lo : lo + f]
            first[i] = hop.first
            perf[i] = performer.index
            start = frame_end_sample(hop.first - 1) if hop.first else 0
            width = max(width, frame_end_sample(hop.last) - start)
        audio = _view(self._audio, (p_count, width))
        # Each frame's own samples, as flat offsets into ``audio`` (rows right-aligned, their
        # left padding zero): one reduceat gives every frame's sum of squares.
        starts: list[int] = []
        lens: list[int] = []
        for i, b in enumerate(rows):
            performer, hop = due[b]
            start = frame_end_sample(hop.first - 1) if hop.first else 0
            end = frame_end_sample(hop.last)
            span = performer.stream.history.span(start, end)
            n = span.shape[0]
            row = audio[i]
            row[: width - n] = 0.0
            row[width - n :] = span
            base, prev = i * width + width - n - start, start
            for k in range(f):
                e = frame_end_sample(hop.first + k)
                starts.append(base + prev)
                lens.append(e - prev)
                prev = e
        flat = audio.reshape(-1)
        square = _view(self._square, (flat.shape[0],))
        np.multiply(flat, flat, out=square)
        flat_rms = rms.reshape(-1)
        np.add.reduceat(square, starts, out=flat_rms)
        np.divide(flat_rms, lens, out=flat_rms)
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

