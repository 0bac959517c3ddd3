"""Post-processing -> frames -> outputs: the stage after the model.

The hop loop cuts each model call's output into blocks (:class:`FaceBlock`: the rows of
one stride, their context and CTC logits) and hands them to the :class:`FramePublisher`,
which runs the speech track, the finite guard and the post chain on the whole block and
sends every row's frames to the outputs that serve its performer.

Everything a block's frames touch after the model lives here: the post chain's state, the
finite guard, each performer's speech track, rest pose and published count, the outputs.
(It runs in the hop loop's thread: a publishing thread of its own was tried and measured,
see docs/benchmarks.md, and gained nothing while the interpreter lock is the limit.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bridge.frame import FaceFrame, frame_end_sample
from bridge.model.ctc import BatchSpeechProbability
from bridge.outputs.base import Output
from bridge.post.base import FrameContext
from bridge.post.finite import OutputGuard
from bridge.stats import RunStats
from bridge.streams.performer import Performer
from bridge.streams.scheduler import Hop
from bridge.sync.hub import SyncHub

FrameHook = Callable[[FaceFrame], None]


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
                 sync: SyncHub, on_frame: FrameHook | None = None) -> None:  # fmt: skip
        self.post = post
        self.guard = guard
        self.outputs = outputs
        self.stats = stats
        self.performers = performers
        self.on_frame = on_frame
        self.sync = sync  #: per-performer latency (and its report)
        self._speech_buffer = speech_buffer
        self._speech_prob = BatchSpeechProbability()
        self._latencies = np.zeros(64)  #: a block's latencies (ms), reused
        self._serving_key: tuple[Output, ...] | None = None
        self._serving_table: list[tuple[Output, ...]] = []
        self._every = np.arange(len(performers), dtype=np.intp)  #: a block of every performer, in order

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
        best = b.logits.argmax(axis=2)  # the greedy path of every row at once
        texts = []
        for i, (p, hop) in enumerate(b.hops):
            end = frame_end_sample(hop.last)
            texts.append(p.speech.new_text_from(best[i], hop.window_end, b.window, end))
        b.ctx.speech_prob = speech
        return texts

    def _publish(self, hops: list[tuple[Performer, Hop]], values: np.ndarray, ctx: FrameContext,
                 texts: list[str] | None) -> tuple[float, float]:  # fmt: skip
        """Send every row's frames, in frame order per performer; return (worst latency ms, now).

        Per row, only the outputs that serve its performer are asked; latencies of all but
        the first performer (whose frames also time the send interval) are recorded per block."""
        stats, on_frame = self.stats, self.on_frame
        serving = self._serving()
        stride = values.shape[1]
        last = stride - 1
        speech, head = ctx.speech_prob, ctx.head
        assert head is not None
        probs = speech.tolist() if speech is not None else None
        track = self.sync.block(len(hops), stride)
        latencies = self._latencies
        if latencies.shape[0] < len(hops) * stride:
            latencies = self._latencies = np.zeros(len(hops) * stride)
        j = 0
        worst_ms, now = 0.0, time.monotonic()
        for i, (p, hop) in enumerate(hops):
            capture_time, index, subject = p.stream.capture_time, p.index, p.subject
            outputs = serving[index] if index < len(serving) else ()
            text = texts[i] if texts is not None else ""
            row_values, row_head = values[i], head[i]
            row_probs = probs[i] if probs is not None else None
            for f in range(stride):
                number = hop.first + f
                capture = capture_time(frame_end_sample(number) - 1)
                frame = FaceFrame(number, row_values[f], capture, row_head[f], subject,
                                  row_probs[f] if row_probs is not None else None,
                                  text if f == last else "", index, now)  # fmt: skip
                for output in outputs:
                    output.publish(frame)
                now = time.monotonic()
                latency_ms = (now - capture) * 1000.0
                track[i, f] = latency_ms
                if index == 0:
                    stats.record_send(now, latency_ms)
                else:
                    latencies[j] = latency_ms
                    j += 1
                if latency_ms > worst_ms:
                    worst_ms = latency_ms
                if on_frame is not None:
                    on_frame(frame)
            p.published += stride
            p.rest.remember(row_values[last], row_head[last])
        stats.record_latencies(latencies[:j])
        self.sync.published(ctx.rows if ctx.rows is not None else self._every, now)
        return worst_ms, now

    def _serving(self) -> list[tuple[Output, ...]]:
        """Per performer index, the outputs that serve it (remade if the outputs change)."""
        key = tuple(self.outputs)
        if key != self._serving_key:
            self._serving_key = key
            self._serving_table = [tuple(o for o in key if o.serves(i)) for i in range(len(self.performers))]
        return self._serving_table

    # ---- while an input is lost -------------------------------------------------------
    def rest(self, performers: Sequence[Performer], numbers: Sequence[int], seconds: float, now: float,
             prob: float | None) -> None:  # fmt: skip
        """One frame at rest for each of ``performers`` (``numbers`` theirs), ``seconds`` into the loss."""
        serving = self._serving()
        for p, number in zip(performers, numbers, strict=True):
            values, head = p.rest.at(seconds)
            frame = FaceFrame(number, values, now, head, p.subject, prob, "", p.index, now)
            for output in serving[p.index] if p.index < len(serving) else ():
                output.publish(frame)
            p.published += 1
            if self.on_frame is not None:
                self.on_frame(frame)

    def start_rest(self, performers: Sequence[Performer]) -> None:
        """Their input is lost: the rest pose eases from their last published frame."""
        for p in performers:
            p.rest.start()

    def restart(self, rows: np.ndarray | None) -> None:
        """Their input is back after a gap: the post chain forgets what came before."""
        self.post.restart(rows)
