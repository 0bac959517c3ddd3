"""Hops on the sample clock: exact frame counts, adaptive stride, lookahead, skipping."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.audio.history import AudioHistory
from bridge.frame import frame_end_sample, frames_complete
from bridge.streams.scheduler import HopScheduler


def test_frame_boundaries_are_exact() -> None:
    assert [frame_end_sample(k) for k in range(4)] == [534, 1067, 1600, 2134]
    assert frame_end_sample(29) == 16000 and frame_end_sample(30 * 3600 - 1) == 16000 * 3600
    for s in [0, 533, 534, 1066, 1067, 16000, 16001]:
        k = frames_complete(s)
        assert frame_end_sample(k - 1) <= s < frame_end_sample(k) if k else s < 534


def test_hours_of_random_blocks_publish_every_frame_once_in_order() -> None:
    """Three hours of audio in random-size blocks: 30 frames per 16000 samples, no drift."""
    rng = np.random.default_rng(7)
    sched = HopScheduler(window_frames=30)
    samples = 0
    published = 0
    last = -1
    hours = 3
    for n in rng.integers(1, 2000, size=hours * 3600 * 16000 // 1000):
        samples += int(n)
        while (hop := sched.plan(samples)) is not None:
            assert hop.first == last + 1 and hop.dropped == 0
            assert hop.window_end == frame_end_sample(hop.last) <= samples
            published += hop.stride
            last = hop.last
            sched.done(hop)
    assert published == frames_complete(samples)
    assert published == pytest.approx(samples * 30 / 16000, abs=1)


def test_adaptive_stride_covers_the_backlog_in_one_call() -> None:
    sched = HopScheduler(window_frames=30)
    hop = sched.plan(frame_end_sample(4))  # 5 frames ready at once (inference was slow)
    assert (hop.first, hop.last, hop.stride) == (0, 4, 5)
    sched.done(hop)
    assert sched.plan(frame_end_sample(4)) is None
    hop = sched.plan(frame_end_sample(100))  # more than a window behind: capped at the window
    assert hop.stride == 30 and hop.first == 5


def test_lookahead_holds_frames_back_and_moves_the_window() -> None:
    sched = HopScheduler(window_frames=30, lookahead=3)
    assert sched.plan(frame_end_sample(2)) is None  # frame 0 needs frames up to 3
    hop = sched.plan(frame_end_sample(3))
    assert (hop.first, hop.last, hop.window_last_frame) == (0, 0, 3)
    assert hop.window_end == frame_end_sample(3)


def test_late_frames_are_skipped_and_counted_never_the_newest() -> None:
    sched = HopScheduler(window_frames=30)
    hop = sched.plan(frame_end_sample(9), oldest_in_time=6)
    assert (hop.first, hop.last, hop.dropped) == (6, 9, 6)
    sched.done(hop)
    hop = sched.plan(frame_end_sample(12), oldest_in_time=99)
    assert (hop.first, hop.last) == (12, 12) and sched.dropped == 6
    sched.done(hop)
    assert sched.dropped == 8


def test_history_windows_are_zero_padded_and_contiguous() -> None:
    h = AudioHistory(window=1600, keep=4000)
    x = np.arange(1, 50_001, dtype=np.float32)
    for i in range(0, x.shape[0], 333):
        h.append(x[i : i + 333])
        end = h.count
        w = h.window_ending(end)
        lo = end - 1600
        want = np.concatenate([np.zeros(max(0, -lo), np.float32), x[max(lo, 0) : end]])
        assert np.array_equal(w, want) and w.flags["C_CONTIGUOUS"]
    with pytest.raises(IndexError):
        h.window_ending(h.count - 10_000)
