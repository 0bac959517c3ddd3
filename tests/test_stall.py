"""A live input that stops delivering audio ends the run with one clear line.

A real capture device cannot be made to stall on demand here (killing the JACK
server under PortAudio crashes the process, see tests/virtual_mic.py), so this
uses a stand-in source that follows the AudioSource contract and goes quiet.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from bridge.config import parse_config
from bridge.errors import BridgeError
from bridge.pipeline import Bridge
from bridge.ring import SampleRing


class GoesQuietSource:
    """Delivers 0.3 s of audio at start, then nothing, like an unplugged microphone."""

    name = "usb-mic (stand-in)"
    samplerate = 16000
    channels = 1
    finished = False
    error = None

    def __init__(self) -> None:
        self.ring = SampleRing(16000, 1)

    def start(self) -> None:
        self.ring.write(np.zeros(4800, np.float32), time.monotonic())

    def stop(self) -> None:
        pass


def test_a_stalled_live_input_ends_the_run_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bridge.pipeline.build_source", lambda cfg, duration=None: GoesQuietSource())
    cfg = parse_config({"model": {"preset": "synthetic", "providers": ["cpu"]}, "output": []})
    bridge = Bridge(cfg)
    t0 = time.monotonic()
    try:
        with pytest.raises(BridgeError, match="delivered no audio for 2") as e:
            bridge.run()
    finally:
        bridge.close()
    assert "\n" not in str(e.value) and "usb-mic" in str(e.value)
    assert time.monotonic() - t0 < 5
