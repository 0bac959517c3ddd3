"""Single-producer / single-consumer ring of audio frames.

The producer is the capture callback (or the file reader); the consumer is the
hop loop.  No locks: the producer writes samples, *then* advances ``written``;
the consumer reads ``written``, *then* copies.  Under CPython each counter
update is a single atomic store, which is all the ordering this needs.

Producer contract (``write``): copies the block into preallocated memory and
updates integers; no allocation of arrays, no locks, no logging, no I/O.
If the consumer has fallen more than ``capacity`` frames behind, the oldest
audio is overwritten; the consumer notices (``read`` skips the frames it lost,
counts them in ``overrun`` and advances ``read_pos`` past them), so the frame
index of everything it reads still says when it was captured.
"""

from __future__ import annotations

import numpy as np


class SampleRing:
    """Lock-free SPSC ring of ``float32`` frames of shape ``(capacity, channels)``."""

    def __init__(self, capacity: int, channels: int, time_slots: int = 4096) -> None:
        if capacity <= 0 or channels <= 0:
            raise ValueError("capacity and channels must be positive")
        self.capacity = capacity
        self.channels = channels
        self._buf = np.zeros((capacity, channels), dtype=np.float32)
        # Producer-owned counters (monotonic, never wrap).
        self.written = 0
        self.blocks = 0
        self.status_flags = 0  # callbacks that reported a PortAudio status
        self.overflows = 0  # input overflows PortAudio reported
        # Capture clock: for block b, the frame count after it and the time it arrived.
        self._slots = time_slots
        self._block_end = np.zeros(time_slots, dtype=np.int64)
        self._block_time = np.zeros(time_slots, dtype=np.float64)
        # Consumer-owned.
        self.read_pos = 0
        self.overrun = 0  # frames the consumer lost because it fell behind
        self._clock_block = 0

    # ---- producer side -------------------------------------------------------------
    def write(self, block: np.ndarray, when: float) -> None:
        """Copy ``block`` (frames x channels, or frames for mono) in; ``when`` = its capture time."""
        n = block.shape[0]
        cap = self.capacity
        if n > cap:  # keep only the newest audio; the clock still counts every frame
            skip = n - cap
            self.written += skip
            block = block[skip:]
            n = cap
        start = self.written % cap
        first = min(n, cap - start)
        src = block if block.ndim == 2 else block[:, None]
        self._buf[start : start + first] = src[:first]
        if first < n:
            self._buf[: n - first] = src[first:]
        self.written += n
        slot = self.blocks % self._slots
        self._block_end[slot] = self.written
        self._block_time[slot] = when
        self.blocks += 1

    def note_status(self, input_overflow: bool) -> None:
        """Producer: count a callback status (PortAudio flags)."""
        self.status_flags += 1
        if input_overflow:
            self.overflows += 1

    # ---- consumer side -------------------------------------------------------------
    def available(self) -> int:
        return self.written - self.read_pos

    def read(self, out: np.ndarray) -> int:
        """Copy up to ``len(out)`` unread frames into ``out``; return how many.

        If the producer lapped the consumer, the lost frames are skipped (counted in
        ``overrun``) and reading resumes at the oldest frame still intact.
        """
        written = self.written  # one read of the producer's counter
        behind = written - self.read_pos
        if behind > self.capacity:
            lost = behind - self.capacity
            self.overrun += lost
            self.read_pos += lost
            behind = self.capacity
        n = min(behind, out.shape[0])
        if n <= 0:
            return 0
        cap = self.capacity
        start = self.read_pos % cap
        first = min(n, cap - start)
        out[:first] = self._buf[start : start + first]
        if first < n:
            out[first:n] = self._buf[: n - first]
        # Re-check: if the producer overwrote what we just copied, the copy is torn.
        torn = self.written - self.read_pos - cap
        if torn > 0:
            self.overrun += min(torn, n)
        self.read_pos += n
        return n

    def skip_to(self, frame_index: int) -> int:
        """Drop unread frames before ``frame_index`` (stale audio); return how many.

        Not counted as ``overrun``: the consumer chose to drop them (audio from a
        capture stream that has since been closed).
        """
        target = min(frame_index, self.written)
        skipped = max(0, target - self.read_pos)
        self.read_pos += skipped
        return skipped

    def capture_time(self, frame_index: int) -> float:
        """Arrival time of the block holding frame ``frame_index`` (consumer side).

        Cheapest when queries move forward (the usual case); blocks older than
        ``time_slots`` are forgotten and answer with the oldest time still held.
        """
        blocks = self.blocks
        if blocks == 0:
            return 0.0
        slots = self._slots
        lowest = max(0, blocks - slots)
        b = min(max(self._clock_block, lowest), blocks - 1)
        while b > lowest and self._block_end[(b - 1) % slots] > frame_index:
            b -= 1
        while b < blocks - 1 and self._block_end[b % slots] <= frame_index:
            b += 1
        self._clock_block = b
        return float(self._block_time[b % slots])
