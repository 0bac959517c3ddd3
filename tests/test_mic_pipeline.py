"""The whole bridge on a real PortAudio capture stream (the virtual microphone).

JACK's dummy driver paces real callbacks; ALSA's file plugin makes the device
"hear" a known staircase, so the oracle's frames prove that frame k published
from live capture carries the audio of [k/30, (k+1)/30).
"""

from __future__ import annotations

import numpy as np
import pytest
from virtual_mic import virtual_mic, virtual_mic_available

from bridge.blendshapes import ARKIT_NAMES, LIVELINK_NAMES
from bridge.config import parse_config
from bridge.engine import Bridge
from bridge.modeltools.synth import oracle_value
from bridge.signals import staircase, staircase_level
from tests.receivers import LiveLinkReceiver

UNAVAILABLE = virtual_mic_available()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"virtual mic: {UNAVAILABLE}")


@pytest.mark.parametrize("rate", [16000, 48000])
def test_live_capture_frames_match_the_known_audio(rate: int) -> None:
    frames = 60
    audio = staircase(frames + 120, rate)  # longer than the capture: the file does not loop
    samples = np.round(audio * 32767).astype(np.int16)
    receiver = LiveLinkReceiver()
    with virtual_mic(samples, rate=rate) as device:
        cfg = parse_config(
            {
                "input": {"kind": "device", "device": device, "channel": 0, "blocksize": 256},
                "model": {"preset": "oracle", "providers": ["cpu"], "fallback": ""},
                "output": [{"kind": "livelink", "port": receiver.port}],
            },
            "mic.toml",
        )
        bridge = Bridge(cfg, raw=True, duration=frames / 30)  # exact oracle values: no post chain
        try:
            stats = bridge.run().as_dict()
        finally:
            bridge.close()
    receiver.close()
    assert [p["frame"] for p in receiver.packets] == list(range(frames))
    assert stats["frames_dropped"] == 0 and stats["input_overflows"] == 0
    jaw = LIVELINK_NAMES.index("JawOpen")
    blink = LIVELINK_NAMES.index("EyeBlinkRight")
    for p in receiver.packets:
        level = staircase_level(p["frame"])
        tol = 2e-3 if rate == 16000 else 1e-2  # 48 kHz goes through the resampler
        assert p["values"][jaw] == pytest.approx(oracle_value(level, ARKIT_NAMES.index("jawOpen")), abs=tol)
        assert p["values"][blink] == pytest.approx(
            oracle_value(level, ARKIT_NAMES.index("eyeBlinkRight")), abs=tol
        )
    # Live capture: latency is measured from each block's arrival, so it is small but not zero.
    assert 0 < stats["latency_ms"]["p50"] < 1000
