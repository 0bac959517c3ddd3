"""One output, several performers: each performer's frames go out under its own subject, on
the output's one socket, and an output never sends a frame of a performer it does not serve.
Real receivers on loopback (UDP sockets, a python-osc server, a ZeroMQ SUB); the single
performer's packets are compared byte for byte with an encoder built the old way."""

from __future__ import annotations

import json
import socket
import time
import tomllib
from collections import defaultdict

import numpy as np
import pytest
import zmq
from decoders import decode_livelink
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer

from bridge.blendshapes import EPIC_NAMES, NUM_BLENDSHAPES
from bridge.config import OutputConfig, parse_config
from bridge.errors import BridgeError
from bridge.frame import FaceFrame
from bridge.outputs import LiveLinkEncoder, OscEncoder, ZmqEncoder, build_output, performers_served
from bridge.outputs.base import Output
from bridge.outputs.livelink import default_device_id

SUBJECTS = ("Ana", "Ben", "Cy")


def face(number: int, performer: int) -> FaceFrame:
    """Values that say whose frame this is and which: exact in float32 (k/1024), distinct per
    performer and frame, so a value from the wrong performer cannot pass."""
    values = ((performer + 1) * 128 + np.arange(NUM_BLENDSHAPES, dtype=np.float32) + number) / 1024
    head = np.full(9, (performer + 1) / 8 + number / 1024, dtype=np.float32)
    subject = SUBJECTS[performer] if performer < len(SUBJECTS) else f"S{performer}"
    return FaceFrame(number, values, 0.0, head, subject, 0.25 * performer, performer=performer)


def udp_receiver() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)  # loopback delivers within sendto: a quiet 50 ms means nothing more comes
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram that has arrived (until the socket stays quiet for its timeout)."""
    got = []
    while True:
        try:
            got.append(sock.recv(65536))
        except TimeoutError:
            return got


def publish_interleaved(out, frames: int, performers: range | tuple[int, ...]) -> None:
    for k in range(frames):
        for p in performers:
            out.publish(face(k, p))


def test_livelink_three_performers_three_subjects_three_device_ids() -> None:
    rx = udp_receiver()
    try:
        served = [(i, s) for i, s in enumerate(SUBJECTS)]
        with build_output(OutputConfig(kind="livelink", port=rx.getsockname()[1]), served) as out:
            publish_interleaved(out, 10, range(3))
            assert out.stats() == {"sent": 30, "errors": 0}
        packets = [decode_livelink(d) for d in drain(rx)]
    finally:
        rx.close()
    by_subject = defaultdict(list)
    for pkt in packets:
        by_subject[pkt["subject"]].append(pkt)
    assert sorted(by_subject) == sorted(SUBJECTS)
    ids = {s: {p["device_id"] for p in pkts} for s, pkts in by_subject.items()}
    assert all(len(v) == 1 for v in ids.values())  # one device per subject, all along
    assert len({next(iter(v)) for v in ids.values()}) == 3  # three devices: Unreal sees three subjects
    for p, subject in enumerate(SUBJECTS):
        assert ids[subject] == {default_device_id(subject)}
        pkts = by_subject[subject]
        assert [q["frame"] for q in pkts] == list(range(10))
        for k, q in enumerate(pkts):
            want = face(k, p)
            assert q["values"][:NUM_BLENDSHAPES] == want.values.tolist()
            assert q["values"][NUM_BLENDSHAPES:] == want.head.tolist()


def join(sub: zmq.Socket, out: Output) -> None:
    """A SUB joins asynchronously: publish a marker until it arrives, then drain."""
    deadline = time.monotonic() + 5.0
    while not sub.poll(20):
        assert time.monotonic() < deadline, "SUB never joined"
        out.publish(face(999, 0))
    while sub.poll(100):
        sub.recv()


@pytest.mark.parametrize("fmt", ["json", "livelink"])
def test_zmq_sub_sees_each_subject(fmt: str) -> None:
    cfg = OutputConfig(kind="zmq", endpoint="tcp://127.0.0.1:*", format=fmt, topic="face")
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"face ")
    sub.setsockopt(zmq.RCVHWM, 10_000)
    try:
        with build_output(cfg, [(0, "Ana"), (1, "Ben"), (2, "Cy")]) as out:
            sub.connect(out.transport.last_endpoint)  # type: ignore[attr-defined]
            # a SUB joins asynchronously: publish a marker until it arrives, then the frames
            join(sub, out)
            publish_interleaved(out, 8, range(3))
            messages = []
            while sub.poll(300):
                messages.append(sub.recv())
    finally:
        sub.close(linger=0)
    assert len(messages) == 24
    seen = defaultdict(list)
    for m in messages:
        topic, _, payload = m.partition(b" ")
        assert topic == b"face"
        if fmt == "json":
            doc = json.loads(payload)
            seen[doc["subject"]].append((doc["frame"], doc["values"], doc["speech"]))
        else:
            pkt = decode_livelink(payload)
            assert pkt["device_id"] == default_device_id(pkt["subject"])
            seen[pkt["subject"]].append((pkt["frame"], pkt["values"][:NUM_BLENDSHAPES], None))
    assert sorted(seen) == sorted(SUBJECTS)
    for p, subject in enumerate(SUBJECTS):
        assert [f for f, _, _ in seen[subject]] == list(range(8))
        for k, (_, values, speech) in enumerate(seen[subject]):
            assert values == pytest.approx(face(k, p).values.tolist(), abs=1e-7)
            assert speech in (None, round(0.25 * p, 4))


def test_zmq_keeps_a_second_of_every_performers_frames_for_a_slow_subscriber() -> None:
    """Each hop publishes a burst of one message per performer: 128 performers must not
    overflow PUB's per-subscriber queue (it drops silently) while the subscriber reads a
    little later."""
    cfg = OutputConfig(kind="zmq", endpoint="tcp://127.0.0.1:*", topic="face")
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"face ")
    sub.setsockopt(zmq.RCVHWM, 100_000)
    served = [(i, f"S{i}") for i in range(128)]
    try:
        with build_output(cfg, served) as out:
            sub.connect(out.transport.last_endpoint)  # type: ignore[attr-defined]
            join(sub, out)
            publish_interleaved(out, 10, range(128))  # 10 hops of 128, nobody reading meanwhile
            got = 0
            while sub.poll(300):
                sub.recv()
                got += 1
    finally:
        sub.close(linger=0)
    assert got == 1280


def osc_messages(performers: list[tuple[int, str | None]], frames: range | tuple[int, ...], speech: bool
                 ) -> list[tuple[str, tuple]]:  # fmt: skip
    got: list[tuple[str, tuple]] = []
    disp = Dispatcher()
    disp.set_default_handler(lambda address, *args: got.append((address, args)))
    server = BlockingOSCUDPServer(("127.0.0.1", 0), disp)
    server.timeout = 0.3
    try:
        cfg = OutputConfig(kind="osc", port=server.server_address[1], speech=speech)
        with build_output(cfg, performers) as out:
            publish_interleaved(out, 3, frames)
            sent = out.stats()["sent"]
        for _ in range(sent):
            server.handle_request()
    finally:
        server.server_close()
    return got


def test_osc_two_performers_under_their_subjects() -> None:
    got = osc_messages([(0, "Ana"), (1, "Ben")], (0, 1, 2), speech=True)  # performer 2 is not served
    assert len(got) == 2 * 3 * (NUM_BLENDSHAPES + 3)
    by_address = defaultdict(list)
    for address, args in got:
        by_address[address].append(args)
    want = {f"/arkit/{s}/{n}" for s in ("Ana", "Ben") for n in (*EPIC_NAMES, "speech", "time", "frame")}
    assert set(by_address) == want
    for p, s in enumerate(("Ana", "Ben")):
        assert by_address[f"/arkit/{s}/frame"] == [(0,), (1,), (2,)]
        assert by_address[f"/arkit/{s}/speech"] == [(0.25 * p,)] * 3
        for i, name in enumerate(EPIC_NAMES):
            want_values = [float(face(k, p).values[i]) for k in range(3)]
            assert [a[0] for a in by_address[f"/arkit/{s}/{name}"]] == want_values


def test_osc_one_performer_keeps_the_plain_addresses() -> None:
    got = osc_messages([(1, "Ben")], (0, 1, 2), speech=False)
    addresses = {a for a, _ in got}
    assert addresses == {f"/arkit/{n}" for n in (*EPIC_NAMES, "time", "frame")}
    jaw = [args[0] for a, args in got if a == "/arkit/JawOpen"]
    assert jaw == [float(face(k, 1).values[EPIC_NAMES.index("JawOpen")]) for k in range(3)]


SHOW = """
[[performer]]
name = "ana"
subject = "Ana"
input = { kind = "file", file = "x.wav", channel = 0 }
[[performer]]
name = "ben"
subject = "Ben"
input = { kind = "file", file = "x.wav", channel = 1 }
[[performer]]
name = "cy"
subject = "Cy"
input = { kind = "file", file = "x.wav", channel = 2 }
"""


@pytest.mark.parametrize(
    "table",
    [
        'kind = "livelink"\nperformers = ["ben", "cy"]',
        'kind = "osc"\nperformers = ["ben"]',
        'kind = "osc"\nscheme = "vmc"\nperformers = ["ben"]',
        'kind = "vrchat"\nlisten_port = false\nperformers = ["ben"]',
        'kind = "ifacialmocap"\nlisten_port = false\nperformers = ["ben"]',
        'kind = "console"\nperformers = ["ben"]',
    ],
)
def test_a_restricted_output_never_sends_another_performers_frames(table: str) -> None:
    """From the config to the wire: three performers, an output restricted to some of them;
    only their frames leave (counted at the receiver, and identified by their values)."""
    rx = udp_receiver()
    try:
        text = SHOW + f"[[output]]\nport = {rx.getsockname()[1]}\n{table}\n"
        cfg = parse_config(tomllib.loads(text), "show.toml")
        out_cfg = cfg.outputs[0]
        served = performers_served(cfg, out_cfg)
        assert [i for i, _ in served] == [i for i, p in enumerate(cfg.cast) if p.name in out_cfg.performers]
        with build_output(out_cfg, served) as out:
            assert [p for p in range(3) if out.serves(p)] == [i for i, _ in served]
            for p in range(3):
                out.publish(face(0, p))
            sent = out.stats()["sent"]
            got = drain(rx)
            with build_output(out_cfg, served) as alone:  # the same output, fed only its own frames
                for i, _ in served:
                    alone.publish(face(0, i))
                alone_sent = alone.stats()["sent"]
            expected = drain(rx)
    finally:
        rx.close()
    assert sent == alone_sent > 0
    assert sorted(got) == sorted(expected)  # what the others' frames would add is not there
    if out_cfg.kind == "livelink":
        assert sorted(decode_livelink(d)["subject"] for d in got) == ["Ben", "Cy"]


def test_out_of_range_and_unserved_performers_are_ignored() -> None:
    rx = udp_receiver()
    try:
        with build_output(OutputConfig(kind="livelink", port=rx.getsockname()[1]), [(2, "Cy")]) as out:
            for p in (0, 1, 2):
                out.publish(face(0, p))
            stray = face(0, 2)
            for stray.performer in (-1, 3, 10_000):
                out.publish(stray)
            assert out.stats()["sent"] == 1
        (only,) = [decode_livelink(d) for d in drain(rx)]
    finally:
        rx.close()
    assert only["subject"] == "Cy" and only["values"][:NUM_BLENDSHAPES] == face(0, 2).values.tolist()


def test_ifacialmocap_requesters_get_only_the_served_performer() -> None:
    """Being the phone: a receiver that sent the start string gets performer 1's frames only,
    in both text versions, and so does the configured destination."""
    from decoders import ifacialmocap_v2_fields, vrcft_ifacialmocap_fields

    from bridge.outputs.base import UdpTransport
    from bridge.outputs.ifacialmocap_phone import START_STRING, IFacialMocapOutput, Phone

    dest, v1_rx, v2_rx, listener = udp_receiver(), udp_receiver(), udp_receiver(), udp_receiver()
    transport = UdpTransport("127.0.0.1", dest.getsockname()[1], label="ifacialmocap")
    out = IFacialMocapOutput("ifacialmocap", False, transport, Phone(listener, reply_port=0), performer=1)
    try:
        v1_rx.sendto(START_STRING.encode(), listener.getsockname())
        v2_rx.sendto((START_STRING + "|sendDataVersion=v2").encode(), listener.getsockname())
        time.sleep(0.05)
        publish_interleaved(out, 4, range(3))
        got = {"dest": drain(dest), "v1": drain(v1_rx), "v2": drain(v2_rx)}
        assert out.stats()["requesters"] == 2
    finally:
        out.close()
        for sock in (dest, v1_rx, v2_rx):
            sock.close()

    def percent(f: FaceFrame) -> list[float]:
        return [float(round(min(max(v * 100, 0), 100))) for v in f.values.astype(np.float64)]

    want = [percent(face(k, 1)) for k in range(4)]
    assert [list(vrcft_ifacialmocap_fields(d).values()) for d in got["dest"]] == want
    assert [list(vrcft_ifacialmocap_fields(d).values()) for d in got["v1"]] == want
    assert [list(ifacialmocap_v2_fields(d).values())[1:] for d in got["v2"]] == want


@pytest.mark.parametrize("served", [[(0, None)], [(0, "iPhone")], None])
@pytest.mark.parametrize(
    ("kind", "extra"),
    [("livelink", {}), ("livelink", {"device_id": "dev", "mirror": True}), ("osc", {}),
     ("osc", {"speech": True, "mirror": True}), ("osc", {"scheme": "vmc"})],
)  # fmt: skip
def test_one_performer_is_byte_identical_to_the_old_encoder(kind: str, extra: dict, served) -> None:
    rx = udp_receiver()
    try:
        cfg = OutputConfig(kind=kind, port=rx.getsockname()[1], subject="Solo", **extra)
        out = build_output(cfg) if served is None else build_output(cfg, served)
        subject = cfg.subject if served is None or served[0][1] is None else served[0][1]
        if kind == "livelink":
            old = LiveLinkEncoder(subject, cfg.device_id, cfg.mirror)
        else:
            old = OscEncoder(cfg.scheme, cfg.mirror, speech=cfg.speech)  # one performer: no subject
        frames = [face(k, 0) for k in range(5)]
        with out:
            for f in frames:
                out.publish(f)
        got = drain(rx)
    finally:
        rx.close()
    assert got == [old.encode(f) for f in frames]


@pytest.mark.parametrize("fmt", ["json", "livelink"])
def test_one_performer_zmq_is_byte_identical_to_the_old_encoder(fmt: str) -> None:
    cfg = OutputConfig(kind="zmq", endpoint="tcp://127.0.0.1:*", format=fmt, subject="Solo")
    old = ZmqEncoder(fmt, cfg.topic, cfg.subject, cfg.device_id, cfg.mirror)
    with build_output(cfg) as out:
        new = out.encoder
        for k in range(5):
            f = face(k, 0)
            f.text = "hi" if k == 3 else ""
            assert bytes(new.encode_view(f)) == old.encode(f)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("cfg", "served", "needle"),
    [
        (OutputConfig(kind="vrchat", listen_port=False), [(0, None), (1, "B")], "receivers know no subject"),
        (OutputConfig(kind="osc", scheme="vmc"), [(0, "A"), (1, "B")], "receivers know no subject"),
        (OutputConfig(kind="livelink"), [(0, "A"), (1, "A")], "both have subject 'A'"),
        (OutputConfig(kind="livelink", device_id="X"), [(0, "A"), (1, "B")], "leave device_id unset"),
        (OutputConfig(kind="zmq", format="livelink", device_id="X"), [(0, "A"), (1, "B")], "leave device_id"),
        (OutputConfig(kind="osc"), [(0, "A"), (1, "B/C")], "contains '/'"),
        (OutputConfig(kind="osc"), [(0, "A"), (1, "B C")], "' ' (reserved in OSC addresses)"),
    ],
)
def test_what_receivers_could_not_tell_apart_is_one_line(cfg: OutputConfig, served, needle: str) -> None:
    with pytest.raises(BridgeError) as e:
        build_output(cfg, served)
    assert needle in str(e.value) and "\n" not in str(e.value)


# --- the wire bytes of every encoder, as they were before performers ------------------------


def awkward_frames() -> list[FaceFrame]:
    """200 frames from integer arithmetic (no RNG, no libm, so the same everywhere): plain
    weights, exact halves of percentages, tiny / huge / negative numbers, NaN, +-inf, speech
    None / NaN, text with quotes and %, frame numbers past int32."""
    specials = [0.0, -0.0, 1.0, 0.5, 0.125, 1e-5, 1.2345675e-3, 0.99999997, 1e7, -3.5, 123456.5,
                1e-30, 3.4e38, float("nan"), float("inf"), float("-inf"), 0.005, 0.015, 0.995, 1.005,
                -0.005]  # fmt: skip
    frames = []
    for k in range(200):
        ints = [(k * 7919 + i * 104729) % 100003 for i in range(61)]
        if k % 4 == 0:
            v = [n / 100003 for n in ints]
        elif k % 4 == 1:
            v = [specials[n % len(specials)] for n in ints]
        elif k % 4 == 2:
            v = [(n % 201) / 200 for n in ints]  # percentages that end in .5
        else:
            v = [float(f"{'-' if n % 3 == 0 else ''}{n % 1000}e{n % 17 - 9}") for n in ints]
        head = [(n % 2001 - 1000) / 1000 for n in ints[52:]]
        if k % 13 == 0:
            head[k % 9] = specials[13 + k % 3]
        speech = [None, 0.25, float("nan"), 0.123456, ints[0] / 100003][k % 5]
        text = ["", "", 'HE SAID "HI"', "Ä%s"][k % 4]
        number = [k, 2**31 + k, -k, 10**6 + k][k % 4]
        frames.append(FaceFrame(number, np.array(v[:52], dtype=np.float32), 0.0,
                                np.array(head, dtype=np.float32), "x", speech, text))  # fmt: skip
    return frames


#: sha256 (first 16 hex digits) of each encoder's packets for :func:`awkward_frames`, as the
#: encoders wrote them before outputs served several performers (main at 4ceaaf4).
WIRE_DIGESTS = {
    'livelink mirror=False': '68e2e79058ca44fa',
    'osc arkit mirror=False': '08bcba015eff1fcb',
    'osc arkit speech mirror=False': '1a9a9b1e7000d165',
    'osc vmc mirror=False': '956a042bf24e1978',
    'zmq json mirror=False': 'd1ce33231863c00e',
    'zmq livelink mirror=False': '5d6f9b3a8eaeb0e0',
    'ifacialmocap v1 mirror=False': 'c7b4ecf616dc9898',
    'ifacialmocap v2 mirror=False': '795d4a118c62ff54',
    'console mirror=False': 'fa85d78e3f0f9ce6',
    'console int reversed mirror=False': '530e4b8dc7838079',
    'console on change mirror=False': '92f2351144cdfabc',
    'vrchat arkit mirror=False': '6062af312b9c0a7d',
    'livelink mirror=True': '9413a3f407262f7d',
    'osc arkit mirror=True': '09b02f5ea7d8b327',
    'osc arkit speech mirror=True': '208f6b4351390ce4',
    'osc vmc mirror=True': 'cde99ed96b6c5544',
    'zmq json mirror=True': '0e69e8115dda1295',
    'zmq livelink mirror=True': '11bb7ea78c19cab4',
    'ifacialmocap v1 mirror=True': 'fd6043ad0a0573eb',
    'ifacialmocap v2 mirror=True': '16cf0448ce363300',
    'console mirror=True': '90e87e79b685be28',
    'console int reversed mirror=True': '7dd3465f2641b5d4',
    'console on change mirror=True': 'c935d779dc7491bd',
    'vrchat arkit mirror=True': 'cdbdcaec625ac80b',
}


def encoders_as_before() -> dict:
    from bridge.outputs import ConsoleEncoder, IFacialMocapEncoder, VrchatEncoder

    out = {}
    for m in (False, True):
        out[f"livelink mirror={m}"] = LiveLinkEncoder("Ana", "A" * 36, m).encode
        out[f"osc arkit mirror={m}"] = OscEncoder("arkit", m).encode
        out[f"osc arkit speech mirror={m}"] = OscEncoder("arkit", m, speech=True).encode
        out[f"osc vmc mirror={m}"] = OscEncoder("vmc", m).encode
        out[f"zmq json mirror={m}"] = ZmqEncoder("json", "t%s", 'Ä "quoted" %d 100%', None, m).encode
        out[f"zmq livelink mirror={m}"] = ZmqEncoder("livelink", "a2e", "A2EBridge", "B" * 36, m).encode
        out[f"ifacialmocap v1 mirror={m}"] = IFacialMocapEncoder(m, "v1").encode
        out[f"ifacialmocap v2 mirror={m}"] = IFacialMocapEncoder(m, "v2").encode
        out[f"console mirror={m}"] = ConsoleEncoder(mirror=m).encode_packets
        out[f"console int reversed mirror={m}"] = ConsoleEncoder(
            value_range=(100, -20), value_type="int", mirror=m).encode_packets  # fmt: skip
        on_change = ConsoleEncoder(value_range=(0, 10), send_on_change=True, threshold=0.01, bundle=True,
                                   mirror=m)  # fmt: skip
        out[f"console on change mirror={m}"] = on_change.encode_packets
        out[f"vrchat arkit mirror={m}"] = VrchatEncoder("arkit", mirror=m).encode_packets
    return out


def wire_digests() -> dict[str, str]:
    import hashlib

    frames = awkward_frames()
    digests = {}
    with np.errstate(all="ignore"):
        for name, encode in encoders_as_before().items():
            h = hashlib.sha256()
            for f in frames:
                got = encode(f)
                for packet in got if isinstance(got, list) else [got]:
                    h.update(len(packet).to_bytes(4, "big") + bytes(packet))
            digests[name] = h.hexdigest()[:16]
    return digests


def test_every_encoder_sends_the_bytes_it_sent_before(monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.clock import wall_clock

    # capture times go out as time of day (osc arkit /arkit/time, zmq json capture_time): fix the day
    monkeypatch.setattr(wall_clock(), "offset", 1_800_000_000.0)
    assert wire_digests() == WIRE_DIGESTS
