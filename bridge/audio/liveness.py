"""Is the live input still delivering?  When it is not: the loss, and the search for it.

A capture device delivers a block every few milliseconds; one that has delivered
nothing for ``LOST_AFTER_S`` (or whose stream PortAudio reports stopped) is lost:
unplugged, or its audio server went away.  :class:`InputWatch` notices that from
the ring's write counter alone (the hop loop never waits on the device), keeps
the state of a loss (since when, the frames sent at rest, when to look for the
device next) and tells when audio is back.  The hop loop does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: a live input that has delivered audio and then nothing for this long is lost
LOST_AFTER_S = 0.5
#: ... and one that has delivered nothing yet since it was opened (opening can be slow)
START_GRACE_S = 2.0
#: how often a lost device is looked for
LOOK_EVERY_S = 0.5


@dataclass(slots=True)
class Loss:
    """One loss of the input, while it lasts."""

    since: float
    reason: str
    mark: int  #: ring frames written when it was lost: audio after this is new
    segment: int  #: the source's capture segment then (a reopened device starts a new one)
    next_frame_due: float  #: when the next frame at rest goes out
    next_look: float  #: when to look for the device again
    frames: int = 0  #: frames sent at rest so far


class InputWatch:
    """Notices a live input going quiet or stopping, and keeps the loss until it is back."""

    def __init__(self, source: Any, block_s: float) -> None:
        self.source = source
        # A block must be able to arrive late without counting as a loss.
        self.lost_after_s = max(LOST_AFTER_S, 4.0 * block_s)
        self.start_grace_s = max(START_GRACE_S, 4.0 * block_s)
        self.loss: Loss | None = None
        self.losses = 0
        self.reconnects = 0
        self.lost_s = 0.0  #: time spent lost (finished losses)
        self.rest_frames = 0  #: frames sent at rest, over all losses
        self._written = 0
        self._heard_at = 0.0
        self._heard = False

    def start(self, now: float) -> None:
        """Capture (re)starts: the grace for its first audio runs from now."""
        self._written = self.source.ring.written
        self._heard_at, self._heard = now, False

    def check(self, now: float) -> str | None:
        """Why the input counts as lost now, or None while it delivers."""
        written = self.source.ring.written
        if written != self._written:
            self._written, self._heard_at, self._heard = written, now, True
        stopped = getattr(self.source, "interrupted", None)
        if stopped:
            return stopped
        quiet = now - self._heard_at
        if quiet > (self.lost_after_s if self._heard else self.start_grace_s):
            since = "" if self._heard else " since it opened"
            return f"no audio for {quiet:.1f} s{since}"
        return None

    def lose(self, now: float, reason: str) -> Loss:
        """The input is lost from ``now``: the first frame at rest and the first look are due."""
        self.losses += 1
        self.loss = Loss(now, reason, self.source.ring.written, self._segment(), now, now)
        return self.loss

    def back(self) -> bool:
        """Audio is arriving again (from a reopened device, or the same stream)."""
        loss, source = self.loss, self.source
        if loss is None:
            return True
        segment = self._segment()
        if segment is not None:
            return segment != loss.segment and source.ring.written > source.segment_start
        return source.ring.written > loss.mark

    def resume_frame(self) -> int:
        """Ring frame where the new audio starts (older unread frames are stale)."""
        assert self.loss is not None
        return self.source.segment_start if self._segment() is not None else self.loss.mark

    def resumed(self, now: float) -> Loss:
        loss = self.loss
        assert loss is not None
        self.reconnects += 1
        self.lost_s += now - loss.since
        self.loss = None
        self._written, self._heard_at, self._heard = self.source.ring.written, now, True
        return loss

    def _segment(self) -> int | None:
        return getattr(self.source, "segment", None)

    def counters(self, now: float) -> dict[str, Any]:
        """For ``--stats``."""
        lost = self.lost_s + (now - self.loss.since if self.loss is not None else 0.0)
        return {
            "input_losses": self.losses,
            "input_reconnects": self.reconnects,
            "input_lost_s": round(lost, 3),
            "frames_at_rest": self.rest_frames,
        }
