"""Frames -> outputs: the last stage, inline or on a sending thread of its own.

The publisher hands every batch of frames (:class:`~bridge.frame.FrameBatch`: a block's
rows after post-processing, or a turn of frames at rest) to a :class:`FrameSender`, which
gives it to every output (``Output.publish_batch``) and records what was sent: each
frame's latency (send time minus capture time), the send interval of the first
performer, the per-performer latency window the sync stage reads.

With several performers the sends run on a thread of their own (``threaded``): ONNX
Runtime releases the interpreter lock during a model call, so one hop's encoding and
sending overlaps the next hop's model call, and the hop loop's time per hop is the
model's plus its own preparation, not plus the sends.  Every batch, in hop order, goes
through one queue, so each performer's frames leave in frame order however they were
made.  The queue holds copies (the engine reuses its buffers); it is bounded, and a hop
loop that outruns its sender waits for a slot (counted: that is the machine's CPU being
short, never a receiver, since every transport's send is non-blocking).  An error on the
sending thread is raised in the hop loop at its next hand-off.

While the sending thread runs, the interpreter's switch interval is 0.5 ms (not 5): the
hop loop coming back from a model call (which ran without the lock) waits at most that
long for the sending thread to let go of the interpreter lock.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable

import numpy as np

from bridge.blendshapes import HEAD_EYE_NAMES, NUM_BLENDSHAPES
from bridge.frame import FaceFrame, FrameBatch
from bridge.outputs.base import Output
from bridge.stats import Histogram, RunStats
from bridge.sync.hub import SyncHub

log = logging.getLogger(__name__)

FrameHook = Callable[[FaceFrame], None]

#: Batches the sending thread may be behind by before the hop loop waits for it.
QUEUE_SLOTS = 4
#: The interpreter's switch interval while the sending thread runs (seconds).
SWITCH_INTERVAL_S = 0.0005


class _Slot:
    """Storage for one queued batch: the engine's arrays copied, grown as needed."""

    def __init__(self) -> None:
        self.n = 0
        self._grow(64)

    def _grow(self, n: int) -> None:
        self.n = n
        self.performers = np.zeros(n, np.intp)
        self.first = np.zeros(n, np.int64)
        self.values = np.zeros(n * NUM_BLENDSHAPES, np.float32)
        self.head = np.zeros(n * len(HEAD_EYE_NAMES), np.float32)
        self.capture = np.zeros(n, np.float64)
        self.speech = np.zeros(n, np.float32)

    def hold(self, b: FrameBatch) -> FrameBatch:
        """A copy of ``b`` in this slot's arrays (valid until the slot is reused)."""
        rows, stride = b.values.shape[:2]
        if rows * stride > self.n:
            self._grow(max(rows * stride, 2 * self.n))
        shape = (rows, stride)
        values = self.values[: rows * stride * NUM_BLENDSHAPES].reshape(*shape, NUM_BLENDSHAPES)
        head = self.head[: rows * stride * len(HEAD_EYE_NAMES)].reshape(*shape, len(HEAD_EYE_NAMES))
        capture = self.capture[: rows * stride].reshape(shape)
        np.copyto(values, b.values)
        np.copyto(head, b.head)
        np.copyto(capture, b.capture_time)
        performers, first = self.performers[:rows], self.first[:rows]
        np.copyto(performers, b.performers)
        np.copyto(first, b.first)
        speech = None
        if b.speech_prob is not None:
            speech = self.speech[: rows * stride].reshape(shape)
            np.copyto(speech, b.speech_prob)
        return FrameBatch(performers, first, values, head, capture, list(b.subjects), speech,
                          list(b.texts) if b.texts is not None else None, b.sent_at)  # fmt: skip


class FrameSender:
    """Batches of frames to the outputs, and what their latencies were.

    ``outputs`` is the engine's own list (read per batch, so a change shows at once).
    """

    def __init__(self, outputs: list[Output], stats: RunStats, sync: SyncHub,
                 on_frame: FrameHook | None = None, *, threaded: bool = False) -> None:  # fmt: skip
        self.outputs = outputs
        self.stats = stats
        self.sync = sync
        self.on_frame = on_frame
        self.threaded = threaded
        self.waits = 0  #: hand-offs that waited for the sending thread (it was behind)
        self.last_sent = 0.0  #: ``time.monotonic()`` after the latest batch's sends
        self.send_ms = Histogram()  #: time each batch took to encode and send to every output
        self._queue: queue.Queue[tuple[FrameBatch, bool] | None] = queue.Queue(QUEUE_SLOTS)
        self._slots = [_Slot() for _ in range(QUEUE_SLOTS + 2)]
        self._next_slot = 0
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._switch_interval: float | None = None  #: the interpreter's, to restore on close

    # ---- the hop loop's side ------------------------------------------------------------
    def send(self, batch: FrameBatch, timed: bool = True) -> None:
        """Send ``batch`` now (inline), or queue a copy for the sending thread.  ``timed``
        False: frames without audio (at rest while an input is lost), which count in no
        latency and no published total."""
        if not self.threaded:
            self._send(batch, timed)
            return
        self._raise_error()
        if self._thread is None:
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self._switch_interval, SWITCH_INTERVAL_S))
            self._thread = threading.Thread(target=self._run, name="a2e-send", daemon=True)
            self._thread.start()
        # A slot is reused only after QUEUE_SLOTS + 1 more hand-offs: by then the thread has
        # taken it off the queue (at most QUEUE_SLOTS wait there) and finished sending it.
        slot = self._slots[self._next_slot]
        self._next_slot = (self._next_slot + 1) % len(self._slots)
        held = (slot.hold(batch), timed)
        try:
            self._queue.put_nowait(held)
        except queue.Full:
            self.waits += 1
            self._queue.put(held)

    def prepare(self, batch: FrameBatch) -> None:
        """Have every output build what batches like ``batch`` need; nothing is sent."""
        for output in self.outputs:
            output.prepare_batch(batch)

    def flush(self) -> None:
        """Wait until every queued batch is sent (the run ends; the stats are to be read)."""
        if self._thread is not None:
            self._queue.join()
        self._raise_error()

    def counters(self) -> dict[str, object]:
        """For ``--stats``: how long a batch's sends took, and whether the hop loop waited."""
        return {"send_ms": self.send_ms.summary(), "send_thread": self.threaded, "send_waits": self.waits}

    def close(self) -> None:
        """Send what is queued and stop the sending thread."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=5.0)
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    # ---- the sending side ------------------------------------------------------------------
    def _run(self) -> None:
        q = self._queue
        while True:
            item = q.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._send(*item)
            except BaseException as e:  # said in the hop loop, which ends the run
                self._error = e
            finally:
                q.task_done()

    def _send(self, batch: FrameBatch, timed: bool) -> None:
        """Every output its frames of ``batch``; then the latencies, from one clock reading."""
        start = time.monotonic()
        if timed and batch.sent_at is not None:  # when the hop loop handed it over
            self.stats.phases["queue"].add((start - batch.sent_at) * 1000.0)
        batch.sent_at = start
        for output in self.outputs:
            output.publish_batch(batch)
        now = time.monotonic()
        self.last_sent = now
        self.send_ms.add((now - start) * 1000.0)
        if timed:
            self._record(batch, now)
        if self.on_frame is not None:
            for i in range(batch.values.shape[0]):
                for f in range(batch.stride):
                    self.on_frame(batch.frame(i, f))

    def _record(self, batch: FrameBatch, now: float) -> None:
        """Each frame's latency into the run's stats and the per-performer window."""
        rows, stride = batch.values.shape[:2]
        latency = self.sync.block(rows, stride)
        np.subtract(now, batch.capture_time, out=latency)
        latency *= 1000.0
        performers = batch.performers
        stats = self.stats
        # The first performer's frames time the send interval (one face's frame pacing).
        first = 0 if performers[0] == 0 else int(np.argmin(performers)) if (performers == 0).any() else -1
        if first >= 0:
            for f in range(stride):
                stats.record_send(now, float(latency[first, f]))
        if first == 0:
            stats.record_latencies(latency[1:].reshape(-1))
        elif first > 0:
            stats.record_latencies(np.delete(latency, first, axis=0).reshape(-1))
        else:
            stats.record_latencies(latency.reshape(-1))
        self.sync.published(performers, now)

