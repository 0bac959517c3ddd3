"""The state of one audio input on its way to the model.

source -> ring -> conditioner -> history, plus the hop scheduler that reads the
history's sample clock.  Everything per input lives here, so several inputs
(performers on the channels of one interface, each its own subject) can later
share one model call without sharing state.
"""

from __future__ import annotations

import numpy as np

from bridge.conditioner import Conditioner
from bridge.frame import SAMPLE_RATE, frame_end_sample, frames_complete
from bridge.history import AudioHistory
from bridge.scheduler import HopScheduler
from bridge.sources.base import AudioSource


class InputStream:
    """One input: drains its source's ring into a 16 kHz history and schedules hops on it."""

    def __init__(
        self,
        source: AudioSource,
        *,
        channel: int | str,
        window_samples: int,
        window_frames: int,
        lookahead: int,
        keep_seconds: float = 4.0,
        limit_samples: int | None = None,
    ) -> None:
        self.source = source
        self.conditioner = Conditioner(source.samplerate, source.channels, channel)
        self.history = AudioHistory(window_samples, window_samples + int(keep_seconds * SAMPLE_RATE))
        self.scheduler = HopScheduler(window_frames, lookahead)
        self.limit_samples = limit_samples  #: stop after this many 16 kHz samples (--duration)
        self._scratch = np.zeros((max(source.ring.capacity // 4, 4096), source.channels), np.float32)
        self._rate_ratio = source.samplerate / SAMPLE_RATE
        self._raw_pulled = 0  #: native-rate frames taken out of the ring so far
        self.ended = False  #: no more audio will come (end of file, duration reached)
        self._frames_at_end = 0

    def pull(self) -> int:
        """Move what the source has written so far into the history; return 16 kHz samples added.

        Takes only what was there when called: a source writing faster than real time
        (a file with ``realtime = false``) cannot keep the hop loop here, or push the
        history further ahead than it keeps.
        """
        if self.ended:
            return 0
        added = 0
        ring = self.source.ring
        budget = ring.available()
        while budget > 0:
            n = ring.read(self._scratch[: min(budget, self._scratch.shape[0])])
            if n == 0:
                break
            budget -= n
            self._raw_pulled += n
            added += self._append(self.conditioner.process(self._scratch[:n]))
            if self.ended:
                return added
        if self.source.finished and ring.available() == 0:
            added += self._append(self.conditioner.process(self._scratch[:0], last=True))
            self._end()
        return added

    def expected_count(self) -> float:
        """The sample clock a ``pull()`` now would reach, estimated without doing it.

        Lets the hop loop sleep until a frame's audio is there instead of
        conditioning every small capture block as it lands: one pull per hop.
        """
        ring = self.source.ring
        lag = max(0.0, self._raw_pulled / self._rate_ratio - self.history.count)  # resampler hold-back
        return self.history.count + ring.available() / self._rate_ratio - lag

    def _append(self, x: np.ndarray) -> int:
        if self.limit_samples is not None:
            room = self.limit_samples - self.history.count
            if x.shape[0] >= room:
                self.history.append(x[: max(room, 0)])
                self._end()
                return max(room, 0)
        self.history.append(x)
        return x.shape[0]

    def _end(self) -> None:
        """Pad with silence so the last (partial) frame and its lookahead can be computed."""
        if self.ended:
            return
        self.ended = True
        total = self.history.count
        # The last frame counts even if partial: a 1.01 s file gives 31 frames.
        self._frames_at_end = -((-total * 30) // SAMPLE_RATE)
        if self._frames_at_end:
            last = self._frames_at_end - 1 + self.scheduler.lookahead
            need = frame_end_sample(last) - total
            if need > 0:
                self.history.append(np.zeros(need, dtype=np.float32))

    @property
    def frames_total(self) -> int:
        """Frames the stream covers so far (final once it has ended)."""
        return self._frames_at_end if self.ended else frames_complete(self.history.count)

    def capture_time(self, sample: int) -> float:
        """When the 16 kHz sample ``sample`` was captured (its source block's arrival)."""
        return self.source.ring.capture_time(int(sample * self._rate_ratio))
