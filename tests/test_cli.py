"""The command line as a user meets it: real subprocesses, one-line errors, exit codes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
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
