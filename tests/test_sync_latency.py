"""Issue 11, part 1: each frame's capture time (time of day) and latency, and each
performer's running p50/p95, published over ZeroMQ JSON, OSC ``/arkit/time`` and
``/a2e/latency`` (once a second), received by real receivers on loopback."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from bridge.config import parse_config
from bridge.engine import Bridge
from bridge.sync.latency import LatencyTracker
from tests.receivers import OscReceiver, ZmqReceiver, wait_connected
from tests.test_performers_engine import write_channels


def test_tracker_keeps_each_performers_last_window() -> None:
    tracker = LatencyTracker(2, window=50, max_stride=8)
    rng = np.random.default_rng(1)
    history: list[list[float]] = [[], []]
    for _ in range(40):  # blocks of 1..8 frames, both performers, window wraps several times
        stride = int(rng.integers(1, 9))
        block = tracker.block(2, stride)
        block[:] = rng.uniform(5, 300, size=(2, stride))
        for p in range(2):
            history[p].extend(block[p].tolist())
        tracker.record([0, 1], block)
    later = time.monotonic() + 10  # past the cache
    for p in range(2):
        last = np.array(history[p][-50:])
        assert tracker.frames(p) == len(history[p])
        assert tracker.percentiles(p, later) == pytest.approx(
            (round(float(np.percentile(last, 50)), 2), round(float(np.percentile(last, 95)), 2)), abs=0.01)
    assert LatencyTracker(1).percentiles(0) == (None, None)


def test_tracker_rows_in_step_and_out_of_step_keep_their_own_frames() -> None:
    """Rows of performers in step are recorded with one copy; others row by row: same result."""
    tracker = LatencyTracker(3, window=20, max_stride=8)
    rng = np.random.default_rng(2)
    history: list[list[float]] = [[], [], []]
    for k in range(30):
        rows = [[0], [0, 1, 2], [1, 2], [2, 1]][k % 4]  # performer 0 runs ahead of 1 and 2
        stride = int(rng.integers(1, 9))
        block = tracker.block(len(rows), stride)
        block[:] = rng.uniform(5, 300, size=(len(rows), stride))
        for i, p in enumerate(rows):
            history[p].extend(block[i].tolist())
        tracker.record(np.array(rows), block)
    later = time.monotonic() + 10
    for p in range(3):
        last = np.array(history[p][-20:])
        assert tracker.frames(p) == len(history[p])
        assert tracker.percentiles(p, later) == pytest.approx(
            (round(float(np.percentile(last, 50)), 2), round(float(np.percentile(last, 95)), 2)), abs=0.01)


def run(cfg: dict, osc: OscReceiver, zq: ZmqReceiver) -> tuple[dict, float, float]:
    bridge = Bridge(parse_config(cfg, "sync.toml"))
    wait_connected()
    t0 = time.time()
    try:
        stats = bridge.run().as_dict()
    finally:
        bridge.close()
    t1 = time.time()
    osc.close()
    zq.close()
    return stats, t0, t1


def test_capture_time_and_latency_reach_zmq_and_osc(tmp_path: Path) -> None:
    wav = write_channels(tmp_path / "voice.wav", frames=75, channels=1)  # 2.5 s at real time
    osc, endpoint = OscReceiver(), "tcp://127.0.0.1:25791"
    zq = ZmqReceiver(endpoint, "a2e")
    cfg = {"input": {"kind": "file", "file": str(wav), "realtime": True},
           "model": {"preset": "oracle", "providers": ["cpu"], "fallback": "", "threads": 1},
           "output": [{"kind": "osc", "port": osc.port, "latency_report": True},
                      {"kind": "zmq", "endpoint": endpoint}]}  # fmt: skip
    stats, t0, t1 = run(cfg, osc, zq)
    docs = zq.json()
    assert [d["frame"] for d in docs] == list(range(75))
    for d in docs:
        # the time of day of its last sample: during the run, before it was sent
        assert t0 - 0.1 <= d["capture_time"] <= t1 and 0 <= d["latency_ms"] < 1000
    # frames' capture times advance with the audio: 33.3 ms a frame, to within a capture block
    span = docs[-1]["capture_time"] - docs[0]["capture_time"]
    assert span == pytest.approx(74 / 30, abs=0.1)
    times = [args[0] for addr, args in osc.messages if addr == "/arkit/time"]
    assert len(times) == 75 and times == sorted(times) and t0 - 0.1 <= times[0] <= times[-1] <= t1
    # /arkit/time carries the same capture time as the JSON (a double: microseconds survive)
    assert times == pytest.approx([d["capture_time"] for d in docs], abs=2e-6)
    reports = [args for addr, args in osc.messages if addr == "/a2e/latency"]
    assert 2 <= len(reports) <= 4  # once a second over ~2.5 s
    for p50, p95 in reports:
        assert 0 < p50 <= p95 < 1000
    # the last report is the last window's; --stats says the same at the end
    window = stats["latency_window_ms"]["main"]
    assert window["p50"] <= window["p95"] and stats["latency_reports_sent"] == len(reports)
    lat = sorted(d["latency_ms"] for d in docs)
    assert window["p50"] == pytest.approx(lat[len(lat) // 2], abs=25)  # the JSON's latencies, same run


def test_two_performers_report_under_their_subjects(tmp_path: Path) -> None:
    wav = write_channels(tmp_path / "two.wav", frames=45, channels=2)  # 1.5 s
    osc, endpoint = OscReceiver(), "tcp://127.0.0.1:25792"
    zq = ZmqReceiver(endpoint, "a2e")
    people = [{"name": f"p{c}", "subject": f"S{c}", "input": {"kind": "file", "file": str(wav), "channel": c}}
              for c in range(2)]  # fmt: skip
    cfg = {"performer": people,
           "model": {"preset": "oracle", "providers": ["cpu"], "fallback": "", "threads": 1},
           "output": [{"kind": "osc", "port": osc.port, "latency_report": True},
                      {"kind": "zmq", "endpoint": endpoint}]}  # fmt: skip
    stats, t0, t1 = run(cfg, osc, zq)
    for s in ("S0", "S1"):
        times = [a[0] for addr, a in osc.messages if addr == f"/arkit/{s}/time"]
        assert len(times) == 45 and t0 - 0.1 <= times[0] <= times[-1] <= t1
        reports = [a for addr, a in osc.messages if addr == f"/a2e/{s}/latency"]
        assert reports and all(0 < p50 <= p95 < 1000 for p50, p95 in reports)
    assert not [a for a, _ in osc.messages if a == "/a2e/latency"]  # several performers: by subject only
    by_subject = {d["subject"] for d in zq.json() if d["latency_ms"] is not None}
    assert by_subject == {"S0", "S1"}
    assert set(stats["latency_window_ms"]) == {"p0", "p1"}


def test_latency_report_is_off_unless_asked(tmp_path: Path) -> None:
    wav = write_channels(tmp_path / "one.wav", frames=40, channels=1)
    osc, endpoint = OscReceiver(), "tcp://127.0.0.1:25793"
    zq = ZmqReceiver(endpoint, "a2e")
    cfg = {"input": {"kind": "file", "file": str(wav), "realtime": True},
           "model": {"preset": "oracle", "providers": ["cpu"], "fallback": "", "threads": 1},
           "output": [{"kind": "osc", "port": osc.port}, {"kind": "zmq", "endpoint": endpoint}]}  # fmt: skip
    stats, _, _ = run(cfg, osc, zq)
    assert "/arkit/time" in {a for a, _ in osc.messages}
    assert not [a for a, _ in osc.messages if a.startswith("/a2e/")]
    assert "latency_reports_sent" not in stats


def test_latency_report_only_for_osc() -> None:
    from bridge.errors import BridgeError

    with pytest.raises(BridgeError, match="unknown key output\\[0\\].latency_report"):
        parse_config({"output": [{"kind": "livelink", "latency_report": True}]}, "c.toml")
