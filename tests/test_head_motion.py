"""Procedural head motion and eye saccades (bridge/post/head.py): bounded, smooth, driven by
speech energy, deterministic, off by default, and in Live Link units (degrees / 180)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bridge.errors import BridgeError
from bridge.frame import FaceFrame
from bridge.outputs import LiveLinkEncoder
from bridge.post.base import FrameContext
from bridge.post.head import HeadMotion, HeadMotionConfig
from tests.decoders import decode_livelink

SPEECH_RMS, SILENCE_RMS = 0.1, 1e-4  # -20 dBFS and -80 dBFS
TEN_MINUTES = 30 * 600


def run(stage: HeadMotion, rms: np.ndarray, block: int | list[int] = 3, first: int = 0) -> np.ndarray:
    """Feed ``rms`` frame by frame in blocks (as the hop loop does); the (n, 9) head values."""
    n = len(rms)
    head = np.zeros((n, 9), np.float32)
    values = np.full((n, 52), 0.5, np.float32)
    sizes = block if isinstance(block, list) else [block]
    i = j = 0
    while i < n:
        m = min(sizes[j % len(sizes)], n - i)
        stage.process(
            values[i : i + m],
            FrameContext(first + i, rms[i : i + m].astype(np.float32), None, head[i : i + m]),
        )
        i += m
        j += 1
    assert np.all(values == 0.5), "the stage must leave the blendshapes alone"
    return head


def on(**kw: object) -> HeadMotion:
    return HeadMotion(HeadMotionConfig(enabled=True, **kw))  # type: ignore[arg-type]


def test_off_by_default_and_zero_when_disabled() -> None:
    assert HeadMotionConfig().enabled is False
    rms = np.full(900, SPEECH_RMS)
    assert not run(HeadMotion(), rms).any()
    assert not run(HeadMotion(HeadMotionConfig(enabled=False, yaw_deg=10)), rms).any()
    stage = on()
    stage.process(np.zeros((2, 52), np.float32), FrameContext(0, np.full(2, 0.1, np.float32), None, None))


def test_within_amplitude_in_live_link_units() -> None:
    cfg = {
        "yaw_deg": 6.0,
        "pitch_deg": 3.0,
        "roll_deg": 2.0,
        "saccade_yaw_deg": 5.0,
        "saccade_pitch_deg": 1.5,
    }
    head = run(on(**cfg), np.full(TEN_MINUTES, SPEECH_RMS)).astype(np.float64) * 180  # back to degrees
    peak = np.abs(head).max(axis=0)
    limits = [6.0, 3.0, 2.0, 5.0, 1.5, 0.0, 5.0, 1.5, 0.0]
    assert np.all(peak <= np.array(limits) + 1e-4), peak
    # degrees / 180: a long run of speech uses most of the range (not radians, not raw degrees)
    assert np.all(peak[[0, 1, 2, 3, 4]] > 0.6 * np.array(limits)[[0, 1, 2, 3, 4]]), peak
    assert np.array_equal(head[:, 3:6], head[:, 6:9]), "both eyes move together"


def test_smooth_except_at_saccades() -> None:
    stage = on()
    rms = np.where((np.arange(TEN_MINUTES) // 150) % 2 == 0, SPEECH_RMS, SILENCE_RMS)  # 5 s on, 5 s off
    head = run(stage, rms).astype(np.float64)
    step = np.abs(np.diff(head, axis=0))
    amp = np.array([3.0, 2.0, 1.5]) / 180
    # slope of the noise (2 cosine octaves, knots 75 and 27.8 frames apart) plus the envelope's
    # fastest change (attack 0.25 s): under 15 % of the amplitude per frame
    assert np.all(step[:, :3].max(axis=0) < 0.15 * amp), step[:, :3].max(axis=0) / amp
    assert np.all(step[:, :3].max(axis=0) > 0.01 * amp)  # it does move
    moved = np.flatnonzero(step[:, 3:].max(axis=1) > 0) + 1
    assert set(moved) <= set(stage.saccade_frames)
    assert len(moved) >= 0.9 * len(stage.saccade_frames)  # (a jump can land where it was: rare)


def test_saccade_intervals_over_ten_minutes() -> None:
    stage = on(saccade_min_s=0.5, saccade_max_s=3.0)
    run(stage, np.full(TEN_MINUTES, SPEECH_RMS))
    gaps = np.diff(stage.saccade_frames) / 30
    assert gaps.min() >= 0.5 - 1e-9 and gaps.max() <= 3.0 + 1e-9
    assert 300 <= len(gaps) <= 390  # 600 s / 1.75 s mean = 343
    assert gaps.min() < 0.6 and gaps.max() > 2.9  # the whole range is used
    assert abs(gaps.mean() - 1.75) < 0.12


def test_more_motion_with_speech_than_silence() -> None:
    n = 30 * 120
    loud = run(on(seed=3), np.full(n, SPEECH_RMS))[:, :3]
    quiet = run(on(seed=3), np.full(n, SILENCE_RMS))[:, :3]
    ratio = np.abs(loud).mean(axis=0) / np.abs(quiet).mean(axis=0)
    assert np.all(ratio > 2.0), ratio  # full amplitude vs idle = 0.35 of it
    # and within one run: speaking stretches move more than the silent ones
    rms = np.where((np.arange(n) // 300) % 2 == 0, SPEECH_RMS, SILENCE_RMS)
    head = run(on(seed=3), rms)[:, 0]
    speaking = (np.arange(n) // 300) % 2 == 0
    settled = (np.arange(n) % 300) >= 60  # skip the envelope's 2 s transitions
    assert np.abs(head[speaking & settled]).mean() > 1.8 * np.abs(head[~speaking & settled]).mean()


def test_deterministic_for_a_seed_and_independent_of_blocking() -> None:
    rng = np.random.default_rng(0)
    rms = rng.uniform(0, 0.2, 3000)
    a = run(on(seed=7), rms, block=1)
    b = run(on(seed=7), rms, block=[3, 1, 2, 5, 3])
    c = run(on(seed=8), rms, block=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a[:, :3], c[:, :3]) and not np.array_equal(a[:, 3:], c[:, 3:])


def test_values_reach_live_link_packet() -> None:
    head = run(on(), np.full(120, SPEECH_RMS))
    frame = FaceFrame(119, np.zeros(52, np.float32), 0.0, head[-1], "s")
    pkt = decode_livelink(LiveLinkEncoder("s", "d").encode(frame))
    assert pkt["values"][52:] == pytest.approx(head[-1].tolist())
    assert math.isclose(pkt["values"][52] * 180, float(head[-1, 0]) * 180, rel_tol=1e-6)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"yaw_deg": -1.0}, r"^post\.head\.yaw_deg = -1\.0 must be >= 0$"),
        ({"idle": 1.5}, r"^post\.head\.idle = 1\.5 must be 0\.\.1$"),
        ({"period_s": 0.0}, r"^post\.head\.period_s = 0\.0 must be > 0$"),
        (
            {"saccade_min_s": 2.0, "saccade_max_s": 1.0},
            r"post\.head\.saccade_max_s = 1\.0 must be >= saccade_min_s",
        ),
        ({"speech_db": -60.0}, r"post\.head\.speech_db = -60\.0 must be above silence_db"),
    ],
)
def test_bad_settings_are_one_line(kw: dict[str, float], match: str) -> None:
    with pytest.raises(BridgeError, match=match) as err:
        HeadMotionConfig(**kw)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_non_finite_rms_counts_as_silence() -> None:
    rms = np.full(300, np.nan)
    head = run(on(), rms)
    assert np.isfinite(head).all() and np.abs(head[:, 0]).max() <= 0.35 * 3.0 / 180 + 1e-7
