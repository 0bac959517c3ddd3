"""The terminal status lines: drawn only when stdout is a terminal (a real pseudo-terminal
here), about four times a second, one line per performer, redrawn in place; a pipe gets the
plain log lines and no ANSI."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from bridge.control.terminal import meter, status_lines
from tests.console_bridge import write_levels

ROOT = Path(__file__).resolve().parent.parent


def run_cli(args: list[str], tty: bool, seconds: float = 20.0) -> str:
    """``python3 -m bridge run ...`` with stdout on a pseudo-terminal (or a pipe); all it wrote."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if tty:
        master, slave = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "bridge", "run", *args], stdout=slave,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)  # fmt: skip
        os.close(slave)
        out = b""
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:  # the child closed the terminal
                        break
                    if not chunk:
                        break
                    out += chunk
                elif proc.poll() is not None:
                    break
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            os.close(master)
        return out.decode(errors="replace")
    done = subprocess.run([sys.executable, "-m", "bridge", "run", *args], capture_output=True, text=True,
                          env=env, timeout=seconds)  # fmt: skip
    return done.stdout + done.stderr


def test_status_lines_in_a_terminal_and_none_in_a_pipe(tmp_path: Path) -> None:
    wav = write_levels(tmp_path / "x.wav", [(2.0, 0.2)])
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\nproviders = ["cpu"]\nthreads = 1\nfallback = ""\n[[output]]\nkind = "zmq"\n'
                   'endpoint = "tcp://127.0.0.1:*"\n')  # fmt: skip
    args = ["-c", str(cfg), "--model", "oracle", "--input", str(wav), "--raw"]
    shown = run_cli(args, tty=True)
    assert "published 60 of 60 frames" in shown, shown
    lines = [x for x in shown.replace("\r", "").split("\n") if " fps " in x]
    assert len(lines) >= 4, shown  # ~4 Hz over 2 s
    assert "\x1b[2K" in shown and "\x1b[1F" in shown  # cleared and redrawn in place
    assert "-14.0 dBFS" in shown and "outputs 1/1 ok" in shown
    piped = run_cli(args, tty=False)
    assert "published 60 of 60 frames" in piped and "\x1b[" not in piped and " fps " not in piped


def test_status_line_contents() -> None:
    assert meter(-30.0, -6.0, 10) == "[#####---|-]"
    assert meter(-120.0, -120.0, 4) == "[----]"
    doc = {
        "frames": {"fps": 30.0},
        "latency_ms": {"p95": 12.5},
        "outputs": [{"state": "ok", "enabled": True}, {"state": "unreachable", "enabled": True}],
        "performers": [
            {"name": "alice", "gate_open": True, "speech": None, "clip": False, "input": "ok",
             "level_dbfs": -20.0, "peak_dbfs": -10.0, "settings": {"mute": False}},
            {"name": "bob", "gate_open": False, "speech": 0.1, "clip": True, "input": "lost",
             "level_dbfs": -120.0, "peak_dbfs": -120.0, "settings": {"mute": True}},
        ],
    }  # fmt: skip
    a, b = status_lines(doc)
    assert a.startswith("alice ") and "speech" in a and "30.0 fps" in a and "p95   12.5 ms" in a
    assert "outputs 1/2 ok" in a
    assert b.startswith("bob   ") and b.endswith("CLIP INPUT LOST MUTED")


def test_console_option_with_a_bad_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    wav = write_levels(tmp_path / "x.wav", [(1.0, 0.2)])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["run", "--model", "oracle", "--input", str(wav), "--console", "70000"]
    done = subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True, text=True, env=env,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "a2e-bridge: error: --console 70000: a port is 1..65535 (0: any free port)"
