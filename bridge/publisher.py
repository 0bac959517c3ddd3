"""Post-processing -> frames -> outputs: the stage after the model.

The hop loop cuts each model call's output into blocks (:class:`FaceBlock`: the rows of
one stride, their context and CTC logits) and hands them to the :class:`FramePublisher`,
which runs the speech track, the finite guard and the post chain on the whole block and
hands its frames, as one :class:`~bridge.frame.FrameBatch`, to the
:class:`~bridge.sender.FrameSender` (the outputs; on a thread of its own with several
performers).

Everything a block's frames touch after the model and before the sends lives here: the
post chain's state, the finite guard, each performer's speech track, rest pose and
published count.  It runs in the hop loop's thread, between hops, so the console's
commands (applied there) never race it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bridge.blendshapes import HEAD_EYE_NAMES, NUM_BLENDSHAPES
from bridge.frame import FrameBatch, frame_end_sample
from bridge.model.ctc import BatchSpeechProbability
from bridge.outputs.base import Output
from bridge.post.base import FrameContext
from bridge.post.finite import OutputGuard
from bridge.sender import FrameHook, FrameSender
from bridge.stats import RunStats
from bridge.streams.keepalive import share_rest_poses
from bridge.streams.performer import Performer
from bridge.streams.scheduler import Hop
from bridge.streams.speech import SpeechTracks
from bridge.sync.hub import SyncHub


@dataclass(slots=True)
class FaceBlock:
    """One stride's rows of a model call, owned by the publisher once handed over."""

    hops: list[tuple[Performer, Hop]]  #: the rows' performers and hops, in row order
    values: np.ndarray  #: ``[R, stride, 52]`` model output; post-processed in place
    ctx: FrameContext
    logits: np.ndarray | None  #: the rows' CTC logits ``[R, T, V]``, or None
    frames: int  #: frames per model window
    lo: int  #: window frame of the rows' first published frame
    window: int  #: samples per model window


class FramePublisher:
    """Blocks in, frames out: speech track, finite guard, post chain, outputs.

    ``outputs`` is the engine's own list (read each block, so a change shows at once).
    """

    def __init__(self, post: Any, guard: OutputGuard, outputs: list[Output], stats: RunStats,
                 performers: Sequence[Performer], speech_buffer: Callable[[int, int], np.ndarray],
                 sync: SyncHub, on_frame: FrameHook | None = None, *,
                 threaded: bool = False) -> None:  # fmt: skip
        self.post = post
        self.guard = guard
        self.outputs = outputs
        self.stats = stats
        self.performers = performers
        self.on_frame = on_frame
        self.sync = sync  #: per-performer latency (and its report)
        self._speech_buffer = speech_buffer
        self._speech_prob = BatchSpeechProbability()
        self._capture = np.zeros(64)  #: a block's capture times, reused
        self._subjects = [p.subject for p in performers]  #: a block of every performer's subjects
        #: each performer's transcript state, a row each (bridge/streams/speech.py)
        self.speech_tracks = SpeechTracks(len(performers))
        # each performer's last published pose: rows of two arrays, written per block in one go
        self._rest_values, self._rest_head = share_rest_poses([p.rest for p in performers])
        self.sender = FrameSender(outputs, stats, sync, on_frame, threaded=threaded)
        self._every = np.arange(len(performers), dtype=np.intp)  #: a block of every performer, in order

    def prepare(self, speech: bool) -> None:
        """Before the first hop: the outputs build what a block of every performer needs
        (``speech``: the model gives a speech probability), so that hop pays for none of it."""
        rows = len(self.performers)
        values = np.zeros((rows, 1, NUM_BLENDSHAPES), np.float32)
        head = np.zeros((rows, 1, len(HEAD_EYE_NAMES)), np.float32)
        prob = np.zeros((rows, 1), np.float32) if speech else None
        batch = FrameBatch(self._every, np.zeros(rows, np.int64), values, head, np.zeros((rows, 1)),
                           self._subjects, prob, [""] * rows if speech else None)  # fmt: skip
        self.sender.prepare(batch)

    # ---- a block of frames ----------------------------------------------------------
    def block(self, b: FaceBlock) -> tuple[float, float]:
        """Post-process and send one block; return its worst latency (ms) and its last send's time."""
        texts = self._speech(b)
        ctx = b.ctx
        self.guard.check(b.values, ctx.speech_prob, ctx.first_frame, ctx.rows)
        self.post.process(b.values, ctx)
        return self._publish(b.hops, b.values, ctx, texts)

    def _speech(self, b: FaceBlock) -> list[str] | None:
        """Each row's speech probability (into ``ctx``) and new text, from its own CTC logits."""
        if b.logits is None:
            return None
        count, stride = len(b.hops), b.values.shape[1]
        speech = self._speech_prob(b.logits, b.frames, b.lo, stride, self._speech_buffer(count, stride))
        rows = b.ctx.rows if b.ctx.rows is not None else self._every[:count]
        runs = _same_hop_runs(b.hops)
        tracks = self.speech_tracks
        # the greedy path of every row at once, from the earliest step a row has not decoded
        offset = min(tracks.first_new_step(rows[i:j], hop.window_end, b.window) for i, j, hop in runs)
        offset = min(offset, b.logits.shape[1] - 1)
        best = b.logits[:, offset:].argmax(axis=2)
        texts: list[str] = []
        for i, j, hop in runs:
            texts += tracks.new_texts(best[i:j], offset, rows[i:j], hop.window_end, b.window,
                                      frame_end_sample(hop.last))  # fmt: skip
        b.ctx.speech_prob = speech
        return texts

    def _publish(self, hops: list[tuple[Performer, Hop]], values: np.ndarray, ctx: FrameContext,
                 texts: list[str] | None) -> tuple[float, float]:  # fmt: skip
        """Hand the block's frames to the sender as one batch; return (worst latency ms, now).

        The latency here is up to the hand-off (the sends follow, on the sending thread when
        there is one): what the fallback switch judges the model by."""
        rows, stride = values.shape[:2]
        head = ctx.head
        assert head is not None
        performers = ctx.rows if ctx.rows is not None else self._every[:rows]
        first = ctx.first_frame
        assert isinstance(first, np.ndarray)
        capture = self._capture_times(hops, stride)
        subjects = self._subjects if ctx.rows is None else [p.subject for p, _hop in hops]
        batch = FrameBatch(performers, first[:rows], values, head, capture, subjects, ctx.speech_prob, texts)
        last = stride - 1
        for p, _hop in hops:
            p.published += stride
        self._rest_values[performers] = values[:, last]
        self._rest_head[performers] = head[:, last]
        now = batch.sent_at = time.monotonic()  # handed over now (the sender stamps its send)
        worst_ms = (now - float(capture.min())) * 1000.0
        self.sender.send(batch)
        return worst_ms, now

    def _capture_times(self, hops: list[tuple[Performer, Hop]], stride: int) -> np.ndarray:
        """``[R, stride]`` capture times of the rows' frames.  Rows of one capture group with
        the same first frame share their capture times: worked out once per such run."""
        rows = len(hops)
        if self._capture.shape[0] < rows * stride:
            self._capture = np.zeros(rows * stride)
        capture = self._capture[: rows * stride].reshape(rows, stride)
        run_start, key = 0, None
        for i, (p, hop) in enumerate(hops):
            k = (p.group, hop.first)
            if k == key:
                continue
            if i > run_start + 1:
                capture[run_start + 1 : i] = capture[run_start]
            run_start, key = i, k
            at = p.stream.capture_time
            for f in range(stride):
                capture[i, f] = at(frame_end_sample(hop.first + f) - 1)
        if rows > run_start + 1:
            capture[run_start + 1 :] = capture[run_start]
        return capture

    # ---- while an input is lost -------------------------------------------------------
    def rest(self, performers: Sequence[Performer], numbers: Sequence[int], seconds: float, now: float,
             prob: float | None) -> None:  # fmt: skip
        """One frame at rest for each of ``performers`` (``numbers`` theirs), ``seconds`` into the loss."""
        rows = len(performers)
        values = np.zeros((rows, 1, NUM_BLENDSHAPES), np.float32)
        head = np.zeros((rows, 1, len(HEAD_EYE_NAMES)), np.float32)
        for i, p in enumerate(performers):
            values[i, 0], head[i, 0] = p.rest.at(seconds)
            p.published += 1
        speech = np.full((rows, 1), prob, np.float32) if prob is not None else None
        batch = FrameBatch(np.array([p.index for p in performers], np.intp), np.asarray(numbers, np.int64),
                           values, head, np.full((rows, 1), now), [p.subject for p in performers],
                           speech, None)  # fmt: skip
        self.sender.send(batch, timed=False)

    def start_rest(self, performers: Sequence[Performer]) -> None:
        """Their input is lost: the rest pose eases from their last published frame."""
        for p in performers:
            p.rest.start()

    def restart(self, rows: np.ndarray | None) -> None:
        """Their input is back after a gap: the post chain forgets what came before."""
        self.post.restart(rows)


def _same_hop_runs(hops: list[tuple[Performer, Hop]]) -> list[tuple[int, int, Hop]]:
    """Consecutive rows that share one hop (performers planned in step) as ``(i, j, hop)``."""
    runs = []
    i, n = 0, len(hops)
    while i < n:
        hop = hops[i][1]
        j = i + 1
        while j < n and hops[j][1] is hop:
            j += 1
        runs.append((i, j, hop))
        i = j
    return runs
