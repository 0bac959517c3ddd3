"""Offline rendering, the comparison with the realtime path, and neutral calibration.

The oracle model's channel j of frame i is the mean of frame i's audio plus
j/128: fed a staircase whose frame k holds a distinct level, a render proves
that its frame k depicts audio [k/30, (k+1)/30) (see tests/test_pipeline.py).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from bridge.blendshapes import NUM_BLENDSHAPES, canonical_index
from bridge.cli.main import main
from bridge.config import BridgeConfig, parse_config
from bridge.livelink_csv import format_timecode, read_livelink_csv
from bridge.modeltools.synth import oracle_value
from bridge.offline import Audio, compare, read_audio, render, render_streaming, window_plan
from bridge.post.gate import SPEECH_CHANNELS
from bridge.signals import speech_like, staircase, staircase_level

GATED = [canonical_index(n) for n in SPEECH_CHANNELS]


def config(preset: str = "oracle", post: dict | None = None) -> BridgeConfig:
    data: dict = {"model": {"preset": preset, "providers": ["cpu"], "fallback": ""}}
    if post is not None:
        data["post"] = post
    return parse_config(data, "test.toml")


def write_toml(path: Path, preset: str, post: str = "") -> Path:
    path.write_text(f'[model]\npreset = "{preset}"\nproviders = ["cpu"]\nfallback = ""\n{post}')
    return path


def stair_file(path: Path, frames: int = 75, rate: int = 16000, channels: int = 1) -> Path:
    x = staircase(frames, rate)
    soundfile.write(str(path), np.repeat(x[:, None], channels, axis=1), rate, subtype="FLOAT")
    return path


def expected(frames: int) -> np.ndarray:
    return np.array([[oracle_value(staircase_level(k), j) for j in range(NUM_BLENDSHAPES)]
                     for k in range(frames)], dtype=np.float32)  # fmt: skip


def test_window_plan_keeps_the_middle_on_frame_edges() -> None:
    assert window_plan(30) == (15, 6)  # keep frames 6..20 of each 1 s window: 6 left, 9 right
    assert window_plan(60) == (30, 15)
    for w in range(3, 301, 3):
        hop, left = window_plan(w)
        assert hop % 3 == 0 and left % 3 == 0 and hop >= 3 and w - hop - left >= left


def test_offline_frame_k_carries_audio_k(tmp_path: Path) -> None:
    r = render(config(), stair_file(tmp_path / "stair.wav"), raw=True)
    assert r.frames == 75
    np.testing.assert_allclose(r.values, expected(75), atol=1e-5)
    # The post chain runs over the same frames: clamp only leaves these (< 1) values alone.
    clamped = render(config(post={"gate": {"enabled": False}, "smoothing": {"kind": "off"},
                                  "blink": {"enabled": False}}), r.audio)  # fmt: skip
    np.testing.assert_allclose(clamped.values, np.minimum(expected(75), 1.0), atol=1e-5)


@pytest.mark.parametrize(
    ("rate", "channels", "tolerance"),
    [(8000, 1, 2e-3), (16000, 2, 1e-5), (44100, 2, 2e-3), (96000, 1, 2e-3), (96000, 2, 2e-3)],
)
def test_rates_and_channels(tmp_path: Path, rate: int, channels: int, tolerance: float) -> None:
    frames = 45
    r = render(config(), stair_file(tmp_path / "s.wav", frames, rate, channels), raw=True)
    assert r.frames == frames and r.audio.source_rate == rate and r.audio.source_channels == channels
    # resampling rounds the staircase's edges a little; a frame off by one would be >= 0.07 off
    np.testing.assert_allclose(r.values, expected(frames), atol=tolerance)


@pytest.mark.parametrize("seconds", [2.5, 1.00625, 0.01, 1 / 30, 0.0])
def test_frame_count_is_ceil_of_duration_times_30(tmp_path: Path, seconds: float) -> None:
    n = round(seconds * 16000)
    path = tmp_path / "d.wav"
    soundfile.write(str(path), staircase(80, 16000)[:n], 16000, subtype="FLOAT")
    audio = read_audio(path)
    assert audio.frames == math.ceil(n / 16000 * 30 - 1e-9)
    r = render(config(), audio, raw=True)
    assert r.values.shape == (audio.frames, NUM_BLENDSHAPES)
    whole = n * 30 // 16000  # whole frames; a partial last one is padded with silence
    if whole:
        np.testing.assert_allclose(r.values[:whole], expected(whole), atol=1e-5)


def test_cli_csv_is_one_row_per_frame_and_readable_back(tmp_path: Path) -> None:
    wav = stair_file(tmp_path / "stair.wav", frames=45)
    out = tmp_path / "out.csv"
    res = CliRunner().invoke(main, ["offline", str(wav), "--model", "oracle", "--raw", "-o", str(out)])
    assert res.exit_code == 0, res.output
    with out.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:2] == ["Timecode", "BlendShapeCount"] and len(rows[0]) == 63
    assert len(rows) == 1 + 45
    assert [r[0] for r in rows[1:]] == [format_timecode(k) for k in range(45)]
    assert rows[1][0] == "00:00:00:00.000" and rows[2][0] == "00:00:00:02.000"  # the app's 60 fps timecode
    rec = read_livelink_csv(out)
    np.testing.assert_allclose(rec.values, expected(45), atol=2e-6)
    assert (rec.head == 0).all() and rec.timecode_fps == 60
    np.testing.assert_allclose(np.diff(rec.times()), 1 / 30, atol=1e-9)
    out30 = tmp_path / "out30.csv"
    args = ["offline", str(wav), "--model", "oracle", "--raw", "--timecode-fps", "30", "-o", str(out30)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    with out30.open(newline="") as f:
        assert [r[0] for r in csv.reader(f)][1:4] == [format_timecode(k, 30) for k in range(3)]
    assert read_livelink_csv(out30).timecode_fps == 30
    bad = CliRunner().invoke(
        main, ["offline", str(wav), "--timecode-fps", "30", "-o", str(tmp_path / "o.json")]
    )
    assert bad.exit_code == 2 and "--timecode-fps is for a Live Link Face CSV" in bad.output
    assert "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1


def test_cli_json_npy_and_plot(tmp_path: Path) -> None:
    wav = stair_file(tmp_path / "stair.wav", frames=30, channels=2)
    runner = CliRunner()
    for name in ("out.json", "out.npy"):
        res = runner.invoke(
            main, ["offline", str(wav), "--model", "oracle", "--raw", "-o", str(tmp_path / name)]
        )
        assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["metadata"]["fps"] == 30 and data["metadata"]["frame_count"] == 30
    assert data["names"][17] == "jawOpen" and len(data["frames"]) == 30
    assert data["frames"][7]["weights"][17] == pytest.approx(expected(30)[7, 17], abs=1e-5)
    arr = np.load(tmp_path / "out.npy")
    assert arr.shape == (30, 61) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[:, :52], expected(30), atol=1e-5)
    pytest.importorskip("matplotlib")
    png = tmp_path / "plot.png"
    res = runner.invoke(main, ["offline", str(wav), "--model", "synthetic", "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_and_silent_files(tmp_path: Path) -> None:
    runner = CliRunner()
    empty = tmp_path / "empty.wav"
    soundfile.write(str(empty), np.zeros(0, np.float32), 16000)
    res = runner.invoke(main, ["offline", str(empty), "--model", "synthetic-tiny", "-o",
                               str(tmp_path / "e.csv")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (tmp_path / "e.csv").read_text().count("\n") == 1  # the header only
    res = runner.invoke(main, ["offline", str(empty), "--model", "synthetic-tiny", "-o",
                               str(tmp_path / "e.npy")])  # fmt: skip
    assert res.exit_code == 0 and np.load(tmp_path / "e.npy").shape == (0, 61)

    silent = tmp_path / "silent.wav"
    soundfile.write(str(silent), np.zeros((48000 * 2, 2), np.float32), 48000)
    r = render(config("synthetic-tiny"), silent)
    assert r.frames == 60 and np.isfinite(r.values).all()
    assert (r.values[:, GATED] == 0).all()  # the gate keeps the mouth at rest in silence
    assert (r.raw[:, GATED] > 0.05).any()  # ... where the model itself does not


def test_unreadable_files_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....not really a wav")
    for path, match in ((bad, "cannot read audio file"), (tmp_path / "none.wav", "audio file not found")):
        res = CliRunner().invoke(
            main, ["offline", str(path), "--model", "oracle", "-o", str(tmp_path / "o.csv")]
        )
        assert res.exit_code == 2
        assert match in res.stderr and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    wav = stair_file(tmp_path / "s.wav", frames=10)
    res = CliRunner().invoke(main, ["offline", str(wav), "--model", "oracle", "-o", str(tmp_path / "o.txt")])
    assert res.exit_code == 2 and "use a .csv, .json or .npy" in res.stderr
    res = CliRunner().invoke(main, ["offline", str(wav), "--model", "oracle"])
    assert res.exit_code == 2 and "nothing to do" in res.stderr


def test_gate_targets_end_to_end_on_the_tiny_synthetic_model() -> None:
    """After speech stops the mouth is below 0.05 within 200 ms; it is back within 2 frames."""
    x = np.concatenate([speech_like(3.0, seed=1), np.zeros(16000, np.float32), speech_like(2.0, seed=2)])
    audio = Audio(x, 180, 16000, 1, 6.0, "speech_pause_speech")
    gated = render(config("synthetic-tiny", {"blink": {"enabled": False}}), audio)
    quiet = {"blink": {"enabled": False}, "gate": {"enabled": False}}
    ungated = render(config("synthetic-tiny", quiet), audio)
    stop, onset_audio = 90, 120  # frame 90 is the first silent one; speech resumes at frame 120
    assert (ungated.values[stop + 6 : onset_audio, GATED] > 0.05).any()  # the model's floor
    assert (gated.values[stop + 6 : onset_audio, GATED] < 0.05).all()  # 6 frames = 200 ms
    onset = next(k for k in range(onset_audio, 180) if gated.rms[k] >= 10 ** (-40 / 20))
    assert onset - onset_audio <= 3  # the synthetic speech starts from a zero of its envelope
    assert (gated.values[onset, GATED] >= 0.5 * ungated.values[onset, GATED] - 1e-6).all()
    np.testing.assert_allclose(gated.values[onset + 1 :, GATED], ungated.values[onset + 1 :, GATED])


def test_compare_streaming_oracle_matches_and_cli_reports(tmp_path: Path) -> None:
    wav = stair_file(tmp_path / "stair.wav", frames=60, rate=48000)
    cfg = config(post={"blink": {"seed": 1}})  # the whole default chain, repeatable blinks
    offline = render(cfg, wav)
    for lookahead in (0, 2):
        streamed = render_streaming(cfg, wav, lookahead=lookahead, frames=offline.frames)
        result = compare(offline.values, streamed, lookahead)
        # The oracle has no context, so both paths must agree frame for frame, post chain included.
        assert result.frames == 60 and float(result.mae.max()) < 1e-4
    out = tmp_path / "report.json"
    cfg_path = write_toml(tmp_path / "c.toml", "synthetic-tiny")
    res = CliRunner().invoke(main, ["offline", str(wav), "-c", str(cfg_path), "--compare-streaming",
                                    "--lookahead", "0,3", "--report", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "lookahead" in res.stdout and "jawOpen" in res.stdout
    report = json.loads(out.read_text())
    assert [r["lookahead_frames"] for r in report["lookaheads"]] == [0, 3]
    assert report["lookaheads"][0]["mean_abs_diff"] > 0  # a real model differs without context
    assert set(report["lookaheads"][1]["per_channel"]) >= {"jawOpen", "eyeBlinkLeft"}


def test_calibrate_from_a_silent_file_and_use_it(tmp_path: Path) -> None:
    from bridge.engine import load_model

    silent = tmp_path / "silent.wav"
    soundfile.write(str(silent), np.zeros(16000 * 2, np.float32), 16000)
    cal = tmp_path / "calibration.toml"
    res = CliRunner().invoke(main, ["calibrate", "--input", str(silent), "--model", "synthetic-tiny",
                                    "--seconds", "1.5", "-o", str(cal)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert 'calibration = "' in res.stdout
    from bridge.post.calibration import load_calibration

    data = load_calibration(cal)
    assert data.frames == 45 and data.model == "synthetic-tiny"
    floor = load_model(config("synthetic-tiny").model).runner.infer(np.zeros(16000, np.float32))[-1]
    np.testing.assert_allclose(data.offsets, floor, atol=1e-5)  # what the model says in silence
    # With the calibration alone, silence maps to 0 on every channel in the realtime path it
    # was recorded through (offline frames come from mid-window rows, whose floor may differ).
    post = {"calibration": str(cal), "gate": {"enabled": False}, "smoothing": {"kind": "off"},
            "blink": {"enabled": False}}  # fmt: skip
    streamed = render_streaming(config("synthetic-tiny", post), silent, lookahead=0, frames=60)
    assert np.abs(streamed).max() < 1e-4


def test_calibrate_noise_json_and_loud_warning(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for level, loud in ((-60.0, False), (-20.0, True)):
        noise = tmp_path / f"noise{level}.wav"
        soundfile.write(str(noise), rng.normal(0, 10 ** (level / 20), 16000 * 2).astype(np.float32), 16000)
        out = tmp_path / f"cal{level}.json"
        res = CliRunner().invoke(main, ["calibrate", "--input", str(noise), "--model", "synthetic-tiny",
                                        "-o", str(out)])  # fmt: skip
        assert res.exit_code == 0, res.output
        data = json.loads(out.read_text())
        assert data["format"] == "a2e-bridge-calibration" and len(data["offsets"]) == 52
        assert data["noise_db"] == pytest.approx(level, abs=1.0)
        assert ("warning" in res.stderr) == loud
    res = CliRunner().invoke(
        main, ["calibrate", "--input", str(noise), "--model", "synthetic-tiny", "-o", "c.txt"]
    )
    assert res.exit_code == 2 and ".toml or .json" in res.stderr
    bad = write_toml(tmp_path / "bad.toml", "synthetic-tiny", '[post]\ncalibration = "nope.toml"\n')
    res = CliRunner().invoke(main, ["offline", str(noise), "-c", str(bad), "-o", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "cannot read calibration file" in res.stderr


def test_offline_feeds_the_vad_gates(tmp_path: Path) -> None:
    """Offline, the gate gets the CTC speech probability and each frame's audio (Silero)."""
    from tests.test_post import silero_standin

    vad = silero_standin(tmp_path / "silero_vad.onnx")  # stands in for the real silero_vad.onnx
    noise = tmp_path / "fan.wav"  # loud but not speech
    soundfile.write(str(noise), np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32), 16000)
    level_only = render(config("synthetic-tiny", {"blink": {"enabled": False}}), noise)
    assert (level_only.values[5:, GATED] > 0).any()
    silero = render(config("synthetic-tiny", {"gate": {"vad": "silero", "vad_model": str(vad)}}), noise)
    assert (silero.values[:, GATED] == 0).all()
    ctc = render(config("synthetic-tiny", {"gate": {"vad": "ctc", "vad_threshold": 1.0}}), noise)
    assert ctc.speech_prob is not None and ctc.speech_prob.shape == (60,)
    assert (ctc.values[:, GATED] == 0).all()  # no frame reaches probability 1
