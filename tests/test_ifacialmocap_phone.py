"""iFacialMocap as real receivers use it (receivers.md), over real loopback sockets: a reader
that drops the first field, receivers that send the app's start string from their own
socket and read the stream (v1 ``-`` or v2 ``&``), and requesters that stop or go away.

Requesters on one machine are told apart by IP, as the app does, so each test requester
lives on its own loopback address (127.0.0.2, 127.0.0.3: Linux routes all of 127/8 to lo)."""

from __future__ import annotations

import logging
import socket
import time

import numpy as np
import pytest

from bridge.blendshapes import ARKIT_NAMES
from bridge.config import OutputConfig, parse_config
from bridge.errors import BridgeError
from bridge.frame import FaceFrame
from bridge.outputs import build_output
from bridge.outputs.base import UdpTransport
from bridge.outputs.ifacialmocap import IFACIALMOCAP_NAMES, IFacialMocapEncoder
from bridge.outputs.ifacialmocap_phone import (
    START_STRING,
    STOP_STRING,
    TCP_START_STRING,
    IFacialMocapOutput,
    Phone,
    parse_request,
)
from tests.decoders import ifacialmocap_v2_fields, vrcft_ifacialmocap_fields

V2_START = (START_STRING + "|sendDataVersion=v2").encode()


def make_frame(k: int) -> FaceFrame:
    """Frame k: every channel a distinct weight, a whole percentage, changing with k."""
    values = (((np.arange(52) + 7 * k) % 97 + 1) / 100).astype(np.float32)
    return FaceFrame(number=k, values=values, capture_time=0.0, head=np.zeros(9, np.float32), subject="t")


def percent(frame: FaceFrame) -> dict[str, float]:
    """The frame as iFacialMocap names -> 0..100."""
    return {IFACIALMOCAP_NAMES[i]: round(float(frame.values[i]) * 100) for i in range(52)}


def udp(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((host, port))
    s.settimeout(1.0)
    return s


def drain(s: socket.socket, wait: float = 0.2) -> list[bytes]:
    s.settimeout(wait)
    out = []
    try:
        while True:
            out.append(s.recv(8192))
    except TimeoutError:
        return out


def phone_output(dest: socket.socket, **phone_kw: object) -> IFacialMocapOutput:
    """The output with its phone on an ephemeral loopback port (the builder takes the same
    path with the configured port; see test_builder_listens_where_configured)."""
    listener = udp()
    listener.settimeout(None)
    phone = Phone(listener, **phone_kw)  # type: ignore[arg-type]
    transport = UdpTransport("127.0.0.1", dest.getsockname()[1], label="ifacialmocap")
    return IFacialMocapOutput("ifacialmocap test", False, transport, phone)


def free_port_on(*hosts: str) -> int:
    """A UDP port free on every one of ``hosts`` (checked by binding it on each)."""
    for _ in range(50):
        probe = udp(hosts[0])
        port = probe.getsockname()[1]
        others = []
        try:
            for h in hosts[1:]:
                others.append(udp(h, port))
        except OSError:
            continue
        finally:
            probe.close()
            for o in others:
                o.close()
        return port
    raise RuntimeError("no common free port")


# --- the datagram ----------------------------------------------------------------------------


def test_reader_that_drops_the_first_field_gets_all_52_shapes() -> None:
    rx = udp()
    frames = [make_frame(k) for k in range(5)]
    try:
        with build_output(
            OutputConfig(kind="ifacialmocap", port=rx.getsockname()[1], listen_port=False)
        ) as out:
            for f in frames:
                out.publish(f)
            got = [vrcft_ifacialmocap_fields(rx.recv(8192)) for _ in frames]
    finally:
        rx.close()
    for f, shapes in zip(frames, got, strict=True):
        assert shapes == percent(f)  # all 52, eyeBlink_L included; the lead field was the one dropped
        assert "eyeBlink_L" in shapes and "hapihapi" not in shapes


def test_v2_datagram_is_v1_with_ampersands() -> None:
    f = make_frame(3)
    v1, v2 = IFacialMocapEncoder(version="v1").encode(f), IFacialMocapEncoder(version="v2").encode(f)
    assert v1.startswith(b"hapihapi-0|eyeBlink_L-") and v2.startswith(b"hapihapi&0|eyeBlink_L&")
    assert v1.split(b"=", 1)[1] == v2.split(b"=", 1)[1]  # identical bones
    assert ifacialmocap_v2_fields(v2) == {"hapihapi": 0.0, **percent(f)}
    assert ifacialmocap_v2_fields(v1) == {}  # a v2-only reader gets nothing from v1: why asking matters


def test_parse_request() -> None:
    assert parse_request(START_STRING.encode()) == ("start", "v1")
    assert parse_request(V2_START) == ("start", "v2")
    assert parse_request(V2_START + b"\n") == ("start", "v2")
    assert parse_request((START_STRING + "|sendDataVersion=v1").encode()) == ("start", "v1")
    assert parse_request(STOP_STRING.encode()) == ("stop", "")
    assert parse_request((TCP_START_STRING + "|sendDataVersion=v2").encode()) == ("tcp", "")
    assert parse_request(START_STRING.encode() + b"x") == ("unknown", "")
    assert parse_request(b"\xff\xfe junk") == ("unknown", "")


# --- being the phone -------------------------------------------------------------------------


def test_v1_and_v2_requesters_at_once_and_the_configured_destination(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.outputs.ifacialmocap_phone")
    port = free_port_on("127.0.0.2", "127.0.0.3")
    dest, v2_rx, v1_rx = udp(), udp("127.0.0.2", port), udp("127.0.0.3", port)
    out = phone_output(dest, reply_port=port)
    phone_addr = out.phone.address  # type: ignore[union-attr]
    frames = [make_frame(k) for k in range(12)]
    try:
        out.publish(frames[0])  # nobody asked yet: only the configured destination
        v2_rx.sendto(V2_START, phone_addr)  # each from its own socket, as receivers do
        v1_rx.sendto(START_STRING.encode(), phone_addr)
        time.sleep(0.05)
        for f in frames[1:]:
            out.publish(f)
        got_v2, got_v1, got_dest = drain(v2_rx), drain(v1_rx), drain(dest)
        stats = out.stats()
    finally:
        out.close()
        for s in (dest, v2_rx, v1_rx):
            s.close()
    assert [ifacialmocap_v2_fields(d) for d in got_v2] == [
        {"hapihapi": 0.0, **percent(f)} for f in frames[1:]
    ]
    assert all(d.startswith(b"hapihapi-0|") for d in got_v1)
    assert [vrcft_ifacialmocap_fields(d) for d in got_v1] == [percent(f) for f in frames[1:]]
    assert [vrcft_ifacialmocap_fields(d) for d in got_dest] == [percent(f) for f in frames]
    assert stats["requesters"] == 2 and stats["requests"] == 2 and stats["replies_sent"] == 22
    assert stats["sent"] == 12 and stats["errors"] == 0 == stats["reply_errors"]
    started = [r.getMessage() for r in caplog.records if "streaming" in r.getMessage()]
    assert started == [f"ifacialmocap output: streaming v2 to 127.0.0.2:{port}",
                       f"ifacialmocap output: streaming v1 to 127.0.0.3:{port}"]  # fmt: skip


def test_reply_port_zero_answers_the_socket_that_asked() -> None:
    dest, rx = udp(), udp()
    out = phone_output(dest, reply_port=0)
    try:
        rx.sendto(V2_START, out.phone.address)  # type: ignore[union-attr]
        time.sleep(0.05)
        f = make_frame(1)
        out.publish(f)
        assert ifacialmocap_v2_fields(rx.recv(8192)) == {"hapihapi": 0.0, **percent(f)}
        rx.sendto(START_STRING.encode(), out.phone.address)  # type: ignore[union-attr]  # asks again, v1 now
        time.sleep(0.05)
        out.publish(f)
        assert vrcft_ifacialmocap_fields(rx.recv(8192)) == percent(f)
        assert out.stats()["requesters"] == 1 and out.stats()["requests"] == 2
    finally:
        out.close()
        dest.close()
        rx.close()


def test_a_requester_at_the_configured_destination_gets_one_stream() -> None:
    rx = udp()
    port = rx.getsockname()[1]
    listener = udp()
    transport = UdpTransport("127.0.0.1", port, label="ifacialmocap")
    out = IFacialMocapOutput("t", False, transport, Phone(listener, reply_port=port))
    try:
        rx.sendto(V2_START, listener.getsockname())
        time.sleep(0.05)
        for k in range(3):
            out.publish(make_frame(k))
        got = drain(rx)
    finally:
        out.close()
        rx.close()
    assert len(got) == 3 and all(d.startswith(b"hapihapi&0|") for d in got)  # v2 only, no v1 copy


def test_silent_requester_is_dropped_after_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bridge.outputs.ifacialmocap_phone")
    dest, quiet, chatty = udp(), udp(), udp()
    out = phone_output(dest, reply_port=0, timeout_s=0.4)
    addr = out.phone.address  # type: ignore[union-attr]
    quiet_port = quiet.getsockname()[1]
    try:
        quiet.sendto(START_STRING.encode(), addr)  # asks once
        start = time.monotonic()
        k = 0
        while time.monotonic() - start < 1.0:
            chatty.sendto(START_STRING.encode(), addr)  # keeps asking, every frame
            out.publish(make_frame(k))
            k += 1
            time.sleep(1 / 30)
        got_quiet, got_chatty = drain(quiet), drain(chatty)
        stats = out.stats()
    finally:
        out.close()
        for s in (dest, quiet, chatty):
            s.close()
    assert stats["requesters"] == 1 and stats["requesters_dropped"] == 1
    assert 3 <= len(got_quiet) < len(got_chatty) == k  # served until the timeout, then not
    dropped = [r.getMessage() for r in caplog.records if "stopped streaming" in r.getMessage()]
    assert len(dropped) == 1 and f":{quiet_port} after " in dropped[0]
    assert "no start string for 0.4 s" in dropped[0]


def test_default_keeps_a_requester_that_asked_once() -> None:
    """talking-head-anime-3 and the app's own example ask once: no timeout by default."""
    assert OutputConfig(kind="ifacialmocap").request_timeout_s == 0
    dest, rx = udp(), udp()
    out = phone_output(dest, reply_port=0)
    try:
        rx.sendto(START_STRING.encode(), out.phone.address)  # type: ignore[union-attr]
        time.sleep(0.05)
        out.phone.poll(time.monotonic())  # type: ignore[union-attr]
        out.phone.poll(time.monotonic() + 3600)  # an hour without asking again # type: ignore[union-attr]
        out.publish(make_frame(0))
        assert len(drain(rx)) == 1
    finally:
        out.close()
        dest.close()
        rx.close()


def test_stop_string_and_closed_port_drop_the_requester(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bridge.outputs.ifacialmocap_phone")
    dest, stopper, leaver = udp(), udp(), udp()
    out = phone_output(dest, reply_port=0)
    addr = out.phone.address  # type: ignore[union-attr]
    try:
        stopper.sendto(START_STRING.encode(), addr)
        leaver.sendto(START_STRING.encode(), addr)
        time.sleep(0.05)
        out.publish(make_frame(0))
        assert out.stats()["requesters"] == 2
        stopper.sendto(STOP_STRING.encode(), addr)
        leaver.close()  # goes away without a word: its port now answers ICMP port unreachable
        time.sleep(0.05)
        for k in range(1, 40):
            out.publish(make_frame(k))
        stats = out.stats()
    finally:
        out.close()
        dest.close()
        stopper.close()
    assert stats["requesters"] == 0 and stats["requesters_dropped"] == 2
    assert stats["sent"] == 40  # the configured destination never noticed
    why = sorted(r.getMessage().rsplit(": ", 1)[1] for r in caplog.records if "stopped" in r.getMessage())
    assert why == ["it sent the stop string", "its port is closed (ICMP port unreachable)"]


def test_other_datagrams_are_counted_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    dest, noisy = udp(), udp()
    out = phone_output(dest)
    addr = out.phone.address  # type: ignore[union-attr]
    try:
        for _ in range(100):
            noisy.sendto(b"not a start string", addr)
        noisy.sendto(TCP_START_STRING.encode(), addr)
        noisy.sendto(TCP_START_STRING.encode(), addr)
        time.sleep(0.05)
        for k in range(4):  # at most 64 datagrams are read per frame: a flood costs a bounded slice
            out.publish(make_frame(k))
        stats = out.stats()
    finally:
        out.close()
        dest.close()
        noisy.close()
    assert stats["ignored_datagrams"] == 102 and stats["requesters"] == 0 and stats["sent"] == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("TCP mode" in w for w in warnings) and any(
        "no iFacialMocap start string" in w for w in warnings
    )


# --- configuration and the builder -----------------------------------------------------------


def test_builder_listens_where_configured() -> None:
    rx, held = udp(), udp()
    port = held.getsockname()[1]
    held.close()  # a port that was free a moment ago
    cfg = parse_config({"output": [{"kind": "ifacialmocap", "port": rx.getsockname()[1], "listen_port": port,
                                    "reply_port": 0}]}).outputs[0]  # fmt: skip
    out = build_output(cfg)
    try:
        assert isinstance(out, IFacialMocapOutput) and out.phone is not None
        assert out.phone.address[1] == port and out.name == f"ifacialmocap 127.0.0.1:{rx.getsockname()[1]}"
        asker = udp()
        asker.sendto(V2_START, ("127.0.0.1", port))
        time.sleep(0.05)
        out.publish(make_frame(0))
        assert asker.recv(8192).startswith(b"hapihapi&0|")
        asker.close()
    finally:
        out.close()
        rx.close()


def test_listen_port_taken(caplog: pytest.LogCaptureFixture) -> None:
    taken = udp("0.0.0.0")
    port = taken.getsockname()[1]
    try:
        with pytest.raises(BridgeError) as err:
            build_output(OutputConfig(kind="ifacialmocap", listen_port=port))
        msg = str(err.value)
        assert (
            "\n" not in msg and f"cannot listen on UDP 0.0.0.0:{port}" in msg and "output.listen_port" in msg
        )
    finally:
        taken.close()
    # The default port held by another program (e.g. a receiver on this machine): a warning, and it runs.
    try:
        blocker = udp("0.0.0.0", 49983)
    except OSError:
        blocker = None  # somebody already has it: the same situation
    try:
        with build_output(OutputConfig(kind="ifacialmocap", port=port)) as out:
            assert isinstance(out, IFacialMocapOutput) and out.phone is None
            out.publish(make_frame(0))
            assert out.stats() == {"sent": 1, "errors": 0}
        assert any("so it answers no start strings" in r.getMessage() for r in caplog.records)
    finally:
        if blocker is not None:
            blocker.close()


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({"listen_port": 70000}, r"output\[0\]\.listen_port = 70000 must be a port number"),
        ({"listen_port": "x"}, r"output\[0\]\.listen_port = 'x' is not allowed"),
        ({"reply_port": -1}, r"output\[0\]\.reply_port = -1 must be a port number"),
        ({"request_timeout_s": -1}, r"output\[0\]\.request_timeout_s = -1 must be >= 0"),
        ({"avatar_config": "a.json"}, r"unknown key output\[0\]\.avatar_config"),
    ],
)
def test_config_errors_are_one_line(table: dict[str, object], match: str) -> None:
    with pytest.raises(BridgeError, match=match) as err:
        parse_config({"output": [{"kind": "ifacialmocap", **table}]}, "c.toml")
    assert "\n" not in str(err.value)


def test_config_listen_port_values() -> None:
    def listen(v: object) -> tuple[int, bool]:
        doc = {
            "output": [{"kind": "ifacialmocap"} if v is None else {"kind": "ifacialmocap", "listen_port": v}]
        }
        return parse_config(doc).outputs[0].resolved_listen_port

    assert listen(None) == (49983, False) and listen(True) == (49983, False)
    assert listen(False) == (0, True) and listen(0) == (0, True) and listen(50000) == (50000, True)
    assert OutputConfig(kind="vrchat").resolved_listen_port == (9001, False)
    assert ARKIT_NAMES[0] == "eyeBlinkLeft" and IFACIALMOCAP_NAMES[0] == "eyeBlink_L"
