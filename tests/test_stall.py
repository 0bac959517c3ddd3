"""A one-off stall of the hop loop, and a live input that goes quiet and comes back.

Issue 7 item 6: a hop loop held up once long enough for the ring to overrun used
to measure every later frame's latency against audio half a second older (the
sample clock had lost the overwritten audio, the capture clock had not), and the
deadline-miss fallback then switched models.  The stall here is real (an
``on_frame`` hook that sleeps once, on a file paced at real time).

The quiet-input tests use a stand-in source that follows the AudioSource contract
and stops writing, then writes again: deterministic, and no PortAudio needed.  A
real device that goes away and returns is in tests/test_device_loss.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bridge.audio.ring import SampleRing
from bridge.blendshapes import ARKIT_NAMES
from bridge.config import parse_config
from bridge.engine import Bridge
from bridge.errors import BridgeError
from bridge.frame import FaceFrame
from bridge.signals import staircase
from bridge.streams.keepalive import EASE_S

JAW = ARKIT_NAMES.index("jawOpen")


def test_a_one_off_stall_does_not_poison_latency_or_switch_models(tmp_path: Path) -> None:
    wav = tmp_path / "s.wav"
    soundfile.write(str(wav), staircase(105) + 0.1, 16000, subtype="FLOAT")
    cfg = parse_config({
        "input": {"kind": "file", "file": str(wav), "realtime": True, "ring_seconds": 0.5},
        # A fallback that a stall could wrongly trigger within half a second of misses.
        "model": {"preset": "oracle", "providers": ["cpu"], "threads": 1,
                  "fallback": "synthetic-wav2arkit", "fallback_after_s": 0.5},
        "output": [],
    }, "t.toml")  # fmt: skip
    after: list[tuple[int, float]] = []  # (frame, latency s) of frames sent after the stall
    numbers: list[int] = []
    stalled = threading.Event()

    def on_frame(f: FaceFrame) -> None:
        numbers.append(f.number)
        if f.number == 30 and not stalled.is_set():
            stalled.set()
            time.sleep(0.8)  # the ring holds 0.5 s: 0.3 s of audio is overwritten
        elif stalled.is_set():
            after.append((f.number, time.monotonic() - f.capture_time))

    bridge = Bridge(cfg, raw=True, on_frame=on_frame)
    try:
        stats = bridge.run().as_dict()
    finally:
        bridge.close()
    assert numbers == sorted(set(numbers)), "each frame once, in order"
    assert stats["audio_gaps"] == 1 and 0.15 < stats["audio_lost_s"] < 0.45
    assert stats["frames_published"] + stats["frames_dropped"] == stats["frames_expected"] == 105
    assert "fallback" not in stats and stats["model"] == "oracle"
    settled = [lat for k, lat in after if k >= numbers[numbers.index(30) + 1] + 15]  # 0.5 s on
    assert len(settled) > 30
    assert float(np.median(settled)) < 0.1, "latency is back to normal after the stall"


class QuietThenBackSource:
    """Delivers audio in real-time blocks, goes quiet for ``quiet_s``, then delivers again
    (a live input that stalls and recovers by itself)."""

    name = "usb-mic (stand-in)"
    samplerate = 16000
    channels = 1
    finished = False
    error = None

    def __init__(self, talk_s: float = 0.6, quiet_s: float | None = 1.2) -> None:
        self.ring = SampleRing(16000, 1)
        self.talk_s, self.quiet_s = talk_s, quiet_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.resumed_at: float | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        self._talk(self.talk_s)
        if self.quiet_s is None or self._stop.wait(self.quiet_s):
            return
        self.resumed_at = time.monotonic()
        self._talk(None)

    def _talk(self, seconds: float | None) -> None:
        """Real-time blocks of a constant level for ``seconds`` (None: until stopped)."""
        block = np.full(256, 0.3, np.float32)
        t0, sent = time.monotonic(), 0
        while seconds is None or sent < seconds * 16000:
            if self._stop.wait(max(0.0, t0 + (sent + 256) / 16000 - time.monotonic())):
                return
            self.ring.write(block, time.monotonic())
            sent += 256


def run_live(monkeypatch: pytest.MonkeyPatch, source: object, reconnect: bool, seconds: float,
             ) -> tuple[dict, list[tuple[int, float, float]], BaseException | None]:  # fmt: skip
    monkeypatch.setattr("bridge.engine.build_source", lambda cfg, duration=None: source)
    cfg = parse_config({"input": {"reconnect": reconnect},
                        "model": {"preset": "oracle", "providers": ["cpu"], "fallback": ""},
                        "output": []}, "t.toml")  # fmt: skip
    frames: list[tuple[int, float, float]] = []  # (number, sent at, jawOpen)
    bridge = Bridge(cfg, raw=True, on_frame=lambda f: frames.append((f.number, time.monotonic(),
                                                                      float(f.values[JAW]))))
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    error = None
    try:
        bridge.run(stop)
    except BridgeError as e:
        error = e
    finally:
        timer.cancel()
        bridge.close()
    return bridge.stats.as_dict(), frames, error


def test_a_quiet_input_with_reconnect_off_ends_the_run_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    source = QuietThenBackSource(talk_s=0.3, quiet_s=None)
    t0 = time.monotonic()
    stats, frames, error = run_live(monkeypatch, source, reconnect=False, seconds=5.0)
    assert error is not None and "\n" not in str(error)
    assert "usb-mic" in str(error) and "lost" in str(error) and "reconnect" in str(error)
    assert time.monotonic() - t0 < 2.0, "said within a second of the input going quiet"
    assert stats["input_losses"] == 1 and stats["input_reconnects"] == 0
    assert stats["frames_published"] == len(frames) > 0  # --stats can still say what happened


def test_a_quiet_input_keeps_the_outputs_alive_at_rest_until_it_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = QuietThenBackSource(talk_s=0.6, quiet_s=1.2)
    stats, frames, error = run_live(monkeypatch, source, reconnect=True, seconds=2.6)
    assert error is None
    numbers = [k for k, _, _ in frames]
    assert numbers == list(range(len(numbers))), "numbers go on through the loss, no gap, no repeat"
    assert stats["input_losses"] == 1 and stats["input_reconnects"] == 1
    rest = stats["frames_at_rest"]
    accounted = stats["frames_published"] + stats["frames_dropped"] + rest
    assert 0 <= stats["frames_expected"] - accounted <= 2  # the stream's timeline holds the loss
    assert rest > 10
    # The frames at rest: 30 fps, from the last pose down to 0 within EASE_S, then held.
    first_rest = next(i for i in range(1, len(frames)) if frames[i][1] - frames[i - 1][1] > 0.3)
    at_rest = frames[first_rest : first_rest + rest]
    gaps = np.diff([t for _, t, _ in at_rest])
    assert 0.02 < float(np.median(gaps)) < 0.05
    spoken = frames[first_rest - 1][2]
    assert spoken > 0.2 and at_rest[0][2] == pytest.approx(spoken, abs=0.01)
    jaw = [v for _, _, v in at_rest]
    assert all(b <= a + 1e-6 for a, b in zip(jaw, jaw[1:], strict=False)), "eases down, never up"
    eased = int(EASE_S * 30) + 1
    assert all(v == 0.0 for v in jaw[eased:])
    # Audio back: model frames again, right after the frames at rest.
    back = frames[first_rest + rest :]
    assert back and back[0][2] > 0.2
    assert source.resumed_at is not None and back[0][1] - source.resumed_at < 0.5
