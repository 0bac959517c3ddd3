"""Hops on the sample clock.

Frame k depicts 16 kHz samples [ceil(k*16000/30), ceil((k+1)*16000/30)).  A frame
is *ready* once the samples of frame ``k + lookahead`` have all arrived; time
never enters into it, so there are exactly 30 frames per 16000 samples however
long the stream runs.  The scheduler is pure bookkeeping: the hop loop asks it
what to compute next and tells it what it published.

Adaptive stride falls out of the design: when an inference took longer than a
hop, several frames are ready by the next plan, and one call covers them all
(up to the frames the window holds).  Frames whose deadline has passed are
skipped and counted, never published late or twice.  Frame numbers only ever
go up: frames whose audio was lost are counted as dropped, and frames sent while
the input is lost (at rest, see bridge/keepalive.py) take the next numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.frame import frame_end_sample, frames_complete


@dataclass(frozen=True, slots=True)
class Hop:
    """One model call: publish frames ``first..last`` from a window ending at ``window_end``."""

    first: int
    last: int
    window_end: int  #: stream sample index (exclusive) where the model's window ends
    window_last_frame: int  #: the frame the window's newest output depicts (last + lookahead)
    dropped: int  #: frames skipped (deadline passed) just before ``first``

    @property
    def stride(self) -> int:
        return self.last - self.first + 1


class HopScheduler:
    """Decides, from the sample count alone, which frames the next model call publishes."""

    def __init__(self, window_frames: int, lookahead: int = 0, max_stride: int | None = None) -> None:
        if lookahead >= window_frames:
            raise ValueError("lookahead_frames must be smaller than the window's frame count")
        self.window_frames = window_frames
        self.lookahead = lookahead
        self.max_stride = min(max_stride or window_frames, window_frames - lookahead)
        self.next_frame = 0
        self.dropped = 0

    def set_lookahead(self, lookahead: int) -> None:
        """Hold back ``lookahead`` frames from the next hop on (the console's ``lookahead``).

        Frame numbers are untouched: a longer lookahead only delays the next hop (no gap),
        a shorter one makes the waiting frames ready at once (one wider hop, no repeat)."""
        if not 0 <= lookahead < self.window_frames:
            raise ValueError(f"lookahead must be 0..{self.window_frames - 1} frames")
        widest = self.max_stride == self.window_frames - self.lookahead  # capped only by the window
        self.max_stride = self.window_frames - lookahead if widest else self.max_stride
        self.max_stride = max(1, min(self.max_stride, self.window_frames - lookahead))
        self.lookahead = lookahead

    def ready(self, samples: int) -> int:
        """One past the last frame that can be published with ``samples`` samples in hand."""
        return max(0, frames_complete(samples) - self.lookahead)

    def plan(self, samples: int, oldest_in_time: int | None = None) -> Hop | None:
        """The next hop, or None if no new frame is ready.

        ``oldest_in_time`` is the oldest frame that can still meet its latency deadline
        (the hop loop knows the clock); frames before it are skipped and counted.
        """
        ready = self.ready(samples)
        if ready <= self.next_frame:
            return None
        dropped = 0
        if oldest_in_time is not None and oldest_in_time > self.next_frame:
            skip_to = min(oldest_in_time, ready - 1)  # the newest ready frame always goes out
            dropped = skip_to - self.next_frame
            self.next_frame = skip_to
        first = self.next_frame
        last = min(ready - 1, first + self.max_stride - 1)
        window_last = last + self.lookahead
        return Hop(first, last, frame_end_sample(window_last), window_last, dropped)

    def drop_until(self, frame: int) -> int:
        """Skip (and count) every unpublished frame before ``frame``: its audio was lost,
        or it fell out of the history; return how many."""
        dropped = max(0, frame - self.next_frame)
        self.dropped += dropped
        self.next_frame += dropped
        return dropped

    def take_rest_frame(self) -> int:
        """The number of a frame published without audio (the input is lost); numbers
        go on from the last frame, and the audio, when it returns, goes on after them."""
        number = self.next_frame
        self.next_frame += 1
        return number

    def done(self, hop: Hop) -> None:
        """Record that ``hop`` was published."""
        self.dropped += hop.dropped
        self.next_frame = hop.last + 1
