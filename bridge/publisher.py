"""Post-processing -> frames -> outputs: the stage after the model, on its own thread or inline.

The hop loop cuts each model call's output into blocks (:class:`FaceBlock`: the rows of
one stride, their context and CTC logits, copied out of the runner's reused buffers) and
hands them to a :class:`FramePublisher` through a :class:`PublishQueue`.  With several
performers the queue has a thread of its own, so the sends of one hop overlap the next
model call (a GPU call releases the interpreter lock): the hop loop's cost per hop is
then the larger of the model and the publishing, not their sum.  With one performer it
runs inline, as before, with nothing to overlap.

Everything a block's frames touch after the model lives here and only here: the post
chain's state, the finite guard, each performer's speech track, rest pose and published
count, the outputs.  So whatever the hop loop asks of them (rest frames while an input is
lost, a post restart when it is back) goes through the same queue, in order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
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

log = logging.getLogger(__name__)

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


@dataclass(frozen=True, slots=True)
class TurnDone:
    """What the fallback switch needs of a turn once its last frame is sent."""

    hop_start: float
    inference_s: float
    dropped: bool  #: some due hop skipped frames
    worst_ms: float  #: worst latency of the turn's frames
    end: float  #: time of its last send


class FramePublisher:
    """Blocks in, frames out: speech track, finite guard, post chain, outputs.

    ``outputs`` is the engine's own list (read each block, so a change shows at once).
    """

    def __init__(self, post: Any, guard: OutputGuard, outputs: list[Output], stats: RunStats,
                 performers: Sequence[Performer], speech_buffer: Callable[[int, int], np.ndarray],
                 on_frame: FrameHook | None = None) -> None:  # fmt: skip
        self.post = post
        self.guard = guard
        self.outputs = outputs
        self.stats = stats
        self.performers = performers
        self.on_frame = on_frame
        self._speech_buffer = speech_buffer
        self._speech_prob = BatchSpeechProbability()
        self._latencies = np.zeros(64)  #: a block's latencies (ms), reused
        self._serving_key: tuple[Output, ...] | None = None
        self._serving_table: list[tuple[Output, ...]] = []
        self._turn_worst_ms = 0.0
        self._turn_end = 0.0
        #: finished turns, for the hop loop's fallback switch (appended here, taken there)
        self.turns: deque[TurnDone] = deque()

    # ---- a block of frames ----------------------------------------------------------
    def block(self, b: FaceBlock) -> None:
        """Post-process and send one block; remember its worst latency for the turn."""
        texts = self._speech(b)
        ctx = b.ctx
        self.guard.check(b.values, ctx.speech_prob, ctx.first_frame, ctx.rows)
        self.post.process(b.values, ctx)
        worst, now = self._publish(b.hops, b.values, ctx, texts)
        self._turn_worst_ms = max(self._turn_worst_ms, worst)
        self._turn_end = now

    def turn_done(self, hop_start: float, inference_s: float, dropped: bool) -> None:
        """The turn's blocks are all sent: record it for the fallback switch."""
        end = self._turn_end or time.monotonic()
        self.turns.append(TurnDone(hop_start, inference_s, dropped, self._turn_worst_ms, end))
        self._turn_worst_ms, self._turn_end = 0.0, 0.0

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
                                  text if f == last else "", index)  # fmt: skip
                for output in outputs:
                    output.publish(frame)
                now = time.monotonic()
                latency_ms = (now - capture) * 1000.0
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
            frame = FaceFrame(number, values, now, head, p.subject, prob, "", p.index)
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


class PublishQueue:
    """Runs the publisher's calls in order: inline, or on one worker thread.

    ``threaded``: :meth:`submit` queues the call (waiting while ``depth`` calls are
    queued: the hop loop never runs ahead of the sends by more than that) and returns;
    an error raised by a call stops the worker and is raised again by the next
    :meth:`submit` or :meth:`check`.  Inline, :meth:`submit` is the call itself.
    """

    def __init__(self, threaded: bool, depth: int = 8, name: str = "a2e-publish") -> None:
        self.threaded = threaded
        self.error: BaseException | None = None
        self.busy_s = 0.0  #: the worker's time in calls (wall, and its own CPU)
        self.busy_cpu_s = 0.0
        self._queue: queue.Queue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.Queue(depth)
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._work, name=name, daemon=True)
            self._thread.start()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self._thread is None:
            fn(*args)
            return
        while True:
            self.check()
            try:
                self._queue.put((fn, args), timeout=0.1)
                return
            except queue.Full:
                continue

    def check(self) -> None:
        """Raise the worker's error here, in the hop loop's thread."""
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued call has run (or failed); False if ``timeout`` passed first."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and self._thread.is_alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Run what is queued, then end the worker."""
        if self._thread is None or not self._thread.is_alive():
            return
        self.flush(timeout)
        try:
            self._queue.put(None, timeout=1.0)
        except queue.Full:  # a worker stuck in a call: it is a daemon, let it be
            return
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self.error is None:  # after an error, drain without running
                    fn, args = item
                    t0, c0 = time.perf_counter(), time.thread_time()
                    fn(*args)
                    self.busy_s += time.perf_counter() - t0
                    self.busy_cpu_s += time.thread_time() - c0
            except BaseException as e:  # noqa: BLE001 -- handed to the hop loop's thread
                self.error = e
            finally:
                self._queue.task_done()
