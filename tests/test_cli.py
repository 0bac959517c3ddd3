"""The command line as a user meets it: real subprocesses, one-line errors, exit codes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bridge.signals import speech_like


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("a2e-bridge: error:")]
    assert len(lines) == 1, proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def write_config(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text, encoding="utf-8")
    return p


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_synthetic_from_file_writes_stats(tmp_path: Path) -> None:
    wav = tmp_path / "speech.wav"
    soundfile.write(str(wav), speech_like(1.5, 48000), 48000)
    cfg = write_config(tmp_path, f'[[output]]\nkind = "livelink"\nport = {free_udp_port()}\n')
    stats_path = tmp_path / "stats.json"
    proc = cli("run", "-c", str(cfg), "--model", "synthetic", "--input", str(wav), "--fast",
               "--stats", str(stats_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(stats_path.read_text())
    for key in ("frames_published", "frames_expected", "frames_dropped", "latency_ms", "inference_ms",
                "interval_ms", "stride", "provider", "cpu_percent", "peak_rss_mb",
                "overhead_ms_per_frame"):  # fmt: skip
        assert key in stats
    assert stats["frames_published"] == stats["frames_expected"] == 45
    assert stats["provider"] == "CPUExecutionProvider"
    assert "on CPUExecutionProvider" in proc.stderr  # the provider that actually runs is reported


def test_unknown_config_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[model]\npreset = "synthetic"\nwindow = 1.0\n')
    one_line_error(cli("run", "-c", str(cfg)), str(cfg), "model.window", "window_s")


def test_missing_model_file_says_where_and_how(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[model]\npreset = "lam"\nfallback = ""\n')
    wav = tmp_path / "s.wav"
    soundfile.write(str(wav), np.zeros(16000, np.float32), 16000)
    one_line_error(cli("run", "-c", str(cfg), "--input", str(wav)), "lam", "--model synthetic")
    one_line_error(cli("run", "--input", str(wav), "--model", str(tmp_path / "nope.onnx")),
                   "model file not found")  # fmt: skip


def test_unreadable_audio_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF nonsense")
    cfg = write_config(tmp_path, '[[output]]\nkind = "livelink"\n')
    one_line_error(cli("run", "-c", str(cfg), "--model", "synthetic", "--input", str(bad)),
                   "cannot read audio file", str(bad))  # fmt: skip
    one_line_error(cli("run", "-c", str(cfg), "--model", "synthetic", "--input", str(tmp_path / "no.wav")),
                   "audio file not found")  # fmt: skip


def test_model_not_matching_its_description(tmp_path: Path) -> None:
    model = tmp_path / "w2a.onnx"
    assert cli("models", "synth", "--kind", "wav2arkit", "-o", str(model)).returncode == 0
    wav = tmp_path / "s.wav"
    soundfile.write(str(wav), np.zeros(16000, np.float32), 16000)
    proc = cli("run", "--model", str(model), "--input", str(wav))  # default preset: lam
    one_line_error(proc, "does not match the lam description", "audio_waveform", 'preset = "wav2arkit"')


def test_zmq_port_in_use(tmp_path: Path) -> None:
    import zmq

    sock = zmq.Context.instance().socket(zmq.PUB)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        cfg = write_config(tmp_path, f'[[output]]\nkind = "zmq"\nendpoint = "tcp://127.0.0.1:{port}"\n')
        wav = tmp_path / "s.wav"
        soundfile.write(str(wav), np.zeros(16000, np.float32), 16000)
        proc = cli("run", "-c", str(cfg), "--model", "synthetic", "--input", str(wav))
        one_line_error(proc, "address already in use", str(port))
    finally:
        sock.close(linger=0)


def test_bad_model_option_and_conflicting_inputs() -> None:
    one_line_error(cli("run", "--model", "lam-huge"), "neither a preset")
    one_line_error(cli("run", "--input", "a.wav", "--device", "mic"), "not both")


def test_models_synth_reports_layernorm_chains(tmp_path: Path) -> None:
    proc = cli("models", "synth", "--kind", "lam", "--size", "tiny", "-o", str(tmp_path / "t.onnx"))
    assert proc.returncode == 0 and "decomposed LayerNorm chains" in proc.stdout
    assert (tmp_path / "t.onnx.data").is_file()


# ---- bad settings and inputs: one line, exit 2, never "internal error" -----------------------


def speech_wav(tmp_path: Path, seconds: float = 1.0, name: str = "s.wav") -> Path:
    wav = tmp_path / name
    soundfile.write(str(wav), speech_like(seconds, 16000), 16000)
    return wav


def test_config_file_not_utf8(tmp_path: Path) -> None:
    cfg = tmp_path / "latin1.toml"
    cfg.write_bytes('[model]\npreset = "synthétic"\n'.encode("latin-1"))
    one_line_error(cli("run", "-c", str(cfg), "--input", str(speech_wav(tmp_path))),
                   str(cfg), "not UTF-8", "line 2")  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("[input]\nring_seconds = 1e9", "ring_seconds = 1000000000.0 is out of range; allowed: 0.1..60 s"),
        ("[input]\nring_seconds = 1e-9", "input.ring_seconds = 1e-09 is out of range; allowed: 0.1..60 s"),
        ("[model]\nthreads = 100000", "model.threads = 100000 is out of range; allowed: 0.."),  # parsed only
        ("[schedule]\nlookahead_frames = 1000", "allowed: 0..30 frames"),
    ],
)
def test_settings_out_of_range(tmp_path: Path, setting: str, fragment: str) -> None:
    cfg = write_config(tmp_path, setting + "\n")
    # An input that does not exist: were a setting ever let through, the run would stop at the
    # input check, before any ring is allocated or any ONNX Runtime thread started.
    absent = str(tmp_path / "absent.wav")
    one_line_error(cli("run", "-c", str(cfg), "--model", "synthetic", "--input", absent), str(cfg), fragment)


def shaped_model(path: Path, frames: int, channels: int) -> Path:
    """A wav2arkit-interface model whose output is [1, frames, channels] for a 1 s window.

    The slice it reshapes ends at ``samples - (16000 - frames * channels)``: computed from
    the input's length, so ONNX Runtime cannot infer the bad dimension when it loads the
    model: only running it shows it (what the run-time check is for).
    """
    from onnx import TensorProto, helper, numpy_helper, save

    consts = {"starts": [0], "axes": [1], "one": [1], "two": [2], "surplus": [16000 - frames * channels],
              "shape": [1, frames, -1] if channels != 52 else [1, -1, 52]}  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("Shape", ["audio_waveform"], ["in_shape"]),
         helper.make_node("Slice", ["in_shape", "one", "two"], ["samples"]),
         helper.make_node("Sub", ["samples", "surplus"], ["ends"]),
         helper.make_node("Slice", ["audio_waveform", "starts", "ends", "axes"], ["flat"]),
         helper.make_node("Reshape", ["flat", "shape"], ["blendshapes"])],
        "shaped",
        [helper.make_tensor_value_info("audio_waveform", TensorProto.FLOAT, [1, "samples"])],
        [helper.make_tensor_value_info("blendshapes", TensorProto.FLOAT, [1, "frames", "channels"])],
        [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items()],
    )  # fmt: skip
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


@pytest.mark.parametrize(("frames", "channels"), [(30, 51), (29, 52), (30, 52)])
def test_model_output_shape_is_checked_at_load(tmp_path: Path, frames: int, channels: int) -> None:
    model = shaped_model(tmp_path / "shaped.onnx", frames, channels)
    cfg = write_config(tmp_path, '[model]\npreset = "wav2arkit"\nfallback = ""\nproviders = ["cpu"]\n'
                       f'threads = 1\n[[output]]\nkind = "livelink"\nport = {free_udp_port()}\n')
    proc = cli("run", "-c", str(cfg), "--model", str(model), "--input", str(speech_wav(tmp_path)), "--fast")
    if (frames, channels) == (30, 52):  # the same model with the right shape runs
        assert proc.returncode == 0 and "published 30 of 30 frames" in proc.stderr, proc.stderr
        return
    one_line_error(proc, str(model), f"output 'blendshapes' has shape [1, {frames}, {channels}] for a "
                   "16000-sample window; expected [1, 30, 52]")  # fmt: skip


def test_empty_wav_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.wav"
    soundfile.write(str(empty), np.zeros(0, np.float32), 16000)
    one_line_error(cli("run", "--model", "synthetic", "--input", str(empty)),
                   f"audio file {empty} holds no audio")  # fmt: skip
    header_only = tmp_path / "header-only.wav"  # the header promises 1 s, no data follows
    header_only.write_bytes(speech_wav(tmp_path).read_bytes()[:44])
    proc = cli("run", "--model", "synthetic", "--input", str(header_only))
    one_line_error(proc, f"audio file {header_only} holds no audio (0 frames)")
    assert "its header promises 1.00 s, the file holds 0.00 s" in proc.stderr  # and why


def test_truncated_wav_warns_and_plays_what_is_there(tmp_path: Path) -> None:
    whole = speech_wav(tmp_path, 2.0).read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[: 44 + 16000 * 2])  # 16-bit mono: the first second of two
    cfg = write_config(tmp_path, f'[[output]]\nkind = "livelink"\nport = {free_udp_port()}\n')
    proc = cli("run", "-c", str(cfg), "--model", "synthetic", "--input", str(cut), "--fast")
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "cut short" in ln]
    assert warnings == [f"a2e-bridge: audio file {cut} is cut short: its header promises 2.00 s, "
                        "the file holds 1.00 s; playing what is there"]  # fmt: skip
    assert "published 30 of 30 frames" in proc.stderr


def test_unwritable_stats_path_is_refused_before_the_run(tmp_path: Path) -> None:
    wav = speech_wav(tmp_path)
    for bad, why in [(tmp_path / "no-such-dir" / "s.json", "No such file or directory"),
                     (tmp_path, "is a folder")]:  # fmt: skip
        proc = cli("run", "--model", "synthetic", "--input", str(wav), "--fast", "--stats", str(bad))
        one_line_error(proc, "--stats", str(bad), why)
        assert "model synthetic" not in proc.stderr  # refused before the model loaded, not after the run


def test_smallest_ring_with_a_lookahead_plays_a_fast_file_whole(tmp_path: Path) -> None:
    """A ring smaller than the next frame and its lookahead once stalled a fast file (then
    "delivered no audio ... unplugged"): the hop loop now drains a half-full ring whatever the
    next frame needs, so the smallest ring allowed plays every frame."""
    wav = tmp_path / "s48.wav"
    soundfile.write(str(wav), speech_like(1.0, 48000), 48000)
    port = free_udp_port()
    cfg = write_config(tmp_path, "[input]\nring_seconds = 0.1\n[schedule]\nlookahead_frames = 6\n"
                                 f'[[output]]\nkind = "livelink"\nport = {port}\n')  # fmt: skip
    ok = cli("run", "-c", str(cfg), "--model", "synthetic", "--input", str(wav), "--fast")
    assert ok.returncode == 0 and "published 30 of 30 frames" in ok.stderr, ok.stderr
    assert "unplugged" not in ok.stderr and "no audio" not in ok.stderr


def test_offline_output_paths_are_checked_before_the_render(tmp_path: Path) -> None:
    wav = speech_wav(tmp_path)
    missing = tmp_path / "no-such-dir"
    good = str(tmp_path / "o.csv")
    for args in (["-o", str(missing / "o.csv")], ["-o", good, "--plot", str(missing / "p.png")]):
        proc = cli("offline", str(wav), "--model", "synthetic", *args)
        one_line_error(proc, str(missing), "cannot write there")
        assert "frames; model" not in proc.stderr  # nothing was rendered first
    proc = cli("calibrate", "--input", str(wav), "--model", "synthetic", "-o", str(missing / "c.toml"))
    one_line_error(proc, "-o", "cannot write there")
