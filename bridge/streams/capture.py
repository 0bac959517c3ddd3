"""One capture stream shared by the performers on its channels: the ring is read once.

Performers on the channels of one device (or one file) share one source and one
ring (one PortAudio stream; one reader thread).  A :class:`CaptureGroup` drains that
ring once per pull and hands every raw block to each member's :class:`InputStream`,
which conditions its own channel into its own history.  The ring's frame index is
the capture clock of every member, so a gap (the ring overwrote audio before it was
read) is one gap for all of them, at the same ring frame: each member starts a new
segment there, with its own silence and its own frames to drop.

When every member only takes one channel of 16 kHz audio (the usual multi-channel
interface, and the bench), their histories are rows of one array
(:class:`~bridge.audio.history.SharedHistories`) and a block is conditioned for all of
them at once: one column pick, one NaN/Inf check, one copy into the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from bridge.audio.base import AudioSource
from bridge.audio.history import SharedHistories
from bridge.audio.liveness import InputWatch

if TYPE_CHECKING:  # stream.py reads through a group of one: no import at run time
    from bridge.streams.stream import InputStream


class CaptureGroup:
    """A source, its ring, and the streams (one per performer) that take its channels."""

    def __init__(self, source: AudioSource, members: Sequence[InputStream], block_s: float = 0.01) -> None:
        if any(m.source is not source for m in members):
            raise ValueError("every member of a capture group reads the group's source")
        self.source = source
        self.members = list(members)
        self._scratch = np.zeros((max(source.ring.capacity // 4, 4096), source.channels), np.float32)
        #: whether the source still delivers (a live device); the hop loop asks it
        self.watch = InputWatch(source, block_s)
        #: called with every block read (frames x channels, the ring frame after it), in the hop
        #: thread: the voice passthrough's feed (bridge/sync/passthrough.py); must not block
        self.tap: Callable[[np.ndarray, int], None] | None = None
        #: the members' histories as rows of one array, when one copy can feed them all
        self.shared: SharedHistories | None = None
        if len(self.members) > 1 and all(m.conditioner.picks_one_channel_at_16k for m in self.members):
            self.shared = SharedHistories([m.history for m in self.members])
            self._channels = np.array([m.conditioner.channel for m in self.members], dtype=np.intp)
            self._columns = np.zeros((self._scratch.shape[0], len(self.members)), np.float32)
            self._every_channel = bool(np.array_equal(self._channels, np.arange(source.channels)))

    def pull(self, bounded: bool = False) -> None:
        """Move what the source has written so far into every member's history.

        ``bounded`` (a source faster than real time) takes no more than the member with
        the least room can hold, so none of them skips a frame."""
        live = [m for m in self.members if not m.ended]
        if not live:
            return
        ring = self.source.ring
        budget = ring.available()
        if bounded:
            budget = min(budget, min(m.raw_room() for m in live))
        scratch = self._scratch
        while budget > 0:
            pos = ring.read_pos
            n = ring.read(scratch[: min(budget, scratch.shape[0])])
            if n == 0:
                break
            lost = ring.read_pos - n - pos  # overwritten before we got to them
            block = scratch[:n]
            if self.tap is not None:
                self.tap(block, ring.read_pos)
            if lost > 0:
                for m in live:
                    m.gap(ring.read_pos - n)
            if not self._feed_all(live, block):
                for m in live:
                    if not m.ended:
                        m.feed(block)
            budget -= n + lost
            if any(m.ended for m in live):
                live = [m for m in live if not m.ended]
                if not live:
                    return
        if self.source.finished and ring.available() == 0:
            for m in live:
                m.finish()

    def _feed_all(self, live: list[InputStream], block: np.ndarray) -> bool:
        """Feed ``block`` to every member with one copy, if they are all live, in step and
        far from a sample limit; False: feed them one by one."""
        shared = self.shared
        if shared is None or len(live) != len(self.members) or live[0].ended or not shared.in_step():
            return False
        n = block.shape[0]
        first = live[0]
        if first.limit_samples is not None and first.history.count + n >= first.limit_samples:
            return False
        if self._every_channel:  # each channel one member, in order: the block as it is
            columns = block
        else:
            columns = self._columns[:n]
            np.take(block, self._channels, axis=1, out=columns)
        if not np.isfinite(columns.sum()):  # NaN/Inf somewhere: find whose (rare)
            for i, m in enumerate(live):
                m.conditioner.scrub(columns[:, i])
        shared.append_columns(columns)
        for m in live:
            m.fed(n)
        return True

    def restart(self, frames: Sequence[int], resume_raw: int) -> list[int]:
        """Capture starts again at ring frame ``resume_raw``; member i's audio goes on from
        its frame ``frames[i]`` (see :meth:`InputStream.restart`).  Returns each member's
        first frame of new audio."""
        return [m.restart(f, resume_raw) for m, f in zip(self.members, frames, strict=True)]

    @property
    def ended(self) -> bool:
        return all(m.ended for m in self.members)

    @property
    def gaps(self) -> int:
        """Gaps in the capture (each is every member's gap: the first member counts them)."""
        return self.members[0].gaps

    @property
    def lost_samples(self) -> int:
        return self.members[0].lost_samples
