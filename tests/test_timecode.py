"""Live Link system timecode and the wall clock behind it (bridge/clock.py).

The time-of-day arithmetic is checked on given instants (midnight, a daylight-saving
change) in fixed zones; the packets through a real UDP receiver while the bridge runs;
the offline CSV's start from a Broadcast Wave ``bext`` chunk and from the file's time.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bridge.clock import (
    SECONDS_PER_DAY,
    WallClock,
    format_time_of_day,
    frames_of_day,
    measure_offset,
    seconds_since_midnight,
)
from bridge.config import parse_config
from bridge.engine import Bridge
from bridge.errors import BridgeError
from bridge.filetime import BEXT_TIME_REFERENCE_AT, bext_time_reference, parse_time_of_day
from bridge.frame import FaceFrame
from bridge.livelink_csv import read_livelink_csv
from bridge.outputs.livelink import LiveLinkEncoder
from bridge.signals import speech_like
from tests.decoders import decode_livelink
from tests.receivers import LiveLinkReceiver

PLUS2 = timezone(timedelta(hours=2))
DAY_FRAMES = SECONDS_PER_DAY * 30


def unix_at(tz: timezone, *args: int, micro: int = 0) -> float:
    return datetime(*args, microsecond=micro, tzinfo=tz).timestamp()


def test_frames_of_day_and_the_midnight_wrap() -> None:
    before = unix_at(PLUS2, 2026, 11, 29, 23, 59, 59, micro=990_000)
    after = unix_at(PLUS2, 2026, 11, 30, 0, 0, 0, micro=10_000)
    s0, s1 = seconds_since_midnight(before, PLUS2), seconds_since_midnight(after, PLUS2)
    assert s0 == pytest.approx(SECONDS_PER_DAY - 0.01, abs=1e-6) and s1 == pytest.approx(0.01, abs=1e-6)
    frame, sub = frames_of_day(s0)
    assert frame == DAY_FRAMES - 1 and sub == pytest.approx(0.7, abs=1e-4)  # the day's last frame
    frame, sub = frames_of_day(s1)
    assert frame == 0 and sub == pytest.approx(0.3, abs=1e-4)  # then 0, not 2592000
    assert frames_of_day(SECONDS_PER_DAY)[0] == 0  # a 24:00:00 is the next day's 0
    assert format_time_of_day(SECONDS_PER_DAY - 0.01) == "23:59:59:29.700"
    assert format_time_of_day(0.01, 60) == "00:00:00:00.600"
    assert frames_of_day(12 * 3600 + 1 / 30 * 7)[0] == 12 * 3600 * 30 + 7  # k/30 s lands on frame k


def test_wall_clock_maps_monotonic_times_across_midnight() -> None:
    """A clock whose offset puts monotonic 1000.0 at 23:59:59.95 (+02:00): frames step over 0."""
    offset = unix_at(PLUS2, 2026, 11, 29, 23, 59, 59, micro=950_000) - 1000.0
    clock = WallClock(offset, tz=PLUS2)
    got = [clock.time_of_day_frames(1000.0 + k / 30) for k in range(4)]
    assert [f for f, _ in got] == [DAY_FRAMES - 2, DAY_FRAMES - 1, 0, 1]
    assert all(sub == pytest.approx(0.5, abs=1e-4) for _, sub in got)
    assert clock.monotonic_to_unix(1000.0) == offset + 1000.0


def test_daylight_saving_change_follows_the_wall_clock() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone database")
    # 2026-03-29 02:00 CET -> 03:00 CEST: one second after 01:59:59.5 the clock reads 03:00:00.5.
    t = datetime(2026, 3, 29, 1, 59, 59, 500_000, tzinfo=berlin).timestamp()
    clock = WallClock(0.0, tz=berlin)
    assert clock.seconds_of_day(t) == pytest.approx(2 * 3600 - 0.5)
    assert clock.seconds_of_day(t + 1.0) == pytest.approx(3 * 3600 + 0.5)


def test_measured_offset_is_unix_minus_monotonic() -> None:
    # Generous bounds: on a busy machine a thread may be preempted between two clock reads.
    offset = measure_offset()
    assert abs((time.time() - time.monotonic()) - offset) < 0.05
    clock = WallClock()
    now = time.monotonic()
    assert abs(clock.monotonic_to_unix(now) - time.time()) < 0.05
    local = time.localtime()
    frame, _ = clock.time_of_day_frames(now)
    assert abs(frame - (local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec) * 30) <= 31


def test_encoder_stamps_the_frames_first_sample_and_stream_mode_is_unchanged() -> None:
    offset = unix_at(PLUS2, 2026, 11, 29, 12, 0, 0) - 500.0  # monotonic 500 = 12:00:00 local
    enc = LiveLinkEncoder("S", "D" * 36, timecode="system", clock=WallClock(offset, tz=PLUS2))
    frame = FaceFrame(7, np.zeros(52, np.float32), 500.0 + 0.25 + 1 / 30, np.zeros(9, np.float32))
    pkt = decode_livelink(enc.encode(frame))
    assert pkt["frame"] == 12 * 3600 * 30 + 7 and pkt["subframe"] == pytest.approx(0.5, abs=1e-3)
    assert (pkt["fps_num"], pkt["fps_den"]) == (30, 1)
    plain = decode_livelink(LiveLinkEncoder("S", "D" * 36).encode(frame))
    assert plain["frame"] == 7 and plain["subframe"] == 0.0
    with pytest.raises(ValueError, match="timecode"):
        LiveLinkEncoder("S", timecode="smpte")


def test_system_timecode_on_a_real_receiver_is_the_capture_time_of_day(tmp_path: Path) -> None:
    wav = tmp_path / "s.wav"
    soundfile.write(str(wav), speech_like(1.5, 48000), 48000)
    rx = LiveLinkReceiver()
    captured: dict[int, float] = {}
    cfg = parse_config({
        "input": {"kind": "file", "file": str(wav), "realtime": False},
        "model": {"preset": "oracle", "providers": ["cpu"], "fallback": ""},
        "output": [{"kind": "livelink", "port": rx.port, "timecode": "system"},
                   {"kind": "livelink", "port": rx.port, "subject": "Stream"}],
    }, "t.toml")  # fmt: skip
    bridge = Bridge(cfg, on_frame=lambda f: captured.__setitem__(f.number, f.capture_time))
    try:
        bridge.run()
    finally:
        bridge.close()
        rx.close()
    # An offset measured here, independently of the bridge's clock: the tightest of 20 reads.
    m0, wall, m1 = min(((time.monotonic(), time.time(), time.monotonic()) for _ in range(20)),
                       key=lambda r: r[2] - r[0])  # fmt: skip
    offset = wall - (m0 + m1) / 2
    system = [p for p in rx.packets if p["subject"] == "A2EBridge"]
    stream = sorted(p["frame"] for p in rx.packets if p["subject"] == "Stream")
    assert len(system) == len(captured) == 45 and stream == list(range(45))
    for k, pkt in enumerate(sorted(system, key=lambda p: p["frame"])):
        tod = seconds_since_midnight(captured[k] + offset)
        stamp = pkt["frame"] + pkt["subframe"]
        assert abs(stamp - tod * 30) <= 1.05  # within a frame of the capture time of day x 30 ...
        assert abs(stamp - (tod * 30 - 1)) < 0.3  # ... its first sample's: capture time - 1 frame
        assert 0.0 <= pkt["subframe"] < 1.0


def test_run_stats_record_the_system_timecode(tmp_path: Path) -> None:
    wav, stats = tmp_path / "s.wav", tmp_path / "stats.json"
    soundfile.write(str(wav), speech_like(1.0, 16000), 16000)
    rx = LiveLinkReceiver()
    try:
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[[output]]\nkind = "livelink"\nport = {rx.port}\ntimecode = "system"\n')
        proc = subprocess.run(
            [sys.executable, "-m", "bridge", "run", "-c", str(cfg), "--model", "oracle", "--input", str(wav),
             "--fast", "--stats", str(stats)], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        rx.close()
    assert proc.returncode == 0, proc.stderr
    tc = json.loads(stats.read_text())["timecode"]
    assert tc["mode"] == "system" and tc["fps"] == 30
    assert abs(tc["last_frame_unix"] - time.time()) < 30 and tc["first_frame_unix"] <= tc["last_frame_unix"]
    assert tc["first_frame"] == format_time_of_day(seconds_since_midnight(tc["first_frame_unix"]))
    first = min(rx.packets, key=lambda p: p["frame"])  # the first frame sent: the same stamp
    assert format_time_of_day((first["frame"] + first["subframe"]) / 30)[:11] == tc["first_frame"][:11]


def test_timecode_key_is_checked(tmp_path: Path) -> None:
    with pytest.raises(BridgeError, match="timecode"):
        parse_config({"output": [{"kind": "livelink", "timecode": "smpte"}]}, "t.toml")
    with pytest.raises(BridgeError, match="timecode"):
        parse_config({"output": [{"kind": "osc", "timecode": "system"}]}, "t.toml")
    assert parse_config({"output": [{"kind": "livelink"}]}, "t.toml").outputs[0].timecode == "stream"


def with_bext(path: Path, samples_since_midnight: int) -> None:
    """Insert a Broadcast Wave ``bext`` chunk (EBU Tech 3285) after ``fmt `` in a WAV file."""
    data = bytearray(path.read_bytes())
    pos = 12
    while data[pos : pos + 4] != b"fmt ":
        pos += 8 + struct.unpack("<I", data[pos + 4 : pos + 8])[0]
    pos += 8 + struct.unpack("<I", data[pos + 4 : pos + 8])[0]
    bext = bytearray(602)
    bext[BEXT_TIME_REFERENCE_AT : BEXT_TIME_REFERENCE_AT + 8] = struct.pack("<Q", samples_since_midnight)
    data[pos:pos] = b"bext" + struct.pack("<I", len(bext)) + bext
    data[4:8] = struct.pack("<I", len(data) - 8)
    path.write_bytes(bytes(data))


def offline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", "offline", *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_offline_csv_starts_at_the_files_recording_time(tmp_path: Path) -> None:
    bwf = tmp_path / "take.wav"
    soundfile.write(str(bwf), speech_like(1.0, 48000), 48000)
    with_bext(bwf, (14 * 3600 + 3 * 60 + 7) * 48000 + 12000)  # 14:03:07.250
    assert bext_time_reference(bwf) == pytest.approx(50587.25)
    assert soundfile.info(str(bwf)).frames == 48000  # still a readable WAV
    out = tmp_path / "take.csv"
    proc = offline(str(bwf), "--model", "oracle", "-o", str(out), "--timecode", "system",
                   "--timecode-fps", "30")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "14:03:07:07.500" in proc.stderr and "bext" in proc.stderr
    rec = read_livelink_csv(out)
    assert rec.timecodes[0] == "14:03:07:07.500" and rec.timecodes[1] == "14:03:07:08.500"
    assert rec.timecodes[29] == "14:03:08:06.500" and rec.frames == 30

    plain = tmp_path / "plain.wav"  # no bext: modification time minus duration
    soundfile.write(str(plain), speech_like(2.0, 16000), 16000)
    end = unix_at(UTC, 2026, 11, 29, 10, 0, 0)
    os.utime(plain, (end, end))
    start = seconds_since_midnight(end - 2.0)
    proc = offline(str(plain), "--model", "oracle", "-o", str(out), "--timecode", "system")
    assert proc.returncode == 0, proc.stderr
    assert "modification time" in proc.stderr
    assert read_livelink_csv(out).timecodes[0] == format_time_of_day(start, 60)

    proc = offline(str(plain), "--model", "oracle", "-o", str(out), "--timecode", "23:59:59.9")
    assert proc.returncode == 0, proc.stderr
    codes = read_livelink_csv(out).timecodes
    assert codes[0] == "23:59:59:54.000" and codes[3] == "00:00:00:00.000"  # wraps at midnight


def test_offline_timecode_bad_input_is_one_line(tmp_path: Path) -> None:
    wav = tmp_path / "s.wav"
    soundfile.write(str(wav), np.zeros(16000, np.float32), 16000)
    proc = offline(str(wav), "--model", "oracle", "-o", str(tmp_path / "o.csv"), "--timecode", "25:00:00")
    assert proc.returncode == 2 and "HH:MM:SS" in proc.stderr and "Traceback" not in proc.stderr
    proc = offline(str(wav), "--model", "oracle", "-o", str(tmp_path / "o.npy"), "--timecode", "system")
    assert proc.returncode == 2 and "--timecode is for a Live Link Face CSV" in proc.stderr
    with pytest.raises(BridgeError, match="allowed stream, system"):
        parse_time_of_day("noon")
    assert parse_time_of_day("01:02:03.5") == 3723.5 and not math.isnan(parse_time_of_day("0:00:00"))
