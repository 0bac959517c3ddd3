"""One input's 16 kHz stream: its source's ring, conditioned, in a history, with a scheduler.

The hop loop drives an :class:`InputStream`: ``pull()`` moves captured audio
into the history, the scheduler plans hops on it.  Keeping this per input (not
in the pipeline) is what lets several inputs share one model later: inputs
(performers on the channels of one interface, each its own subject) can later
share one model call without sharing state.

Two clocks meet here.  The *sample clock* (``history.count``) is the stream's
time in 16 kHz samples: frame k depicts its samples [k/30, (k+1)/30) s.  The
*capture clock* is the source ring's frame index, whose blocks carry their
arrival times.  Within one *segment* of uninterrupted capture, stream sample s
is ring frame ``anchor_raw + (s - anchor_sample) * rate_ratio``.  A gap (audio
the ring overwrote because the hop loop was held up; a capture device that went
away and came back) ends a segment: the stream appends silence for the time the
gap took in the stream, re-anchors the two clocks at the first new sample, and
the frames that would depict lost audio are dropped (counted), so frame numbers
stay in order and latency stays measured from each frame's real arrival.
"""

from __future__ import annotations

import numpy as np

from bridge.audio.base import AudioSource
from bridge.audio.conditioner import Conditioner
from bridge.audio.history import AudioHistory
from bridge.frame import FPS, SAMPLE_RATE, frame_end_sample, frames_complete
from bridge.streams.scheduler import HopScheduler


def first_frame_at_or_after(sample: int) -> int:
    """The first frame whose audio starts at or after stream sample ``sample``.

    Frame k starts at ``ceil(k * 16000 / 30)``, which is >= s exactly when
    ``k * 16000 > 30 * (s - 1)``.
    """
    if sample <= 0:
        return 0
    return (FPS * (sample - 1)) // SAMPLE_RATE + 1


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
        # The history holds a window, the lookahead and keep_seconds beyond: a bounded pull
        # stays (keep_seconds - 0.1 s) ahead of the next frame, and the silence that pads the
        # last frame's lookahead fits in the rest.
        keep = window_samples + frame_end_sample(lookahead) + int(keep_seconds * SAMPLE_RATE)
        self.history = AudioHistory(window_samples, keep)
        self._ahead = int(keep_seconds * SAMPLE_RATE) - SAMPLE_RATE // 10
        self.scheduler = HopScheduler(window_frames, lookahead)
        self.history.needed_from = self._next_window_start
        self.limit_samples = limit_samples  #: stop after this many 16 kHz samples (--duration)
        self._empty = np.zeros((0, source.channels), np.float32)
        self._solo = None  #: the CaptureGroup of one that :meth:`pull` reads through, made on first use
        self._rate_ratio = source.samplerate / SAMPLE_RATE
        # The current segment: stream sample _anchor_sample is ring frame _anchor_raw.
        self._anchor_sample = 0
        self._anchor_raw = 0
        self._raw_pulled = 0  #: ring frames taken out of the ring in this segment
        self.ended = False  #: no more audio will come (end of file, duration reached)
        self._frames_at_end = 0
        self.gap_end_frame = 0  #: frames before this one depict lost audio: drop them
        self.gaps = 0  #: times the ring overwrote audio before it was read (hop loop held up)
        self.lost_samples = 0  #: 16 kHz samples of audio lost that way (silence in the history)

    # ---- moving audio in ---------------------------------------------------------------
    def pull(self, bounded: bool = False) -> int:
        """Move what the source has written so far into the history; return 16 kHz samples added.

        Takes only what was there when called.  ``bounded`` (sources faster than real
        time, which wait for room in their ring) also takes no more than the history
        can hold while it still has the next frame's window: the rest stays in the
        ring, so every frame of such a source is published, however fast it writes.
        A stream alone on its source reads the ring through a :class:`CaptureGroup` of one.
        """
        if self._solo is None:
            from bridge.streams.capture import CaptureGroup

            self._solo = CaptureGroup(self.source, [self])
        before = self.history.count
        self._solo.pull(bounded)
        return self.history.count - before

    def _next_window_start(self) -> int:
        """The first sample of the next frame's model window at any lookahead: audio before it
        is never asked for again (a history slide need not keep it)."""
        return frame_end_sample(self.scheduler.next_frame) - self.history.window

    def raw_room(self) -> int:
        """Ring frames a bounded pull may still take for this stream (see :meth:`pull_limit`)."""
        room = self.pull_limit() - self.history.count
        return max(0, int(room * self._rate_ratio))

    def feed(self, raw: np.ndarray) -> None:
        """Condition ``raw`` (ring frames, n x channels: the next ones of this segment) into the history."""
        self._raw_pulled += raw.shape[0]
        self._append(self.conditioner.process(raw))

    def fed(self, n: int) -> None:
        """``n`` ring frames of this segment went into the history by its capture group's
        shared copy (see :class:`~bridge.streams.capture.CaptureGroup`)."""
        self._raw_pulled += n

    def finish(self) -> None:
        """The source has written its last frame and all of it was fed: flush and end."""
        self._append(self.conditioner.process(self._empty, last=True))
        self._end()

    def pull_limit(self) -> int:
        """How far a bounded pull may fill the history: ``keep_seconds`` (less 0.1 s for the
        resampler's hold-back) past the audio the next frame needs, so the next hop's window
        is still held, whatever the window, the lookahead and the end-of-stream padding."""
        sched = self.scheduler
        return frame_end_sample(sched.next_frame + sched.lookahead) + self._ahead

    def gap(self, resume_raw: int) -> int:
        """The ring overwrote audio before we read it; the next frame read is ``resume_raw``.

        Fill the lost time with silence, so the sample clock stays on the capture
        clock, and start a new segment there; return the samples added.
        """
        added = self._append(self.conditioner.process(self._empty, last=True))
        start = self._anchor_sample + int(round((resume_raw - self._anchor_raw) / self._rate_ratio))
        silence = max(0, start - self.history.count)
        added += self._silence(silence)
        self.lost_samples += silence
        self.gaps += 1
        self._new_segment(self.history.count, resume_raw)
        self.gap_end_frame = max(self.gap_end_frame, first_frame_at_or_after(self.history.count))
        return added

    def restart(self, frame: int, resume_raw: int) -> int:
        """Capture starts again (a lost device is back) at ring frame ``resume_raw``.

        Its first sample becomes the start of frame ``frame`` (the next number after
        those sent while it was lost), or of the first frame after the audio already
        held, if that is later; older unread audio in the ring is dropped.  Returns
        the first frame the new audio depicts: frames before it are to be dropped.
        """
        self._append(self.conditioner.process(self._empty, last=True))
        start = frame_end_sample(frame - 1) if frame > 0 else 0
        if start < self.history.count:
            frame = first_frame_at_or_after(self.history.count)
            start = frame_end_sample(frame - 1)
        self._silence(start - self.history.count)
        self.source.ring.skip_to(resume_raw)  # a capture group's first member skips; the rest find it done
        self._new_segment(start, resume_raw)
        self.gap_end_frame = max(self.gap_end_frame, frame)
        return frame

    def _new_segment(self, sample: int, raw: int) -> None:
        self._anchor_sample, self._anchor_raw, self._raw_pulled = sample, raw, 0
        self.conditioner.restart()

    def _silence(self, n: int) -> int:
        if self.limit_samples is not None:
            n = min(n, max(0, self.limit_samples - self.history.count))
        self.history.append_silence(n)
        if self.limit_samples is not None and self.history.count >= self.limit_samples:
            self._end()
        return max(n, 0)

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
                self.history.append_silence(need)

    # ---- what the hop loop asks ------------------------------------------------------
    def expected_count(self) -> float:
        """The sample clock a ``pull()`` now would reach, estimated without doing it.

        Lets the hop loop sleep until a frame's audio is there instead of
        conditioning every small capture block as it lands: one pull per hop.
        """
        ring = self.source.ring
        pulled = self._anchor_sample + self._raw_pulled / self._rate_ratio
        lag = max(0.0, pulled - self.history.count)  # resampler hold-back
        return self.history.count + ring.available() / self._rate_ratio - lag

    def first_usable_frame(self) -> int:
        """Frames before this one cannot be published: their audio was lost, or their
        window is no longer in the history (the hop loop fell far behind)."""
        sched, history = self.scheduler, self.history
        # the model window of frame k (+ lookahead) and frame k's own audio must be held
        k = first_frame_at_or_after(history.first_window_end) - 1 - sched.lookahead
        k = max(k, first_frame_at_or_after(history.first_window_end - history.window))
        return max(k, self.gap_end_frame)

    @property
    def frames_total(self) -> int:
        """Frames the stream covers so far (final once it has ended)."""
        return self._frames_at_end if self.ended else frames_complete(self.history.count)

    def capture_time(self, sample: int) -> float:
        """When the 16 kHz sample ``sample`` was captured (its source block's arrival)."""
        raw = self._anchor_raw + int(max(0, sample - self._anchor_sample) * self._rate_ratio)
        return self.source.ring.capture_time(raw)
