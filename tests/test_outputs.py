"""Outputs: encoders checked byte for byte with independent decoders (tests/decoders.py),
transports checked against real receivers on loopback (UDP socket, python-osc server,
pyzmq SUB)."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import zmq
from decoders import decode_livelink, decode_osc_bundle
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer

from bridge.blendshapes import ARKIT_NAMES, EPIC_NAMES, HEAD_EYE_NAMES, LIVELINK_NAMES
from bridge.clock import wall_time
from bridge.config import OutputConfig
from bridge.errors import BridgeError
from bridge.frame import FaceFrame
from bridge.outputs import (
    LiveLinkEncoder,
    OscEncoder,
    Output,
    UdpTransport,
    ZmqEncoder,
    ZmqPubTransport,
    build_output,
)

MIRROR_PAIRS = [
    ("EyeBlinkLeft", "EyeBlinkRight"),
    ("MouthLeft", "MouthRight"),
    ("JawLeft", "JawRight"),
    ("MouthSmileLeft", "MouthSmileRight"),
    ("LeftEyeYaw", "RightEyeYaw"),
    ("LeftEyeRoll", "RightEyeRoll"),
]
UNSIDED = ["JawOpen", "TongueOut", "BrowInnerUp", "HeadYaw", "HeadRoll"]


def make_frame(number: int = 42, offset: float = 0.0) -> FaceFrame:
    """Every channel a distinct value, exact in float32 (k/64), so checks are by equality."""
    values = (np.arange(52, dtype=np.float32) + 1) / 64 + np.float32(offset)
    head = -(np.arange(9, dtype=np.float32) + 1) / 16 - np.float32(offset)
    return FaceFrame(number=number, values=values, capture_time=0.0, head=head, subject="x")


def expected(frame: FaceFrame, name: str) -> float:
    """The value the frame holds for a Live Link ``name``, looked up by name."""
    if name in HEAD_EYE_NAMES:
        return float(frame.head[HEAD_EYE_NAMES.index(name)])
    return float(frame.values[ARKIT_NAMES.index(name[0].lower() + name[1:])])


# --- Live Link encoder --------------------------------------------------------------


def test_livelink_packet_fields_and_values_by_name() -> None:
    frame = make_frame(1234)
    data = LiveLinkEncoder("A2EBridge", "a2e-bridge").encode(frame)
    pkt = decode_livelink(data)
    assert len(data) == 270 + len("a2e-bridge") + len("A2EBridge")
    assert (pkt["version"], pkt["device_id"], pkt["subject"]) == (6, "a2e-bridge", "A2EBridge")
    assert (pkt["frame"], pkt["subframe"], pkt["fps_num"], pkt["fps_den"]) == (1234, 0.0, 30, 1)
    assert data[0] == 6 and data[1:5] == b"\x00\x00\x00\x0a"  # big-endian, no LE uint32
    for name in LIVELINK_NAMES:
        assert pkt["values"][LIVELINK_NAMES.index(name)] == expected(frame, name), name
    assert pkt["values"][LIVELINK_NAMES.index("JawOpen")] == 18 / 64


def test_livelink_utf8_strings_and_size() -> None:
    subject, device = "Gesicht-ä😀", "dévice-1"
    data = LiveLinkEncoder(subject, device).encode(make_frame())
    pkt = decode_livelink(data)
    assert (pkt["subject"], pkt["device_id"]) == (subject, device)
    assert len(data) == 270 + len(subject.encode()) + len(device.encode())


def test_livelink_mirror_swaps_left_right_only() -> None:
    frame = make_frame()
    plain = decode_livelink(LiveLinkEncoder("s", "d").encode(frame))["values"]
    mirrored = decode_livelink(LiveLinkEncoder("s", "d", mirror=True).encode(frame))["values"]
    at = LIVELINK_NAMES.index
    for left, right in MIRROR_PAIRS:
        assert mirrored[at(left)] == plain[at(right)] == expected(frame, right)
        assert mirrored[at(right)] == plain[at(left)]
    for name in UNSIDED:
        assert mirrored[at(name)] == plain[at(name)]
    assert sorted(mirrored) == sorted(plain)


def test_livelink_reuse_does_not_leak_previous_frame() -> None:
    enc = LiveLinkEncoder("s", "d", mirror=True)
    first = enc.encode(make_frame(1, 0.0))
    view = enc.encode_view(make_frame(2, 0.5))
    second = decode_livelink(bytes(view))
    assert decode_livelink(first)["frame"] == 1  # the bytes copy is independent
    assert second["frame"] == 2
    assert second["values"][LIVELINK_NAMES.index("JawOpen")] == 18 / 64 + 0.5
    assert second["values"][LIVELINK_NAMES.index("HeadPitch")] == -2 / 16 - 0.5
    assert second["values"][LIVELINK_NAMES.index("EyeBlinkLeft")] == 8 / 64 + 0.5  # mirrored


def test_livelink_frame_number_wraps_as_int32() -> None:
    enc = LiveLinkEncoder("s", "d")
    assert decode_livelink(enc.encode(make_frame(2**31)))["frame"] == -(2**31)


# --- OSC encoder --------------------------------------------------------------------


def test_osc_arkit_bundle() -> None:
    frame = make_frame(77)
    msgs = decode_osc_bundle(OscEncoder("arkit").encode(frame))
    assert [a for a, _ in msgs] == [f"/arkit/{n}" for n in EPIC_NAMES] + ["/arkit/time", "/arkit/frame"]
    assert msgs[52][1] == [pytest.approx(wall_time(frame.capture_time), abs=1e-6)]  # a double: Unix seconds
    for (_, args), name in zip(msgs, EPIC_NAMES, strict=False):
        assert args == [expected(frame, name)]
    assert msgs[-1][1] == [77]
    assert dict(msgs)["/arkit/JawOpen"] == [18 / 64]


def test_osc_vmc_bundle() -> None:
    frame = make_frame(45)
    msgs = decode_osc_bundle(OscEncoder("vmc").encode(frame))
    assert len(msgs) == 55
    assert msgs[52:] == [("/VMC/Ext/OK", [1]), ("/VMC/Ext/T", [1.5]), ("/VMC/Ext/Blend/Apply", [])]
    for (address, args), name in zip(msgs, EPIC_NAMES, strict=False):
        assert address == "/VMC/Ext/Blend/Val"
        assert args == [name, expected(frame, name)]


@pytest.mark.parametrize("scheme", ["arkit", "vmc"])
def test_osc_mirror_and_reuse(scheme: str) -> None:
    enc = OscEncoder(scheme, mirror=True)  # type: ignore[arg-type]
    enc.encode(make_frame(1, 0.0))
    frame = make_frame(2, 0.25)
    msgs = decode_osc_bundle(enc.encode(frame))
    got = {
        (args[0] if scheme == "vmc" else addr.removeprefix("/arkit/")): args[-1] for addr, args in msgs[:52]
    }
    for left, right in MIRROR_PAIRS[:4]:
        assert got[left] == expected(frame, right) and got[right] == expected(frame, left)
    assert got["JawOpen"] == expected(frame, "JawOpen") == 18 / 64 + 0.25
    if scheme == "arkit":
        assert msgs[-1] == ("/arkit/frame", [2])


def test_osc_unknown_scheme() -> None:
    with pytest.raises(BridgeError, match="arkit or vmc"):
        OscEncoder("vrchat")  # type: ignore[arg-type]


# --- ZeroMQ encoder -----------------------------------------------------------------


def split(message: bytes) -> tuple[bytes, bytes]:
    topic, sep, payload = bytes(message).partition(b" ")
    assert sep == b" "
    return topic, payload


def test_zmq_json_message() -> None:
    frame = make_frame(45)
    frame.capture_time, frame.sent_at = 100.0, 100.0625  # sent 62.5 ms after its capture
    topic, payload = split(ZmqEncoder("json", "face", "Ana", "dev").encode(frame))
    doc = json.loads(payload)
    assert topic == b"face"
    assert list(doc) == ["subject", "frame", "time", "capture_time", "latency_ms", "names", "values",
                         "speech", "text"]  # fmt: skip
    assert doc["capture_time"] == pytest.approx(wall_time(frame.capture_time), abs=1e-6)
    assert doc["latency_ms"] == 62.5
    frame.sent_at = None  # a frame not sent live (offline, a test) has no latency
    assert json.loads(split(ZmqEncoder("json", "face", "Ana", "dev").encode(frame))[1])["latency_ms"] is None
    assert (doc["subject"], doc["frame"], doc["time"]) == ("Ana", 45, 1.5)
    assert doc["speech"] is None and doc["text"] == ""  # no CTC head behind this frame
    assert doc["names"] == list(EPIC_NAMES)
    by_name = dict(zip(doc["names"], doc["values"], strict=True))
    for name in EPIC_NAMES:
        assert by_name[name] == pytest.approx(expected(frame, name), rel=1e-6)


def test_osc_arkit_speech_message() -> None:
    frame = make_frame(9)
    frame.speech_prob = 0.75
    msgs = decode_osc_bundle(OscEncoder("arkit", speech=True).encode(frame))
    assert msgs[52] == ("/arkit/speech", [0.75]) and msgs[54] == ("/arkit/frame", [9])
    assert msgs[53][0] == "/arkit/time"
    frame.speech_prob = None  # a model without a CTC head
    assert decode_osc_bundle(OscEncoder("arkit", speech=True).encode(frame))[52][1] == [-1.0]
    with pytest.raises(BridgeError, match="needs scheme"):
        OscEncoder("vmc", speech=True)


def test_zmq_json_carries_speech_probability_and_text() -> None:
    frame = make_frame(3)
    frame.speech_prob = 0.8125
    frame.text = 'HE SAID "HI"'
    doc = json.loads(split(ZmqEncoder("json", "face", "Ana", "dev").encode(frame))[1])
    assert doc["speech"] == 0.8125 and doc["text"] == 'HE SAID "HI"'


def test_zmq_json_mirror_reuse_and_awkward_strings() -> None:
    enc = ZmqEncoder("json", "t%s", 'Ä "quoted" %d 100%', "d", mirror=True)
    enc.encode(make_frame(1, 0.0))
    frame = make_frame(2, 0.5)
    topic, payload = split(enc.encode(frame))
    doc = json.loads(payload.decode("utf-8"))
    assert topic == b"t%s" and doc["subject"] == 'Ä "quoted" %d 100%'
    assert doc["frame"] == 2
    v = dict(zip(doc["names"], doc["values"], strict=True))
    assert v["MouthLeft"] == expected(frame, "MouthRight")
    assert v["JawOpen"] == expected(frame, "JawOpen")


def test_zmq_json_non_finite_becomes_null() -> None:
    frame = make_frame()
    frame.values[0], frame.values[1], frame.values[2] = np.nan, np.inf, -np.inf
    _, payload = split(ZmqEncoder("json", subject="nan-inf").encode(frame))
    doc = json.loads(payload, parse_constant=lambda c: pytest.fail(f"non-standard {c}"))
    assert doc["values"][:4] == [None, None, None, 4 / 64]
    assert doc["subject"] == "nan-inf"


def test_zmq_livelink_payload_is_the_livelink_packet() -> None:
    frame = make_frame(9)
    enc = ZmqEncoder("livelink", "ll", "Subj", "dev", mirror=True)
    topic, payload = split(enc.encode(frame))
    assert topic == b"ll"
    assert payload == LiveLinkEncoder("Subj", "dev", mirror=True).encode(frame)
    assert bytes(enc.encode_view(frame)) == b"ll " + payload


def test_zmq_topic_with_space_refused() -> None:
    with pytest.raises(BridgeError, match="output.topic"):
        ZmqEncoder("json", "a b")


# --- UDP transport on loopback -----------------------------------------------------


@pytest.fixture
def udp_receiver():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    yield sock
    sock.close()


def test_livelink_over_real_udp(udp_receiver: socket.socket) -> None:
    port = udp_receiver.getsockname()[1]
    out = build_output(OutputConfig(kind="livelink", port=port, subject="S", device_id="D"))
    with out:
        out.publish(make_frame(1, 0.0))
        out.publish(make_frame(2, 0.25))
        first = decode_livelink(udp_receiver.recv(2048))
        second = decode_livelink(udp_receiver.recv(2048))
        assert out.stats() == {"sent": 2, "errors": 0}
    assert (first["frame"], second["frame"]) == (1, 2)
    assert (second["subject"], second["device_id"]) == ("S", "D")
    assert second["values"][LIVELINK_NAMES.index("JawOpen")] == 18 / 64 + 0.25


def test_udp_send_errors_are_counted_not_raised() -> None:
    transport = UdpTransport("127.0.0.1", 9, label="livelink")
    transport.send(b"x" * 70_000)  # larger than any UDP datagram: EMSGSIZE
    transport.close()
    assert transport.stats() == {"sent": 0, "errors": 1}
    assert transport.last_error == "EMSGSIZE"


def test_udp_unresolvable_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(BridgeError) as err:
        build_output(OutputConfig(kind="osc", host="nowhere.invalid"))
    msg = str(err.value)
    assert "\n" not in msg
    assert "osc arkit output" in msg and "'nowhere.invalid'" in msg and "output.host" in msg


# --- OSC through a real python-osc server -----------------------------------------


def serve_one_bundle(scheme: str, frame: FaceFrame) -> list[tuple[str, tuple]]:
    got: list[tuple[str, tuple]] = []
    dispatcher = Dispatcher()
    pattern = "/arkit/*" if scheme == "arkit" else "/VMC/Ext/Blend/*"
    dispatcher.map(pattern, lambda address, *args: got.append((address, args)))
    server = BlockingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    server.timeout = 2.0
    try:
        port = server.server_address[1]
        with build_output(OutputConfig(kind="osc", scheme=scheme, port=port)) as out:
            out.publish(frame)
            server.handle_request()
            assert out.stats()["sent"] == 1
    finally:
        server.server_close()
    return got


def test_osc_arkit_received_by_python_osc() -> None:
    frame = make_frame(300, 0.125)
    got = serve_one_bundle("arkit", frame)
    assert [a for a, _ in got] == [f"/arkit/{n}" for n in EPIC_NAMES] + ["/arkit/time", "/arkit/frame"]
    assert dict(got)["/arkit/time"] == (pytest.approx(wall_time(frame.capture_time), abs=1e-6),)
    values = dict(got)
    assert values["/arkit/JawOpen"] == (18 / 64 + 0.125,)
    assert values["/arkit/EyeBlinkRight"] == (expected(frame, "EyeBlinkRight"),)
    assert values["/arkit/frame"] == (300,)


def test_osc_vmc_received_by_python_osc() -> None:
    frame = make_frame()
    got = serve_one_bundle("vmc", frame)
    assert got[-1] == ("/VMC/Ext/Blend/Apply", ())
    assert [args[0] for _, args in got[:-1]] == list(EPIC_NAMES)
    assert all(args[1] == expected(frame, args[0]) for _, args in got[:-1])


# --- ZeroMQ through a real SUB socket -------------------------------------------------


@pytest.fixture
def sub_factory():
    socks: list[zmq.Socket] = []

    def make(endpoint: str, topic: bytes, rcvhwm: int = 1000) -> zmq.Socket:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, rcvhwm)
        sub.setsockopt(zmq.SUBSCRIBE, topic)
        sub.connect(endpoint)
        socks.append(sub)
        return sub

    yield make
    for s in socks:
        s.close(linger=0)


def first_message(out: Output, sub: zmq.Socket, frame: FaceFrame) -> bytes:
    """Publish until the subscription has propagated (ZeroMQ's slow joiner), then read."""
    for _ in range(200):
        out.publish(frame)
        if sub.poll(20):
            return sub.recv()
    pytest.fail("SUB never received a message")


@pytest.mark.parametrize("fmt", ["json", "livelink"])
def test_zmq_received_by_real_sub(sub_factory, fmt: str) -> None:
    cfg = OutputConfig(kind="zmq", endpoint="tcp://127.0.0.1:*", format=fmt, topic="face", subject="Ana")
    with build_output(cfg) as out:
        endpoint = out.transport.last_endpoint  # type: ignore[attr-defined]
        assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith("*")
        sub = sub_factory(endpoint, b"face ")
        frame = make_frame(5, 0.25)
        topic, payload = split(first_message(out, sub, frame))
        assert topic == b"face"
        if fmt == "json":
            doc = json.loads(payload)
            assert (doc["subject"], doc["frame"]) == ("Ana", 5)
            assert doc["values"][ARKIT_NAMES.index("jawOpen")] == 18 / 64 + 0.25
        else:
            pkt = decode_livelink(payload)
            assert (pkt["subject"], pkt["frame"]) == ("Ana", 5)
            assert pkt["values"][LIVELINK_NAMES.index("JawOpen")] == 18 / 64 + 0.25
        assert out.stats()["sent"] >= 1 and out.stats()["dropped"] == 0


def test_zmq_publish_without_subscriber_never_blocks() -> None:
    with build_output(OutputConfig(kind="zmq", endpoint="tcp://127.0.0.1:*")) as out:
        frame = make_frame()
        for _ in range(2000):
            out.publish(frame)
        stats = out.stats()
    assert stats["sent"] + stats["dropped"] == 2000


def test_zmq_publish_with_stalled_subscriber_never_blocks(sub_factory) -> None:
    transport = ZmqPubTransport("tcp://127.0.0.1:*", sndhwm=10)
    out = Output("zmq test", ZmqEncoder("livelink", "t"), transport)
    with out:
        sub = sub_factory(transport.last_endpoint, b"t ", rcvhwm=10)
        frame = make_frame()
        first_message(out, sub, frame)  # connected and subscribed; now never read again
        before = sum(out.stats().values())
        for _ in range(20_000):
            out.publish(frame)
        stats = out.stats()
    assert stats["sent"] + stats["dropped"] - before == 20_000


def test_zmq_address_in_use() -> None:
    first = ZmqPubTransport("tcp://127.0.0.1:*")
    try:
        with pytest.raises(BridgeError) as err:
            ZmqPubTransport(first.last_endpoint)
    finally:
        first.close()
    msg = str(err.value)
    assert msg == (
        f"zmq output: cannot bind {first.last_endpoint}: address already in use; "
        "choose another endpoint (output.endpoint)"
    )


def test_zmq_bad_endpoint() -> None:
    with pytest.raises(BridgeError, match=r"cannot bind nonsense://x: .*output\.endpoint"):
        ZmqPubTransport("nonsense://x")


# --- build_output ---------------------------------------------------------------------


def test_build_output_default_ports_and_names() -> None:
    cases = [
        (OutputConfig(kind="livelink"), LiveLinkEncoder, "livelink 127.0.0.1:11111"),
        (OutputConfig(kind="osc"), OscEncoder, "osc arkit 127.0.0.1:9000"),
        (OutputConfig(kind="osc", scheme="vmc"), OscEncoder, "osc vmc 127.0.0.1:39539"),
    ]
    for cfg, enc_type, name in cases:
        with build_output(cfg) as out:
            assert isinstance(out.encoder, enc_type)
            assert out.name == name
            assert out.transport.address == ("127.0.0.1", cfg.resolved_port)  # type: ignore[attr-defined]


def test_encoders_are_pure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Encoders open no socket: they are usable and testable offline."""

    def no_sockets(*args: object, **kwargs: object) -> None:
        raise AssertionError("an encoder opened a socket")

    monkeypatch.setattr(socket, "socket", no_sockets)
    monkeypatch.setattr(zmq.Context, "socket", no_sockets)
    frame = make_frame()
    encoders = [LiveLinkEncoder("s", "d"), OscEncoder("arkit"), OscEncoder("vmc")]
    encoders += [ZmqEncoder("json"), ZmqEncoder("livelink")]
    for enc in encoders:
        assert bytes(enc.encode_view(frame)) == enc.encode(frame)
