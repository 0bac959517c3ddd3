"""A real capture device that goes away mid-run and comes back (issue 7 item 2).

The virtual microphone's JACK server is killed under a real ``a2e-bridge run``
process and started again under the same name.  The bridge runs in its own
process because that is where the faults were (PortAudio's JACK host API aborts
the process when it is terminated after its server died), and so that Ctrl-C is a
real SIGINT.  A real Live Link receiver on loopback stamps each packet's arrival.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from virtual_mic import JackServer, virtual_mic_available, virtual_mic_server, write_raw

from bridge.blendshapes import LIVELINK_NAMES
from bridge.signals import staircase
from tests.decoders import decode_livelink
from tests.receivers import LiveLinkReceiver

UNAVAILABLE = virtual_mic_available()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"virtual mic: {UNAVAILABLE}")

JAW = LIVELINK_NAMES.index("JawOpen")


class StampedLiveLink(LiveLinkReceiver):
    """Live Link packets with their arrival time (``t``)."""

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                packet = decode_livelink(self.sock.recv(4096))
                packet["t"] = time.monotonic()
                self.packets.append(packet)


class BridgeProcess:
    """``a2e-bridge run`` in a subprocess; its stderr lines stamped as they come."""

    def __init__(self, tmp: Path, device: str, port: int, reconnect: bool) -> None:
        self.stats_path = tmp / "stats.json"
        cfg = tmp / "bridge.toml"
        cfg.write_text(
            f'[input]\nchannel = 0\nreconnect = {str(reconnect).lower()}\n'
            '[model]\npreset = "oracle"\nproviders = ["cpu"]\nthreads = 1\nfallback = ""\n'
            f'[[output]]\nkind = "livelink"\nport = {port}\n'
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "-c", str(cfg), "--device", device, "--raw",
             "--stats", str(self.stats_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    def wait_line(self, text: str, after: float, timeout: float) -> float:
        """When a line containing ``text`` came (after ``after``); fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in list(self.lines):
                if t >= after and text in line:
                    return t
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.01)
        raise AssertionError(f"no line with {text!r}; stderr:\n{self.stderr()}")

    def wait_exit(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            log = self.stderr()
            raise AssertionError(f"the bridge did not end within {timeout} s; stderr:\n{log}") from None
        self._reader.join(5)
        return rc

    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def stats(self) -> dict:
        return json.loads(self.stats_path.read_text())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def running_bridge(tmp_path: Path, reconnect: bool = True, device: str | None = None,
                   ) -> Iterator[tuple[BridgeProcess, JackServer, StampedLiveLink]]:  # fmt: skip
    """The virtual mic playing a staircase (every frame a distinct level), the bridge on it
    (or on ``device`` of the same JACK server), frames flowing."""
    audio = staircase(30 * 60) * 0.5 + 0.2  # 60 s, so the device never runs past the file
    raw = write_raw(tmp_path / "mic.raw", np.round(audio * 32767).astype(np.int16), 16000, 60)
    receiver = StampedLiveLink()
    with virtual_mic_server(raw, portaudio=False) as (mic, jack):  # PortAudio: the bridge's only
        bridge = BridgeProcess(tmp_path, device or mic, receiver.port, reconnect)
        try:
            deadline = time.monotonic() + 30
            while len(receiver.packets) < 15 and time.monotonic() < deadline and bridge.proc.poll() is None:
                time.sleep(0.02)
            assert len(receiver.packets) >= 15, bridge.stderr()
            yield bridge, jack, receiver
        finally:
            bridge.close()
            receiver.close()


def assert_numbered_on(packets: list[dict], dropped: int) -> None:
    numbers = [p["frame"] for p in packets]
    assert all(b > a for a, b in zip(numbers, numbers[1:], strict=False)), "numbers never repeat or go back"
    skipped = sum(b - a - 1 for a, b in zip(numbers, numbers[1:], strict=False))
    assert skipped <= dropped, "no gaps other than counted drops"


def test_killed_and_restarted_jack_server_frames_go_on_at_rest_then_from_the_device(
    tmp_path: Path,
) -> None:
    with running_bridge(tmp_path) as (bridge, jack, rx):
        time.sleep(0.3)
        killed = time.monotonic()
        jack.kill(signal.SIGKILL)  # as a crash would
        left_by_the_kill = set(jack.leftovers())
        lost = bridge.wait_line("lost", killed, 5)
        assert lost - killed < 1.5, "the loss is said within a second"
        time.sleep(1.0)
        jack.start()  # the same server name: the device is back
        restarted = time.monotonic()
        back = bridge.wait_line("is back", restarted, 5)
        assert back - restarted < 2.0, "capture resumes within 2 s of the device's return"
        time.sleep(0.6)
        interrupted = time.monotonic()
        bridge.proc.send_signal(signal.SIGINT)
        rc = bridge.wait_exit(5)
        assert time.monotonic() - interrupted < 1.5, "Ctrl-C ends the run within a second"
        jack.stop(remove_leftovers=False)
        leaked = set(jack.leftovers()) - left_by_the_kill
        stats = bridge.stats()
        log = bridge.stderr()
    assert rc in (0, 130), log
    assert "Assertion" not in log and "Traceback" not in log
    assert log.count("easing the face to rest") == 1 and log.count("is back after") == 1, log
    assert not leaked, "the bridge's own JACK clients were closed (only the killed server's remain)"
    assert stats["input_losses"] == 1 and stats["input_reconnects"] == 1
    accounted = stats["frames_published"] + stats["frames_dropped"] + stats["frames_at_rest"]
    assert 0 <= stats["frames_expected"] - accounted <= 2  # at most the frames in flight at Ctrl-C
    packets = rx.packets
    assert_numbered_on(packets, stats["frames_dropped"])
    # While lost: frames keep coming at about 30 fps, easing to rest and holding there.
    during = [p for p in packets if lost + 0.1 < p["t"] < restarted]
    assert len(during) >= 0.8 * 30 * (restarted - lost - 0.1)
    assert all(p["values"][JAW] == 0.0 for p in during if p["t"] > lost + 0.6)
    assert stats["frames_at_rest"] >= len(during)
    # Back: frames from the device's audio again (the oracle reads its level: never 0).
    after = [p for p in packets if p["t"] > back + 0.05]
    assert len(after) >= 10 and all(p["values"][JAW] > 0.15 for p in after)


@pytest.mark.parametrize("reconnect", [True, False])
def test_ctrl_c_while_lost_and_reconnect_off_end_cleanly(tmp_path: Path, reconnect: bool) -> None:
    """Lost, Ctrl-C: the run ends within a second.  reconnect = false: it ends by itself,
    in one line, exit 2.  Either way --stats is written and PortAudio does not abort."""
    with running_bridge(tmp_path, reconnect=reconnect) as (bridge, jack, rx):
        killed = time.monotonic()
        jack.kill(signal.SIGTERM)  # a server that shuts down in order
        lost = bridge.wait_line("lost", killed, 5)
        assert lost - killed < 1.5
        if reconnect:
            time.sleep(0.5)
            interrupted = time.monotonic()
            bridge.proc.send_signal(signal.SIGINT)
            rc = bridge.wait_exit(5)
            assert time.monotonic() - interrupted < 1.5
        else:
            rc = bridge.wait_exit(5)
        stats = bridge.stats()
        log = bridge.stderr()
    assert "Assertion" not in log and "Traceback" not in log
    assert stats["input_losses"] == 1 and stats["input_reconnects"] == 0
    assert_numbered_on(rx.packets, stats["frames_dropped"])
    if reconnect:
        assert rc in (0, 130), log
        assert stats["frames_at_rest"] > 5
    else:
        assert rc == 2, log
        errors = [line for line in log.splitlines() if "error:" in line]
        assert len(errors) == 1 and "reconnect" in errors[0], log
        assert stats["frames_at_rest"] == 0


def test_a_jack_host_api_device_whose_server_died_is_said_stuck_and_ctrl_c_still_ends_the_run(
    tmp_path: Path,
) -> None:
    """Capture through PortAudio's own JACK host API ('system'): when the server dies, closing
    the stream never returns (PortAudio waits on a JACK thread that is gone).  The bridge says
    so in one line, keeps the outputs at rest, and still ends within a second of Ctrl-C,
    without PortAudio's assertion."""
    with running_bridge(tmp_path, device="system") as (bridge, jack, rx):
        killed = time.monotonic()
        jack.kill(signal.SIGKILL)
        bridge.wait_line("easing the face to rest", killed, 5)
        stuck = bridge.wait_line("PortAudio is stuck", killed, 5)
        assert stuck - killed < 2.0
        interrupted = time.monotonic()
        bridge.proc.send_signal(signal.SIGINT)
        rc = bridge.wait_exit(5)
        assert time.monotonic() - interrupted < 1.5
        stats = bridge.stats()
        log = bridge.stderr()
    assert rc in (0, 130), log
    assert "Assertion" not in log and "Traceback" not in log
    assert stats["input_losses"] == 1 and stats["frames_at_rest"] > 5
    assert_numbered_on(rx.packets, stats["frames_dropped"])
