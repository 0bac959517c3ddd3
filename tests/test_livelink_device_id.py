"""Live Link device id: a 36-character UUID by default, stable per machine and subject, read
over a real UDP socket by a decoder that assumes the phone app's fixed 36-byte id, as
PyLiveLinkFace's does (receivers.md), with the app's packet size."""

from __future__ import annotations

import logging
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bridge.blendshapes import NUM_BLENDSHAPES
from bridge.config import OutputConfig, parse_config
from bridge.frame import FaceFrame
from bridge.outputs import ZmqEncoder, build_output
from bridge.outputs import livelink as livelink_module
from bridge.outputs.livelink import LiveLinkEncoder, default_device_id, machine_key

ROOT = Path(__file__).resolve().parent.parent
UUID_TEXT = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")
#: The one size VRCFaceTracking's Live Link module accepts in release b5d4d14 (receivers.md):
#: the app's 36-character id and a 6-character subject.
VRCFT_B5D4D14_SIZE = 312


def app_packet_size(subject: str) -> int:
    """What the phone app sends for ``subject``: 270 fixed bytes + its 36-byte id + subject."""
    return 270 + 36 + len(subject.encode())


def decode_fixed_id(data: bytes) -> dict[str, Any]:
    """A Live Link packet read the way PyLiveLinkFace reads it (receivers.md): the version as
    a little-endian int32 from bytes 0-3, the device id as the fixed bytes [4:41] (so its
    first character is the low byte of the id's length), then the subject as a big-endian
    length-prefixed string, frame, sub-frame, rate, count and 61 big-endian floats."""
    (version,) = struct.unpack_from("<i", data, 0)
    device_field = data[4:41].decode("utf-8")
    (subject_len,) = struct.unpack_from(">i", data, 41)
    if not 0 <= subject_len <= len(data) - 45:
        raise ValueError(f"subject length {subject_len} does not fit the packet")
    end = 45 + subject_len
    subject = data[45:end].decode("utf-8")
    frame, subframe, fps, den, count = struct.unpack_from(">ifiib", data, end)
    if count != 61:
        raise ValueError(f"value count {count}, expected 61")
    values = struct.unpack(">61f", data[end + 17 :])  # struct.error unless exactly 61 floats remain
    return {"version": version, "device_field": device_field, "subject": subject, "frame": frame,
            "fps": (fps, den), "values": values}  # fmt: skip


def frame(k: int) -> FaceFrame:
    values = ((np.arange(NUM_BLENDSHAPES) + k) % 50 / 64 + 1 / 128).astype(np.float32)
    head = (np.arange(9, dtype=np.float32) - 4) / 32
    return FaceFrame(number=k, values=values, capture_time=0.0, head=head, subject="t")


@pytest.fixture
def udp_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    yield sock
    sock.close()


def test_default_id_is_a_uuid_stable_per_machine_and_subject() -> None:
    first = default_device_id("A2EBridge")
    assert UUID_TEXT.match(first) and len(first) == len(first.encode()) == 36
    assert default_device_id("A2EBridge") == first
    assert default_device_id("Other") != first
    assert default_device_id("A2EBridge", machine="machine-id:0123") != first
    assert default_device_id("A2EBridge", machine="machine-id:0123") == default_device_id(
        "A2EBridge", machine="machine-id:0123"
    )
    # Not random per run: a fresh interpreter derives the same id.
    code = "from bridge.outputs.livelink import default_device_id as d; print(d('A2EBridge'))"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           cwd=ROOT, check=True)  # fmt: skip
    assert fresh.stdout.strip() == first


def test_machine_key_prefers_machine_id_then_a_real_mac(tmp_path: Path, monkeypatch) -> None:
    etc, dbus = tmp_path / "machine-id", tmp_path / "dbus-machine-id"
    monkeypatch.setattr(livelink_module, "_MACHINE_ID_FILES", (str(etc), str(dbus)))
    dbus.write_text("c0ffee\n")
    assert machine_key() == "machine-id:c0ffee"
    etc.write_text("")  # empty (a container's): skipped
    assert machine_key() == "machine-id:c0ffee"
    etc.write_text("0123abcd\n")
    assert machine_key() == "machine-id:0123abcd"
    etc.unlink()
    dbus.unlink()
    key = machine_key()  # no machine id: the MAC, or the host name when the MAC is made up
    assert key.startswith(("mac:", "host:")) and machine_key() == key


def test_default_id_read_by_a_fixed_36_byte_reader_over_udp(udp_socket: socket.socket) -> None:
    port = udp_socket.getsockname()[1]
    cfg = parse_config({"output": [{"kind": "livelink", "port": port, "subject": "iPhone"}]}).outputs[0]
    assert cfg.device_id is None
    with build_output(cfg) as out:
        out.publish(frame(7))
        data = udp_socket.recv(4096)
    expected_id = default_device_id("iPhone")
    assert len(data) == app_packet_size("iPhone") == VRCFT_B5D4D14_SIZE
    pkt = decode_fixed_id(data)
    assert pkt["version"] == 6
    assert pkt["device_field"] == chr(36) + expected_id  # [4:41]: the length's low byte, then the id
    assert (pkt["subject"], pkt["frame"], pkt["fps"]) == ("iPhone", 7, (30, 1))
    f = frame(7)
    np.testing.assert_array_equal(np.float32(pkt["values"][:NUM_BLENDSHAPES]), f.values)
    np.testing.assert_array_equal(np.float32(pkt["values"][NUM_BLENDSHAPES:]), f.head)
    # The bridge's own subject name: the app's size for that subject, and still readable.
    enc = LiveLinkEncoder("A2EBridge")
    assert enc.size == app_packet_size("A2EBridge")
    assert decode_fixed_id(enc.encode(f))["subject"] == "A2EBridge"


def test_configured_id_wins_and_says_what_it_costs(udp_socket: socket.socket, caplog) -> None:
    port = udp_socket.getsockname()[1]
    cfg = OutputConfig(kind="livelink", port=port, subject="A2EBridge", device_id="a2e-bridge")
    with caplog.at_level(logging.WARNING, logger="bridge.outputs.livelink"):
        out = build_output(cfg)
    assert len([r for r in caplog.records if "'a2e-bridge' is 10 bytes" in r.getMessage()]) == 1
    with out:
        out.publish(frame(1152))  # frame 0x480: a byte that is not UTF-8 inside [4:41]
        data = udp_socket.recv(4096)
    assert data[1:15] == struct.pack(">i", 10) + b"a2e-bridge"
    with pytest.raises((UnicodeDecodeError, ValueError, struct.error)):
        decode_fixed_id(data)  # why the default is a UUID: the fixed-id reader cannot read this
    uuid_id = "0F8FAD5B-D9CB-469F-A165-70867728950E"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bridge.outputs.livelink"):
        enc = LiveLinkEncoder("A2EBridge", uuid_id)
    assert not caplog.records and decode_fixed_id(enc.encode(frame(3)))["device_field"][1:] == uuid_id


def test_zmq_livelink_format_carries_the_same_default_id() -> None:
    enc = ZmqEncoder("livelink", topic="a2e", subject="iPhone")
    message = enc.encode(frame(2))
    topic, _, packet = message.partition(b" ")
    assert topic == b"a2e" and len(packet) == VRCFT_B5D4D14_SIZE
    assert decode_fixed_id(packet)["device_field"][1:] == default_device_id("iPhone")
