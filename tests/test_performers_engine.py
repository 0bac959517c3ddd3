"""Several performers through one bridge: one model call for all, each its own face.

The oracle's output channel j of frame i is the mean of the window's audio in frame i
plus j/128 plus identity/1024.  Each channel of the test audio holds a staircase of its
own (frame k of channel c holds level ``0.01 * ((7 k + 11 c) % 41)``: at any frame the
four channels differ by at least 0.08), and each performer has its own identity.  So
every received value proves the frame number, the channel it was computed from (its
own, no other) and the identity it was computed with, under its own subject.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bridge.blendshapes import ARKIT_NAMES, EPIC_NAMES, LIVELINK_NAMES
from bridge.config import parse_config
from bridge.engine import Bridge, build_source
from bridge.errors import BridgeError
from bridge.frame import FaceFrame
from bridge.model.call_thread import ModelThread
from bridge.modeltools.synth import oracle_value
from tests.receivers import LiveLinkReceiver, OscReceiver, ZmqReceiver, wait_connected
from tests.test_stall import QuietThenBackSource
from tests.virtual_mic import virtual_mic, virtual_mic_available

FRAMES = 60  # 2 s
CHANNELS = 4
IDENTITIES = (0, 3, 5, 7)
JAW = ARKIT_NAMES.index("jawOpen")
#: A frame inside a hop of several (a loaded machine's loop fell behind) can take one sample
#: of its neighbour (the oracle's frame grid starts at the window's first sample, the
#: stream's at sample 0): at most a level step of 0.34 over 533 samples, 6.4e-4.  Still
#: far below what tells frames and channels apart (>= 0.07) and identities (>= 2/1024).
ABS = 7e-4


def level(k: int, channel: int) -> float:
    return 0.01 * ((7 * k + 11 * channel) % 41)


def channel_audio(frames: int, rate: int, channel: int) -> np.ndarray:
    """Frame k (1/30 s) of ``channel`` holds :func:`level` ``(k, channel)``."""
    n = -((-frames * rate) // 30)
    k = (np.arange(n) * 30) // rate
    return (0.01 * ((7 * k + 11 * channel) % 41)).astype(np.float32)


def write_channels(path: Path, frames: int = FRAMES, channels: int = CHANNELS, rate: int = 16000) -> Path:
    data = np.stack([channel_audio(frames, rate, c) for c in range(channels)], axis=1)
    soundfile.write(str(path), data, rate, subtype="FLOAT")
    return path


def performers(wav: Path, n: int = CHANNELS) -> list[dict]:
    return [{"name": f"p{c}", "subject": f"S{c}", "identity": IDENTITIES[c],
             "input": {"kind": "file", "file": str(wav), "channel": c}} for c in range(n)]  # fmt: skip


def expected(k: int, channel: int, name: str) -> float:
    return oracle_value(level(k, channel), ARKIT_NAMES.index(name), IDENTITIES[channel])


@pytest.mark.parametrize("threads", ["inline", "sending-thread", "model-thread"])
def test_four_channels_to_four_subjects_on_livelink_osc_and_zmq(tmp_path: Path, threads: str) -> None:
    """Inline, and through the threads a GPU model gets (forced here on the CPU): the sending
    thread's queue keeps every performer's frames complete and in order; with the model's
    calls on a thread of their own too, so are they."""
    wav = write_channels(tmp_path / "four.wav")
    ll, osc = LiveLinkReceiver(), OscReceiver()
    cfg = parse_config({
        "performer": performers(wav),
        "model": {"preset": "oracle", "providers": ["cpu"], "threads": 1, "fallback": ""},
        "output": [
            {"kind": "livelink", "port": ll.port},
            {"kind": "osc", "port": osc.port, "scheme": "arkit"},
            {"kind": "zmq", "endpoint": "tcp://127.0.0.1:*", "format": "json", "topic": "face"},
        ],
    }, "four.toml")  # fmt: skip
    bridge = Bridge(cfg, raw=True)  # exact oracle values
    assert len(bridge.groups) == 1 and bridge.groups[0].source.channels == CHANNELS  # one capture
    assert bridge.groups[0].capture.shared is not None  # the members' histories: rows of one array
    assert not bridge.publisher.sender.threaded  # a CPU model: sends inline unless forced
    assert bridge.model_thread is None  # and calls the model in the hop loop
    bridge.publisher.sender.threaded = threads != "inline"
    if threads == "model-thread":
        bridge.model_thread = ModelThread()
    switch = sys.getswitchinterval()
    zq = ZmqReceiver(bridge.outputs[2].transport.last_endpoint, "face")
    wait_connected()
    try:
        stats = bridge.run().as_dict()
    finally:
        bridge.close()
    assert sys.getswitchinterval() == switch
    for r in (ll, osc, zq):
        r.close()

    assert stats["frames_published"] == CHANNELS * FRAMES == stats["frames_expected"]
    assert stats["frames_dropped"] == 0
    assert stats["send_thread"] == (threads != "inline")
    assert stats["model_thread"] == (threads == "model-thread")
    assert stats["batch"]["max"] == CHANNELS and stats["batch"]["mean"] == CHANNELS  # one call per hop
    assert {p: d["frames_published"] for p, d in stats["performers"].items()} == {
        f"p{c}": FRAMES for c in range(CHANNELS)}  # fmt: skip

    # Live Link: one port, four subjects; each subject's frames complete, in order, its own channel.
    jaw, blink = LIVELINK_NAMES.index("JawOpen"), LIVELINK_NAMES.index("EyeBlinkRight")
    for c in range(CHANNELS):
        mine = [p for p in ll.packets if p["subject"] == f"S{c}"]
        assert [p["frame"] for p in mine] == list(range(FRAMES))
        for p in mine:
            assert p["values"][jaw] == pytest.approx(expected(p["frame"], c, "jawOpen"), abs=ABS)
            assert p["values"][blink] == pytest.approx(expected(p["frame"], c, "eyeBlinkRight"), abs=ABS)
    assert len(ll.packets) == CHANNELS * FRAMES

    # OSC: /arkit/<subject>/<Name>, then /arkit/<subject>/frame closes each bundle.
    frames: dict[str, dict[int, dict[str, float]]] = {f"S{c}": {} for c in range(CHANNELS)}
    current: dict[str, float] = {}
    order: dict[str, list[int]] = {s: [] for s in frames}
    for addr, args in osc.messages:
        _, _, subject, name = addr.split("/", 3)
        if name == "frame":
            frames[subject][args[0]] = current
            order[subject].append(args[0])
            current = {}
        else:
            current[name] = args[0]
    for c in range(CHANNELS):
        assert order[f"S{c}"] == list(range(FRAMES))
        for k, values in frames[f"S{c}"].items():
            for lower, epic in ((ARKIT_NAMES[JAW], EPIC_NAMES[JAW]), ("mouthSmileLeft", "MouthSmileLeft")):
                assert values[epic] == pytest.approx(expected(k, c, lower), abs=ABS)

    # ZeroMQ: the subject in every message; each subject's frames complete and its own.
    docs = zq.json()
    assert len(docs) == CHANNELS * FRAMES
    for c in range(CHANNELS):
        mine = [d for d in docs if d["subject"] == f"S{c}"]
        assert [d["frame"] for d in mine] == list(range(FRAMES))
        for d in mine:
            assert d["values"][JAW] == pytest.approx(expected(d["frame"], c, "jawOpen"), abs=ABS)


def run_frames(cfg_dict: dict, batched: bool) -> dict[tuple[int, int], np.ndarray]:
    got: dict[tuple[int, int], np.ndarray] = {}

    def on_frame(f: FaceFrame) -> None:
        assert (f.performer, f.number) not in got
        got[(f.performer, f.number)] = np.concatenate([f.values, f.head]).copy()

    bridge = Bridge(parse_config(json.loads(json.dumps(cfg_dict)), "t.toml"), on_frame=on_frame,
                    batched=batched)  # fmt: skip
    try:
        bridge.run()
    finally:
        bridge.close()
    assert bridge.batch_max == (CHANNELS if batched else 1)
    return got


def test_batched_and_unbatched_give_the_same_frames(tmp_path: Path) -> None:
    """A real batched model (the synthetic LAM takes [B, samples]) and the full post chain
    (smoothing, blinks, head motion, per-performer seeds) give each performer the frames it
    gets with a model call of its own."""
    wav = tmp_path / "speechy.wav"
    rng = np.random.default_rng(3)
    soundfile.write(str(wav), rng.uniform(-0.3, 0.3, (16000 * 2, CHANNELS)).astype(np.float32), 16000)
    cfg = {
        "performer": performers(wav),
        "model": {"preset": "synthetic", "providers": ["cpu"], "threads": 1, "fallback": "",
                  "window_s": 0.5},
        "post": {"blink": {"seed": 1}, "head": {"enabled": True, "seed": 2}},
        "output": [],
    }  # fmt: skip
    batched, alone = run_frames(cfg, True), run_frames(cfg, False)
    assert batched.keys() == alone.keys() and len(batched) == CHANNELS * 60
    for key, values in batched.items():
        np.testing.assert_allclose(values, alone[key], atol=1e-5, err_msg=str(key))
    # and the performers really differ (their audio, identities and seeds do)
    assert not np.allclose(batched[(0, 40)], batched[(1, 40)])


def test_a_channel_the_file_lacks_is_one_line_naming_the_performer(tmp_path: Path) -> None:
    wav = write_channels(tmp_path / "two.wav", channels=2)
    perf = performers(wav, 2) + [{"name": "late", "subject": "L", "input": {"kind": "file", "file": str(wav),
                                                                           "channel": 5}}]  # fmt: skip
    cfg = parse_config({"performer": perf, "model": {"preset": "oracle", "providers": ["cpu"]},
                        "output": []}, "t.toml")  # fmt: skip
    with pytest.raises(BridgeError) as e:
        Bridge(cfg, raw=True)
    msg = str(e.value)
    assert "\n" not in msg and "performer 'late'" in msg and "channel = 5" in msg and "2 channel" in msg


def test_one_performer_losing_its_input_does_not_disturb_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Performer a's device goes quiet (lost), is kept at rest and comes back; performer b,
    on a file paced at real time, gets every frame, in time, from its own audio."""
    stand_in = QuietThenBackSource(talk_s=0.5, quiet_s=1.0)
    monkeypatch.setattr(
        "bridge.engine.build_source",
        lambda cfg, duration=None: stand_in if cfg.kind == "device" else build_source(cfg, duration),
    )
    seconds = 3.0
    wav = tmp_path / "b.wav"
    soundfile.write(str(wav), channel_audio(round(seconds * 30) + 30, 16000, 1), 16000, subtype="FLOAT")
    cfg = parse_config({
        "performer": [
            {"name": "a", "subject": "A", "input": {"kind": "device", "device": "mic-a", "reconnect": True}},
            {"name": "b", "subject": "B", "identity": 3, "input": {"kind": "file", "file": str(wav),
                                                                   "realtime": True}},
        ],
        "model": {"preset": "oracle", "providers": ["cpu"], "threads": 1, "fallback": ""},
        "output": [],
    }, "t.toml")  # fmt: skip
    frames: dict[int, list[tuple[int, float, float]]] = {0: [], 1: []}  # (number, latency s, jawOpen)
    bridge = Bridge(
        cfg,
        raw=True,
        on_frame=lambda f: frames[f.performer].append(
            (f.number, time.monotonic() - f.capture_time, float(f.values[JAW]))
        ),
    )
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        stats = bridge.run(stop).as_dict()
    finally:
        timer.cancel()
        bridge.close()
    a, b = frames[0], frames[1]
    # a: lost once, sent frames at rest, came back; its numbers never went back or repeated
    assert stats["input_losses"] == 1 and stats["input_reconnects"] == 1
    assert stats["frames_at_rest"] > 10
    numbers_a = [n for n, _, _ in a]
    assert numbers_a == sorted(set(numbers_a))
    assert any(jaw == pytest.approx(oracle_value(0.3, JAW)) for n, _, jaw in a if n > numbers_a[-1] - 10)
    # b: every frame from 0, in order, its own level and identity, never at rest, in time
    assert [n for n, _, _ in b] == list(range(len(b))) and len(b) >= seconds * 30 - 10
    for n, latency, jaw in b:
        assert jaw == pytest.approx(oracle_value(level(n, 1), JAW, 3), abs=ABS)
        assert latency < 0.25
    assert stats["performers"]["b"]["frames_dropped"] == 0


@pytest.mark.skipif(virtual_mic_available() is not None, reason=f"virtual mic: {virtual_mic_available()}")
def test_two_channels_of_one_live_device_to_two_subjects() -> None:
    """A real PortAudio stream (the 2-channel virtual microphone): one capture stream, each
    performer its channel; each subject's frames complete, in order, from its own channel."""
    frames = 45
    audio = np.stack([channel_audio(frames + 120, 16000, c) for c in (0, 1)], axis=1)
    ll = LiveLinkReceiver()
    with virtual_mic(np.round(audio * 32767).astype(np.int16)) as device:
        perf = [{"name": f"p{c}", "subject": f"S{c}", "identity": IDENTITIES[c],
                 "input": {"kind": "device", "device": device, "channel": c, "blocksize": 256}}
                for c in (0, 1)]  # fmt: skip
        cfg = parse_config({"performer": perf,
                            "model": {"preset": "oracle", "providers": ["cpu"], "threads": 1, "fallback": ""},
                            "output": [{"kind": "livelink", "port": ll.port}]}, "mic.toml")  # fmt: skip
        bridge = Bridge(cfg, raw=True, duration=frames / 30)
        assert len(bridge.groups) == 1 and bridge.groups[0].source.channels == 2
        try:
            stats = bridge.run().as_dict()
        finally:
            bridge.close()
    ll.close()
    assert stats["frames_dropped"] == 0 and stats["input_overflows"] == 0
    assert stats["batch"]["max"] == 2  # shared sample clock: the two hops coincide
    jaw = LIVELINK_NAMES.index("JawOpen")
    for c in (0, 1):
        mine = [p for p in ll.packets if p["subject"] == f"S{c}"]
        assert [p["frame"] for p in mine] == list(range(frames))
        for p in mine:
            assert p["values"][jaw] == pytest.approx(expected(p["frame"], c, "jawOpen"), abs=2e-3)


def test_bench_streams_reports_every_stream(tmp_path: Path) -> None:
    """``bench --streams N``: N performers from one N-channel file into all three outputs with
    real receivers; batch and per-stream figures in the document."""
    from bridge.bench import run_bench

    doc = run_bench(model="oracle", seconds=1.5, streams=3)
    assert doc["streams"] == 3 and doc["batch"]["max"] == 3
    assert doc["frames_published_per_stream"] == {"min": 45, "max": 45}
    assert doc["frames_dropped_per_stream"] == {"min": 0, "max": 0}
    assert doc["frames_published"] == 135 == doc["osc_bundles_received"] == doc["zmq_messages_received"]
    ll = doc["livelink_receiver"]
    assert ll == {"received": 135, "duplicates": 0, "out_of_order": 0, "not_received": 0}
    assert doc["stride"] == 1.0 and doc["overhead_ms_per_frame"] > 0


def test_an_error_on_the_sending_thread_ends_the_run_in_the_hop_loop(tmp_path: Path) -> None:
    """A fault in an output (here a stand-in output method that raises, as a bug would) on the
    sending thread is raised by ``run`` in the hop loop's thread, not lost with the thread."""
    wav = write_channels(tmp_path / "four.wav")
    ll = LiveLinkReceiver()
    cfg = parse_config({
        "performer": performers(wav),
        "model": {"preset": "oracle", "providers": ["cpu"], "threads": 1, "fallback": ""},
        "output": [{"kind": "livelink", "port": ll.port}],
    }, "four.toml")  # fmt: skip
    bridge = Bridge(cfg, raw=True)
    bridge.publisher.sender.threaded = True
    sent = []

    def broken(batch: object) -> None:
        sent.append(threading.current_thread().name)
        raise RuntimeError("encoder bug")

    bridge.outputs[0].publish_batch = broken  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="encoder bug"):
            bridge.run()
    finally:
        bridge.close()
        ll.close()
    assert sent and set(sent) == {"a2e-send"}


def test_an_error_in_a_model_call_on_the_model_thread_ends_the_run_in_the_hop_loop(tmp_path: Path) -> None:
    """A model call that fails on the model thread (a stand-in runner method that raises, as a
    device error would) is raised by ``run`` in the hop loop's thread."""
    wav = write_channels(tmp_path / "four.wav")
    cfg = parse_config({
        "performer": performers(wav),
        "model": {"preset": "oracle", "providers": ["cpu"], "threads": 1, "fallback": ""},
        "output": [],
    }, "four.toml")  # fmt: skip
    bridge = Bridge(cfg, raw=True)
    bridge.model_thread = ModelThread()
    called = []
    infer = bridge.runner.infer_batch

    def failing(windows: np.ndarray, identities: np.ndarray | None = None) -> np.ndarray:
        called.append(threading.current_thread().name)
        if len(called) == 5:
            raise RuntimeError("CUDA failure 700: an illegal memory access")
        return infer(windows, identities)

    bridge.runner.infer_batch = failing  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="illegal memory access"):
            bridge.run()
    finally:
        bridge.close()
    assert len(called) == 5 and set(called) == {"a2e-model"}
    assert not any(t.name == "a2e-model" for t in threading.enumerate())  # closed with the bridge


def test_a_run_stopped_with_a_model_call_out_still_sends_that_calls_frames(tmp_path: Path) -> None:
    """``stop`` set while a call is out on the model thread (here right after the tenth call
    went out): the run collects it and sends its frames before returning; every call's frames
    reach the outputs, none is left behind."""
    wav = write_channels(tmp_path / "four.wav", frames=300)
    ll = LiveLinkReceiver()
    cfg = parse_config({
        "performer": [dict(p, input=dict(p["input"], realtime=True)) for p in performers(wav)],
        "model": {"preset": "oracle", "providers": ["cpu"], "threads": 1, "fallback": ""},
        "output": [{"kind": "livelink", "port": ll.port}],
    }, "four.toml")  # fmt: skip
    bridge = Bridge(cfg, raw=True, live_hops=True)  # one frame per call
    bridge.model_thread = ModelThread()
    calls = []
    infer = bridge.runner.infer_batch

    def slow(windows: np.ndarray, identities: np.ndarray | None = None) -> np.ndarray:
        out = infer(windows, identities)
        if windows.any():  # (the warm-up's calls are silence)
            calls.append(windows.shape[0])
        time.sleep(0.02)  # still out when the loop looks at ``stop``
        return out

    bridge.runner.infer_batch = slow  # type: ignore[method-assign]
    stop = threading.Event()
    launch = bridge._launch
    launched = []

    def launch_then_stop(due: list) -> None:
        launch(due)
        launched.append(len(due))
        if len(launched) == 10:
            stop.set()

    bridge._launch = launch_then_stop  # type: ignore[method-assign]
    try:
        stats = bridge.run(stop).as_dict()
    finally:
        bridge.close()
    ll.close()
    assert launched == [CHANNELS] * 10 and calls == [CHANNELS] * 10
    assert stats["frames_published"] == CHANNELS * 10
    for c in range(CHANNELS):
        assert [p["frame"] for p in ll.packets if p["subject"] == f"S{c}"] == list(range(10))
