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
        for i, b in enumerate(rows):
            performer, hop = due[b]
            values[i] = out[b, lo : lo + f]
            first[i] = hop.first
            perf[i] = performer.index
            start = frame_end_sample(hop.first - 1) if hop.first else 0
            width = max(width, frame_end_sample(hop.last) - start)
        audio = _view(self._audio, (p_count, width))
        for i, b in enumerate(rows):
            _performer, hop = due[b]
            start = frame_end_sample(hop.first - 1) if hop.first else 0
            span = due[b][0].stream.history.span(start, frame_end_sample(hop.last))
            row = audio[i]
            row[: width - span.shape[0]] = 0.0
            row[width - span.shape[0] :] = span
            # each frame's own samples: boundaries relative to the block's start
            bounds = np.fromiter((frame_end_sample(hop.first + k - 1) - start if hop.first + k else 0
                                  for k in range(f)), dtype=np.intp, count=f)  # fmt: skip
            sums = np.add.reduceat(span * span, bounds)
            lens = np.diff(np.append(bounds, span.shape[0]))
            np.sqrt(sums / lens, out=rms[i])
        every = p_count == self.performers and bool((perf == self._all).all())
        ctx = FrameContext(first, rms, None, head, audio=audio, rows=None if every else perf)
        return values, ctx

    def speech(self, rows: int, stride: int) -> np.ndarray:
        """A ``[rows, stride]`` buffer for the speech probability of a block."""
        return _view(self._speech, (rows, stride))


def _view(flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The first ``prod(shape)`` elements of ``flat`` as a C-contiguous array of ``shape``."""
    return flat[: int(np.prod(shape))].reshape(shape)
