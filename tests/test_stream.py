"""The stream's two clocks after a gap: lost audio becomes silence, frame numbers only go up,
and every sample still maps to the capture time of the block it arrived in."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.audio.history import AudioHistory
from bridge.audio.ring import SampleRing
from bridge.frame import frame_end_sample
from bridge.streams.scheduler import HopScheduler
from bridge.streams.stream import InputStream, first_frame_at_or_after


class RingSource:
    """The AudioSource contract around a bare ring the test writes into (no thread)."""

    name = "ring"
    channels = 1
    finished = False
    error = None

    def __init__(self, samplerate: int, seconds: float) -> None:
        self.samplerate = samplerate
        self.ring = SampleRing(int(samplerate * seconds), 1)

    def write(self, seconds: float, when: float, level: float = 0.5, block: int = 480) -> None:
        """``seconds`` of a constant level in blocks; block b arrives at ``when + b``."""
        x = np.full(block, level, np.float32)
        for b in range(int(seconds * self.samplerate) // block):
            self.ring.write(x, when + b)

    def start(self) -> None: ...

    def stop(self) -> None: ...


def make_stream(source: RingSource) -> InputStream:
    return InputStream(source, channel=0, window_samples=16000, window_frames=30, lookahead=0)


def test_first_frame_at_or_after() -> None:
    def start(k: int) -> int:
        return frame_end_sample(k - 1) if k else 0

    for s in range(-3, 20000):
        k = first_frame_at_or_after(s)
        assert start(k) >= s and (k == 0 or start(k - 1) < s)
    assert first_frame_at_or_after(534) == 1 and first_frame_at_or_after(535) == 2


def test_history_silence_and_spans() -> None:
    h = AudioHistory(window=1600, keep=4000)
    h.append(np.ones(3000, np.float32))
    h.append_silence(500)
    assert h.count == 3500 and np.array_equal(h.span(2900, 3100), [1] * 100 + [0] * 100)
    h.append_silence(10_000)  # longer than kept: everything held is silence
    assert h.count == 13_500 and not h.window_ending(13_500).any()
    assert h.first_window_end <= 13_500 - 4000 + 1600
    with pytest.raises(IndexError):
        h.span(0, 100)
    h.append(np.full(100, 2.0, np.float32))
    assert np.array_equal(h.window_ending(h.count)[-101:], [0] + [2] * 100)


def test_scheduler_drops_and_rest_frames_keep_numbers_going_up() -> None:
    sched = HopScheduler(window_frames=30)
    assert sched.drop_until(5) == 5 and sched.next_frame == 5 and sched.dropped == 5
    assert sched.drop_until(3) == 0 and sched.next_frame == 5
    assert [sched.take_rest_frame() for _ in range(3)] == [5, 6, 7]
    assert sched.dropped == 5
    hop = sched.plan(frame_end_sample(9))
    assert (hop.first, hop.last) == (8, 9)


def test_ring_skip_to_drops_stale_audio_without_counting_an_overrun() -> None:
    ring = SampleRing(100, 1)
    ring.write(np.arange(60, dtype=np.float32), 1.0)
    assert ring.skip_to(40) == 40 and ring.available() == 20 and ring.overrun == 0
    assert ring.skip_to(1000) == 20 and ring.available() == 0


@pytest.mark.parametrize("rate", [16000, 48000])
def test_an_overrun_becomes_silence_on_the_capture_clock(rate: int) -> None:
    source = RingSource(rate, seconds=1.0)
    stream = make_stream(source)
    source.write(0.9, when=1000.0)
    stream.pull()
    source.write(1.5, when=2000.0)  # the ring holds 1 s: 0.5 s is overwritten before it is read
    stream.pull()
    assert stream.gaps == 1
    assert stream.lost_samples == pytest.approx(0.5 * 16000, abs=40)
    # The sample clock stayed on the capture clock: 0.9 + 1.5 s of stream.
    assert stream.history.count == pytest.approx(2.4 * 16000, abs=40)
    # The first sample after the gap arrived in the block that held it.
    block = 480 / rate
    first_after = round(1.4 * 16000)
    assert stream.capture_time(first_after + 8) == pytest.approx(2000 + round(0.5 / block), abs=1)
    # Frames depicting the lost audio are not published; those after are.
    assert stream.gap_end_frame == first_frame_at_or_after(first_after)
    assert stream.first_usable_frame() == stream.gap_end_frame
    lost = stream.history.span(round(0.9 * 16000) + 200, round(1.4 * 16000) - 200)
    assert not lost.any()


def test_a_restart_goes_on_after_the_frames_sent_at_rest() -> None:
    source = RingSource(16000, seconds=2.0)
    stream = make_stream(source)
    source.write(1.0, when=1000.0)
    stream.pull()
    sched = stream.scheduler
    sched.drop_until(30)  # as if frames 0..29 were published
    rest = [sched.take_rest_frame() for _ in range(45)]  # 1.5 s at rest: frames 30..74
    source.write(0.3, when=5000.0, level=0.9)  # stale audio from the lost stream
    mark = source.ring.written
    source.write(0.5, when=6000.0, level=0.25)  # the device is back
    first = stream.restart(sched.next_frame, mark)
    assert rest[-1] == 74 and first == 75
    stream.pull()
    sched.drop_until(stream.first_usable_frame())
    assert sched.next_frame == 75 and sched.dropped == 30
    start = frame_end_sample(74)
    assert stream.history.span(start, start + 100).min() == pytest.approx(0.25)
    assert not stream.history.span(start - 100, start).any()  # the time at rest is silence
    assert stream.capture_time(start) == 6000.0
