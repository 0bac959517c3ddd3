"""``/health`` through a real input loss: the virtual microphone's JACK server is killed under
``a2e-bridge run --console`` (its own process, as in test_device_loss.py) and started again.
ok -> degraded ("input lost") while frames at rest flow -> ok once capture resumes; the
console URL is the one the run printed."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from virtual_mic import virtual_mic_available, virtual_mic_server, write_raw

from bridge.signals import staircase
from tests.console_bridge import http
from tests.test_device_loss import BridgeProcess, StampedLiveLink

UNAVAILABLE = virtual_mic_available()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"virtual mic: {UNAVAILABLE}")


class ConsoleBridgeProcess(BridgeProcess):
    """``a2e-bridge run --console 0`` on a device; OSC control on a free port too."""

    def __init__(self, tmp: Path, device: str, port: int) -> None:
        self.stats_path = tmp / "stats.json"
        cfg = tmp / "bridge.toml"
        cfg.write_text(
            '[input]\nchannel = 0\n[control]\nosc_port = 0\n'
            '[model]\npreset = "oracle"\nproviders = ["cpu"]\nthreads = 1\nfallback = ""\n'
            f'[[output]]\nkind = "livelink"\nport = {port}\n'
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "-c", str(cfg), "--device", device, "--raw",
             "--console", "0", "--stats", str(self.stats_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


def wait_health(url: str, status: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        _code, body = http("GET", url + "/health", timeout=2.0)
        if body.get("status") == status:
            return body
        time.sleep(0.05)
    raise AssertionError(f"/health never said {status!r}; last: {body}")


def test_health_degraded_while_the_input_is_lost_and_ok_when_it_is_back(tmp_path: Path) -> None:
    audio = staircase(30 * 60) * 0.5 + 0.2
    raw = write_raw(tmp_path / "mic.raw", np.round(audio * 32767).astype(np.int16), 16000, 60)
    rx = StampedLiveLink()
    with virtual_mic_server(raw, portaudio=False) as (mic, jack):
        bridge = ConsoleBridgeProcess(tmp_path, mic, rx.port)
        try:
            t0 = time.monotonic()
            bridge.wait_line("live console: http://", t0 - 60, 30)
            line = next(text for _t, text in bridge.lines if "live console:" in text)
            url = re.search(r"(http://127\.0\.0\.1:\d+)/", line).group(1)
            assert wait_health(url, "ok", 10)["reasons"] == []
            killed = time.monotonic()
            jack.kill(signal.SIGKILL)
            body = wait_health(url, "degraded", 5)
            assert any(r.startswith("input lost") for r in body["reasons"]), body
            code, _ = http("GET", url + "/health")
            assert code == 200  # frames at rest still flow: degraded, not down
            state = http("GET", url + "/api/state")[1]
            assert state["performers"][0]["input"] == "lost"
            assert any("lost" in w for w in state["warnings"])
            assert time.monotonic() - killed < 5
            time.sleep(0.5)
            jack.start()
            assert wait_health(url, "ok", 8)["reasons"] == []
            bridge.proc.send_signal(signal.SIGINT)
            rc = bridge.wait_exit(5)
        finally:
            bridge.close()
            rx.close()
    assert rc in (0, 130), bridge.stderr()
    assert "Traceback" not in bridge.stderr()
