"""Sources faster than real time publish every frame once; a hop loop far behind skips, never crashes.

Issue 7 item 1: one ``pull()`` used to take the whole ring (4 s) while a hop
publishes at most a window of frames, and the history keeps only window + 4 s,
so ``run --fast`` on any file longer than ~5 s ended in ``IndexError: window
ending at ... is outside the history``.  The oracle model makes every value
prove which audio its frame depicts.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bridge.audio.ring import SampleRing
from bridge.blendshapes import ARKIT_NAMES
from bridge.config import parse_config
from bridge.engine import Bridge
from bridge.modeltools.synth import oracle_value
from bridge.signals import staircase, staircase_level

JAW = ARKIT_NAMES.index("jawOpen")


def config(wav: str = "unused.wav", *, realtime: bool = False, **model: object) -> dict:
    return {
        "input": {"kind": "file", "file": wav, "realtime": realtime, "channel": 0},
        "model": {"preset": "oracle", "providers": ["cpu"], "threads": 1, "fallback": "", **model},
        "output": [],
    }


def run(cfg: dict, source: object | None = None, monkeypatch: pytest.MonkeyPatch | None = None,
        ) -> tuple[dict, list[int], list[float]]:  # fmt: skip
    """Run the bridge; the frame numbers and jawOpen values it published, in order."""
    if source is not None:
        assert monkeypatch is not None
        monkeypatch.setattr("bridge.engine.build_source", lambda cfg, duration=None: source)
    numbers: list[int] = []
    jaw: list[float] = []

    def on_frame(f) -> None:
        numbers.append(f.number)
        jaw.append(float(f.values[JAW]))

    bridge = Bridge(parse_config(cfg, "t.toml"), raw=True, on_frame=on_frame)
    try:
        return bridge.run().as_dict(), numbers, jaw
    finally:
        bridge.close()


def assert_oracle(numbers: list[int], jaw: list[float], every: int = 1) -> None:
    for k, v in list(zip(numbers, jaw, strict=True))[::every]:
        assert v == pytest.approx(oracle_value(staircase_level(k), JAW), abs=3e-3), k


@pytest.mark.parametrize("seconds, rate", [(20, 48000), (60, 16000)])
def test_a_fast_file_publishes_every_frame_once(tmp_path: Path, seconds: int, rate: int) -> None:
    frames = seconds * 30
    wav = tmp_path / "long.wav"
    soundfile.write(str(wav), staircase(frames, rate), rate, subtype="FLOAT")
    stats, numbers, jaw = run(config(str(wav)))
    assert numbers == list(range(frames))
    assert stats["frames_published"] == stats["frames_expected"] == frames
    assert stats["frames_dropped"] == 0 and stats["ring_overruns"] == 0
    assert_oracle(numbers, jaw, every=7)


class WholeFileSource:
    """Stand-in for a source that delivers its whole file in one block (no pacing, no reader
    thread): the AudioSource contract, with a ring sized for the file.  FileSource cannot do
    this (it writes blocks of input.blocksize)."""

    name = "whole-file (stand-in)"
    channels = 1
    error = None

    def __init__(self, audio: np.ndarray, samplerate: int) -> None:
        self.samplerate = samplerate
        self.ring = SampleRing(audio.shape[0], 1, time_slots=4)
        self._audio = audio
        self.finished = False

    def start(self) -> None:
        self.ring.write(self._audio, time.monotonic())
        self.finished = True

    def stop(self) -> None:
        pass


@pytest.mark.parametrize("seconds", [20, 600])
def test_a_source_that_delivers_its_whole_file_in_one_block(
    monkeypatch: pytest.MonkeyPatch, seconds: int
) -> None:
    frames = seconds * 30
    source = WholeFileSource(staircase(frames), 16000)
    stats, numbers, jaw = run(config(), source, monkeypatch)
    assert numbers == list(range(frames))
    assert stats["frames_published"] == stats["frames_expected"] == frames
    assert stats["frames_dropped"] == 0
    assert_oracle(numbers, jaw, every=101)


class BurstSource(WholeFileSource):
    """Stand-in for a paced source whose audio arrives in one late burst (a starved reader
    thread or callback catching up): all of it at once, stamped on arrival, then nothing."""

    name = "burst (stand-in)"

    def __init__(self, seconds: float) -> None:
        super().__init__(staircase(int(seconds * 30)), 16000)
        self.ring = SampleRing(self._audio.shape[0] + 16000, 1)  # room to spare, as a device ring


def test_a_hop_loop_far_behind_skips_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """16 s arrive at once on a realtime input: more than the history holds (at least 4 s
    past the window).  The frames that fell out of it are skipped and counted; the rest go
    out once, in order."""
    stats, numbers, jaw = run(config(realtime=True), BurstSource(16.0), monkeypatch)
    assert numbers == sorted(set(numbers)) and numbers[-1] == 479
    assert stats["frames_dropped"] >= 480 - 11 * 30  # the history holds at most 2 x 5 s + 1 s
    assert stats["frames_published"] + stats["frames_dropped"] == stats["frames_expected"] == 480
    assert_oracle(numbers, jaw)


def test_run_fast_on_a_20_s_file_from_the_command_line(tmp_path: Path) -> None:
    """The reproduction from the issue, as a user types it."""
    wav, stats, cfg = tmp_path / "s20.wav", tmp_path / "stats.json", tmp_path / "c.toml"
    cfg.write_text('output = []\n[model]\nproviders = ["cpu"]\nthreads = 1\n')
    subprocess.run([sys.executable, "-m", "bridge.signals", str(wav), "20"], check=True, timeout=60,
                   capture_output=True)  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--model", "synthetic", "--input", str(wav), "--fast",
         "--stats", str(stats), "-c", str(cfg)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "published 600 of 600 frames (0 dropped)" in proc.stderr


def test_a_fast_file_whose_next_frame_needs_more_than_the_ring_holds(tmp_path: Path) -> None:
    """A 0.5 s ring, 1 s of lookahead, a 6 s window: the reader waits for room while the
    first frame needs twice what the ring holds; the hop loop must drain it regardless."""
    frames = 30 * 20
    wav = tmp_path / "long.wav"
    soundfile.write(str(wav), staircase(frames), 16000, subtype="FLOAT")
    cfg = config(str(wav))
    cfg["input"]["ring_seconds"] = 0.5
    cfg["model"].update(preset="synthetic", window_s=6.0)
    cfg["schedule"] = {"lookahead_frames": 30}
    stats, numbers, _ = run(cfg)
    assert numbers == list(range(frames)) and stats["frames_dropped"] == 0
