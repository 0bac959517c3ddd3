"""Automatic fallback: on a failed load, and on sustained deadline misses, without a gap."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import soundfile

from bridge.blendshapes import ARKIT_NAMES
from bridge.config import parse_config
from bridge.engine import Bridge
from bridge.model.fallback import FallbackSwitch
from bridge.modeltools.synth import oracle_value
from bridge.signals import staircase, staircase_level


def run(cfg: dict, duration: float | None = None) -> tuple[dict, list[tuple[int, np.ndarray]]]:
    frames: list[tuple[int, np.ndarray]] = []
    bridge = Bridge(parse_config(cfg, "t.toml"), raw=True, duration=duration,
                    on_frame=lambda f: frames.append((f.number, f.values.copy())))  # fmt: skip
    try:
        return bridge.run().as_dict(), frames
    finally:
        bridge.close()


def is_oracle(k: int, values: np.ndarray) -> bool:
    jaw = ARKIT_NAMES.index("jawOpen")
    return abs(values[jaw] - oracle_value(staircase_level(k), jaw)) < 3e-3


def test_broken_primary_falls_back_at_start(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an onnx file")
    wav = tmp_path / "s.wav"
    soundfile.write(str(wav), staircase(30), 16000, subtype="FLOAT")
    stats, frames = run({
        "input": {"kind": "file", "file": str(wav), "realtime": False},
        "model": {"preset": "synthetic", "path": str(broken), "fallback": "oracle", "providers": ["cpu"]},
        "output": [],
    })  # fmt: skip
    fb = stats["fallback"]
    assert fb["from"] == "synthetic" and fb["to"] == "oracle" and "not a valid ONNX model" in fb["reason"]
    assert fb["after_s"] < 1.0  # the fallback runs within a second of the failed load
    assert [k for k, _ in frames] == list(range(30)) and all(is_oracle(k, v) for k, v in frames)


def test_sustained_deadline_misses_switch_models_without_a_gap(tmp_path: Path) -> None:
    wav = tmp_path / "s.wav"
    soundfile.write(str(wav), staircase(120), 16000, subtype="FLOAT")
    stats, frames = run({
        "input": {"kind": "file", "file": str(wav), "realtime": True},
        # A 0.2 ms budget no model can meet: every hop misses its deadline.
        "model": {"preset": "oracle", "fallback": "synthetic-wav2arkit", "fallback_after_s": 1.0,
                  "providers": ["cpu"]},
        "schedule": {"max_latency_ms": 0.2},
        "output": [],
    })  # fmt: skip
    fb = stats["fallback"]
    assert fb["from"] == "oracle" and fb["to"] == "synthetic-wav2arkit" and "latency budget" in fb["reason"]
    assert 1.0 <= fb["after_s"] < 2.0  # within 2 s of the misses starting
    numbers = [k for k, _ in frames]
    assert numbers == sorted(set(numbers))  # each frame once, in order
    switch = fb["at_frame"]
    before = [(k, v) for k, v in frames if k < switch]
    after = [(k, v) for k, v in frames if k >= switch]
    assert before and after and after[0][0] == before[-1][0] + 1  # no gap at the switch
    assert all(is_oracle(k, v) for k, v in before)
    assert not any(is_oracle(k, v) for k, v in after)  # the fallback model made these
    assert stats["model"] == "synthetic-wav2arkit"
    assert stats["frames_published"] + stats["frames_dropped"] == stats["frames_expected"] == 120


def test_a_stall_or_an_input_gap_never_counts_as_the_model_missing() -> None:
    """A hop held up by something else (and the catch-up hop after it) ends a streak of
    misses; only misses hop after hop for fallback_after_s switch."""
    loads: list[int] = []
    switch = FallbackSwitch(lambda: loads.append(1), after_s=1.0, max_latency_ms=250.0)
    switch.observe(0.0, missed=True)  # a streak starts
    switch.observe(4.5, missed=True, held_up=True)  # the hop loop was stalled 4.5 s
    switch.observe(4.55, missed=True)  # the catch-up hop: late because of the stall
    switch.observe(4.6, missed=True)  # a real miss again: a new streak starts here
    switch.observe(5.0, missed=True)
    switch.observe(5.1, missed=False)  # 0.5 s of misses: not sustained
    assert switch.armed and not loads
    for i in range(40):  # misses, hop after hop, for 1.3 s
        switch.observe(6.0 + i / 30, missed=True)
    assert not switch.armed
    deadline = time.monotonic() + 5
    while not loads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loads == [1] and "for 1.0 s" in switch.reason
