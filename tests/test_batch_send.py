"""Whole batches (Output.publish_batch) send exactly what frame-by-frame publishing sends.

Each case builds two outputs of one config over real loopback sockets (UDP receivers, a
ZeroMQ SUB): one on the batch path (bridge/outputs/batch.py: numpy-patched packets, one
sendmmsg), one with its batch path removed, which is then fed the same batch frame by
frame, in the batch path's order (every performer's frame f before frame f + 1).  The
received bytes must be identical, packet for packet, in order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time

import numpy as np
import pytest
import zmq

from bridge.config import OutputConfig
from bridge.frame import FrameBatch
from bridge.outputs import base, build_output
from bridge.outputs.base import Output, UdpTransport
from bridge.outputs.packet_table import PacketTable
from bridge.outputs.udp_batch import MultiSender, multi_sender
from tests.decoders import decode_livelink, decode_osc_bundle
from tests.receivers import wait_connected


@pytest.fixture(autouse=True)
def small_batches_through_the_batch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches under BATCH_MIN_FRAMES go frame by frame (cheaper there); these tests check the
    batch encoders and sends themselves, on small batches too."""
    monkeypatch.setattr(base, "BATCH_MIN_FRAMES", 1)


def make_batch(rows: int, stride: int, *, first: int = 100, speech: bool = True, text: bool = True,
               performers: list[int] | None = None, seed: int = 0) -> FrameBatch:  # fmt: skip
    rng = np.random.default_rng(seed)
    now = time.monotonic()
    capture = now - 0.05 + np.arange(stride)[None, :] / 30 + rng.random((rows, 1)) * 1e-3
    return FrameBatch(
        performers=np.array(performers if performers is not None else range(rows), dtype=np.intp),
        first=first + rng.integers(0, 5, rows).astype(np.int64),
        values=rng.random((rows, stride, 52), dtype=np.float32),
        head=((rng.random((rows, stride, 9), dtype=np.float32) - 0.5) * 0.2),
        capture_time=capture,
        subjects=[f"P{i}" for i in range(rows)],
        speech_prob=rng.random((rows, stride), dtype=np.float32) if speech else None,
        texts=[("hé \"x\"" if i % 2 else "") for i in range(rows)] if text else None,
        sent_at=now,
    )


class UdpSink:
    """A loopback UDP socket that keeps every datagram (big buffer, read after sending)."""

    def __init__(self, family: int = socket.AF_INET, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]

    def take(self, n: int, timeout: float = 2.0) -> list[bytes]:
        out: list[bytes] = []
        self.sock.settimeout(timeout)
        with contextlib.suppress(TimeoutError):
            while len(out) < n:
                out.append(self.sock.recv(65536))
        self.sock.settimeout(0.05)
        with contextlib.suppress(TimeoutError):  # anything beyond n is a failure too
            while True:
                out.append(self.sock.recv(65536))
        return out

    def close(self) -> None:
        self.sock.close()


def reference(out: Output, batch: FrameBatch) -> None:
    """The frame-by-frame path, frame-major."""
    for f in range(batch.stride):
        for i in range(len(batch.performers)):
            out.publish(batch.frame(i, f))


def served(performers: list[int], subject: bool = True) -> list[tuple[int, str | None]]:
    return [(i, f"P{i}" if subject else None) for i in performers]


def udp_pair(cfg: dict, performers: list[tuple[int, str | None]]):
    fast_rx, slow_rx = UdpSink(), UdpSink()
    fast = build_output(OutputConfig(port=fast_rx.port, **cfg), performers)
    slow = build_output(OutputConfig(port=slow_rx.port, **cfg), performers)
    assert fast.batch_sender is not None
    slow.batch_sender = None
    return fast, fast_rx, slow, slow_rx


def compare_udp(cfg: dict, performers: list[tuple[int, str | None]], batches: list[FrameBatch],
                expect: int, prepare: FrameBatch | None = None) -> list[bytes]:  # fmt: skip
    fast, fast_rx, slow, slow_rx = udp_pair(cfg, performers)
    segments = fast.transport._segments  # type: ignore[attr-defined]
    try:
        if prepare is not None:  # built before the first hop; sends nothing (take() counts)
            fast.prepare_batch(prepare)
            assert fast.batch_sender.encoder.table is not None  # type: ignore[union-attr]
        for b in batches:
            fast.publish_batch(b)
            reference(slow, b)
        assert fast.transport._segments == segments  # type: ignore[attr-defined]  # (GSO after the first batch)
        got, want = fast_rx.take(expect), slow_rx.take(expect)
        assert len(want) == expect
        assert got == want
        assert fast.stats() == slow.stats() == {"sent": expect, "errors": 0}
        assert fast.health().state == "ok"
        return got
    finally:
        for o in (fast, slow):
            o.close()
        fast_rx.close()
        slow_rx.close()


@pytest.mark.parametrize("timecode", ["stream", "system"])
@pytest.mark.parametrize("mirror", [False, True])
def test_livelink_batch_matches_frames(timecode: str, mirror: bool) -> None:
    cfg = {"kind": "livelink", "timecode": timecode, "mirror": mirror}
    batches = [make_batch(5, 2), make_batch(5, 2, first=2**31 - 1, seed=1), make_batch(5, 1, seed=2)]
    got = compare_udp(cfg, served(list(range(5))), batches, 5 * 5)
    decoded = [decode_livelink(p) for p in got]
    assert [d["subject"] for d in decoded[:10]] == [f"P{i}" for i in range(5)] * 2  # frame-major
    if timecode == "stream":
        assert decoded[5]["frame"] == int(batches[0].first[0]) + 1
        assert decoded[10]["frame"] == wrap(int(batches[1].first[0]))


def wrap(n: int) -> int:
    return ((n + 2**31) & 0xFFFFFFFF) - 2**31


def test_livelink_system_timecode_stamps_match() -> None:
    cfg = {"kind": "livelink", "timecode": "system"}
    fast, fast_rx, slow, slow_rx = udp_pair(cfg, served([0, 1, 2]))
    try:
        for seed in range(3):
            b = make_batch(3, 2, seed=seed)
            fast.publish_batch(b)
            reference(slow, b)
        for p in range(3):
            a, b = fast.encoders[p], slow.encoders[p]
            assert (a.first_stamp, a.last_stamp) == (b.first_stamp, b.last_stamp)  # type: ignore[attr-defined]
            assert a.first_stamp is not None  # type: ignore[attr-defined]
    finally:
        for o in (fast, slow):
            o.close()
        fast_rx.close()
        slow_rx.close()


def test_livelink_one_performer_default_subject() -> None:
    got = compare_udp({"kind": "livelink"}, [(0, None)], [make_batch(1, 2), make_batch(1, 2, seed=3)], 4)
    assert decode_livelink(got[0])["subject"] == OutputConfig(kind="livelink").subject


@pytest.mark.parametrize("speech", [False, True])
def test_osc_arkit_one_performer(speech: bool) -> None:
    batches = [make_batch(1, 2, speech=True), make_batch(1, 2, speech=False, seed=1)]
    got = compare_udp({"kind": "osc", "speech": speech}, [(0, None)], batches, 4)
    addresses = [a for a, _ in decode_osc_bundle(got[0])]
    assert ("/arkit/speech" in addresses) == speech
    assert addresses[-1] == "/arkit/frame"


def test_osc_arkit_several_subjects_mirror_and_wrap() -> None:
    cfg = {"kind": "osc", "speech": True, "mirror": True}
    batches = [make_batch(4, 2), make_batch(4, 2, first=2**31 - 1, seed=1)]
    got = compare_udp(cfg, [(0, "P0"), (1, "Longer_subject"), (2, "P2"), (3, "x")], batches, 16)
    assert decode_osc_bundle(got[1])[0][0] == "/arkit/Longer_subject/EyeBlinkLeft"


def test_osc_nonfinite_values_match() -> None:
    b = make_batch(2, 2)
    b.values[0, 1, 3] = np.nan
    b.values[1, 0, 7] = np.inf
    assert b.speech_prob is not None
    b.speech_prob[1, 1] = np.nan
    compare_udp({"kind": "osc", "speech": True}, served([0, 1]), [b], 4)


def test_osc_vmc() -> None:
    compare_udp({"kind": "osc", "scheme": "vmc", "mirror": True}, [(0, None)],
                [make_batch(1, 2), make_batch(1, 1, seed=1)], 3)  # fmt: skip


def test_restricted_route_sends_only_served_rows() -> None:
    batch = make_batch(6, 2, performers=[0, 1, 2, 3, 4, 9])
    got = compare_udp({"kind": "livelink"}, served([1, 3, 9]), [batch], 6)
    assert [decode_livelink(p)["subject"] for p in got] == ["P1", "P3", "P9"] * 2
    batch = make_batch(3, 2, performers=[4, 1, 0])  # other rows, other order: routing is redone
    got = compare_udp({"kind": "osc"}, served([0, 1, 7]), [batch], 4)
    assert [decode_osc_bundle(p)[0][0].split("/")[2] for p in got] == ["P1", "P0"] * 2


def test_disabled_output_sends_nothing() -> None:
    rx = UdpSink()
    out = build_output(OutputConfig(kind="livelink", port=rx.port), served([0, 1]))
    try:
        out.enabled = False
        out.publish_batch(make_batch(2, 2))
        assert rx.take(0, timeout=0.1) == []
        assert out.stats() == {"sent": 0, "errors": 0}
        out.enabled = True
        out.publish_batch(make_batch(2, 2))
        assert len(rx.take(4)) == 4
    finally:
        out.close()
        rx.close()


def test_duplicate_performer_rows_fall_back_to_frames() -> None:
    batch = make_batch(2, 1, performers=[0, 0])
    compare_udp({"kind": "livelink"}, served([0]), [batch], 2)


# ---- ZeroMQ ------------------------------------------------------------------------------


def zmq_pair(cfg: dict, performers: list[tuple[int, str | None]]):
    fast = build_output(OutputConfig(kind="zmq", endpoint="tcp://127.0.0.1:*", **cfg), performers)
    slow = build_output(OutputConfig(kind="zmq", endpoint="tcp://127.0.0.1:*", **cfg), performers)
    assert fast.batch_sender is not None
    slow.batch_sender = None
    subs = []
    for out in (fast, slow):
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.RCVTIMEO, 2000)
        sub.connect(out.transport.last_endpoint)  # type: ignore[attr-defined]
        subs.append(sub)
    wait_connected()
    return fast, slow, subs


def compare_zmq(cfg: dict, performers: list[tuple[int, str | None]], batches: list[FrameBatch],
                expect: int, prepare: FrameBatch | None = None) -> list[bytes]:  # fmt: skip
    fast, slow, (fast_sub, slow_sub) = zmq_pair(cfg, performers)
    try:
        if prepare is not None:
            fast.prepare_batch(prepare)
        for b in batches:
            fast.publish_batch(b)
            reference(slow, b)
        got = [fast_sub.recv() for _ in range(expect)]
        want = [slow_sub.recv() for _ in range(expect)]
        assert got == want
        fast_sub.setsockopt(zmq.RCVTIMEO, 100)
        with pytest.raises(zmq.Again):  # nothing more: a prepared output sent nothing of its own
            fast_sub.recv()
        assert fast.stats() == slow.stats() == {"sent": expect, "dropped": 0}
        return got
    finally:
        for s in (fast_sub, slow_sub):
            s.close(linger=0)
        fast.close()
        slow.close()


@pytest.mark.parametrize("mirror", [False, True])
def test_zmq_json_matches_frames_with_nan_and_text(mirror: bool) -> None:
    b = make_batch(3, 2)
    b.values[1, 0, 5] = np.nan
    b.values[2, 1, 0] = -np.inf
    got = compare_zmq({"mirror": mirror}, served([0, 1, 2]), [b, make_batch(3, 2, speech=False, seed=1)], 12)
    docs = [json.loads(m.split(b" ", 1)[1]) for m in got]
    assert docs[1]["values"].count(None) == 1 and None not in docs[0]["values"]
    assert docs[4]["text"] == "hé \"x\"" and docs[1]["text"] == ""  # the row's last frame only
    assert docs[0]["latency_ms"] > 0 and docs[6]["speech"] is None


def test_zmq_json_not_live_and_restricted() -> None:
    b = make_batch(4, 2, text=False)
    b.sent_at = None
    odd = 'Ä "q" 50%'  # JSON escapes, non-ASCII and a % in a subject
    got = compare_zmq({}, [(2, odd), (3, "P3")], [b], 4)
    assert [json.loads(m.split(b" ", 1)[1])["subject"] for m in got] == [odd, "P3"] * 2
    assert json.loads(got[0].split(b" ", 1)[1])["latency_ms"] is None


@pytest.mark.parametrize("cfg", [{"kind": "livelink"}, {"kind": "osc", "scheme": "arkit"}],
                         ids=["livelink", "osc"])
def test_a_prepared_udp_output_sends_nothing_then_the_same_bytes(cfg: dict) -> None:
    """``prepare_batch`` (the engine's, before the first hop) builds the packet table from a
    batch of every performer and sends nothing; what follows is byte for byte what an
    unprepared output sends."""
    blank = make_batch(4, 1, seed=9)
    compare_udp(cfg, served([0, 1, 2, 3]), [make_batch(4, 1), make_batch(4, 2, seed=1)], 12, prepare=blank)


def test_a_prepared_zmq_output_sends_nothing_then_the_same_messages() -> None:
    blank = make_batch(3, 1, seed=9)
    compare_zmq({}, served([0, 1, 2]), [make_batch(3, 1), make_batch(3, 2, speech=False, seed=1)], 9,
                prepare=blank)


def test_zmq_livelink_matches_frames() -> None:
    got = compare_zmq({"format": "livelink", "mirror": True}, served([0, 1]), [make_batch(2, 2)], 4)
    assert decode_livelink(got[0].split(b" ", 1)[1])["subject"] == "P0"


# ---- sendmmsg ----------------------------------------------------------------------------


def table_of(n: int, size: int = 1200) -> tuple[PacketTable, np.ndarray]:
    templates = [bytes([i % 251]) * size for i in range(n)]
    return PacketTable(templates, 1, {}), np.arange(n, dtype=np.intp)


def test_sendmmsg_struct_layout() -> None:
    import ctypes

    from bridge.outputs import udp_batch

    assert ctypes.sizeof(udp_batch.MMsgHdr) == udp_batch._HDR_DTYPE.itemsize
    if udp_batch._SENDMMSG is None:
        pytest.skip("no sendmmsg here: the transport loops sendto")
    assert (ctypes.sizeof(udp_batch.IoVec), ctypes.sizeof(udp_batch.MsgHdr)) == (16, 56)


def test_send_many_counts_a_full_buffer_as_errors() -> None:
    """A send buffer that fills mid-batch: the packets after it are errors, nothing raises.

    Loopback UDP cannot fill a send buffer (the kernel hands each datagram to the receiver
    during the send), so a connected AF_UNIX datagram pair stands in for the socket: its
    sender gets a real EAGAIN from the same sendmmsg once the unread receiver queue is full."""
    tx = UdpTransport("127.0.0.1", 9)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    if multi_sender(tx._sock, tx.address) is None:
        pytest.skip("no sendmmsg here")
    tx._sock.close()
    tx._sock, tx._multi, tx.hears_icmp = a, MultiSender(a, None), False
    table, order = table_of(300, 2000)
    try:
        tx.send_many(table, order)  # never raises
        assert tx.sent + tx.errors == 300
        assert 0 < tx.sent < 300 and tx.errors > 0
        assert tx.last_error in ("EAGAIN", "ENOBUFS", "EWOULDBLOCK")
        assert tx.health().state == "ok"  # a full buffer is not an absent receiver
        b.setblocking(False)
        got = []
        with contextlib.suppress(BlockingIOError):
            while True:
                got.append(b.recv(65536))
        assert got == [table.packet(int(k)) for k in order[: tx.sent]]
    finally:
        tx.close()
        b.close()


def test_send_many_to_a_closed_port_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens there now: loopback answers each packet with ICMP
    tx = UdpTransport("127.0.0.1", port, label="closed")
    table, order = table_of(40, 100)
    try:
        with caplog.at_level(logging.WARNING, logger="bridge.outputs"):
            for _ in range(3):
                tx.send_many(table, order)
        assert tx.errors > 0 and tx.sent + tx.errors == 120
        assert tx.last_error == "ECONNREFUSED"
        assert tx.health().state == "unreachable"
        assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
    finally:
        tx.close()


def test_send_many_recovers_when_the_receiver_is_back(caplog: pytest.LogCaptureFixture) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    tx = UdpTransport("127.0.0.1", port, label="back")
    tx.RECOVER_S = 0.2  # (2 s in a run; shorter here to keep the test fast)
    table, order = table_of(8, 100)
    rx = None
    try:
        with caplog.at_level(logging.INFO, logger="bridge.outputs"):
            tx.send_many(table, order)
            assert tx.health().state == "unreachable"
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx.bind(("127.0.0.1", port))
            errors = tx.errors
            deadline = time.monotonic() + 3.0
            while tx.health().state != "ok" and time.monotonic() < deadline:
                tx.send_many(table, order)
                time.sleep(0.02)
        assert tx.health().state == "ok"
        assert tx.errors - errors <= 1  # nothing refused once someone listens (one late ICMP at most)
        assert sum("reachable again" in r.getMessage() for r in caplog.records) == 1
    finally:
        tx.close()
        if rx is not None:
            rx.close()


def test_send_many_closed_port_counts_like_sendto() -> None:
    """Batch and single sends to a closed loopback port count the same refusals."""
    counts = []
    for batch in (True, False):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        tx = UdpTransport("127.0.0.1", port)
        table, order = table_of(20, 100)
        if batch:
            tx.send_many(table, order)
        else:
            for k in order:
                tx.send(table.packet(int(k)))
        counts.append(tx.stats())
        tx.close()
    assert counts[0] == counts[1]


def test_send_many_ipv6() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        rx = UdpSink(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no ::1 here")
    tx = UdpTransport("::1", rx.port)
    table, order = table_of(10, 200)
    try:
        tx.send_many(table, order[::-1].copy())
        assert rx.take(10) == [table.packet(int(k)) for k in order[::-1]]
        assert tx.stats() == {"sent": 10, "errors": 0}
    finally:
        tx.close()
        rx.close()


def test_send_many_without_sendmmsg_loops_sendto() -> None:
    """Where sendmmsg is missing (not Linux) the same packets go with sendto; the missing
    syscall is simulated by not building the sender (a stand-in for another platform)."""
    rx = UdpSink()
    tx = UdpTransport("127.0.0.1", rx.port)
    tx._multi = None
    table, order = table_of(5, 64)
    try:
        tx.send_many(table, order)
        assert rx.take(5) == [table.packet(k) for k in range(5)]
        assert tx.stats() == {"sent": 5, "errors": 0}
    finally:
        tx.close()
        rx.close()


def test_multi_sender_gives_up_on_other_families() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        assert multi_sender(a, ("x",)) is None
    finally:
        a.close()
        b.close()


# ---- segmented sends (UDP GSO) --------------------------------------------------------


class CallSpy:
    """Records how many messages each sendmmsg call carried; the real libc call still runs
    (a spy, not a mock: the kernel sends every packet the test then receives)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from bridge.outputs import udp_batch

        self.calls: list[int] = []
        real = udp_batch._SENDMMSG
        if real is None:
            pytest.skip("no sendmmsg here")

        def spy(fd: int, headers: int, count: int, flags: int) -> int:
            self.calls.append(count)
            return real(fd, headers, count, flags)

        monkeypatch.setattr(udp_batch, "_SENDMMSG", spy)


def mixed_table() -> tuple[PacketTable, np.ndarray]:
    """100 packets in runs of equal sizes (as subjects of different lengths make them)."""
    sizes = [300] * 40 + [301] * 20 + [300] * 30 + [1400] * 10
    templates = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    return PacketTable(templates, 1, {}), np.arange(len(sizes), dtype=np.intp)


def segmenting(rx: UdpSink) -> UdpTransport:
    tx = UdpTransport("127.0.0.1", rx.port)
    if not tx._segments:
        tx.close()
        pytest.skip("this kernel does not segment UDP sends")
    tx.send(b"hello")  # known reachable: segmentation is used from now on
    assert rx.take(1) == [b"hello"]
    return tx


def test_segmented_runs_arrive_as_the_same_datagrams(monkeypatch: pytest.MonkeyPatch) -> None:
    rx = UdpSink()
    tx = segmenting(rx)
    spy = CallSpy(monkeypatch)
    table, order = mixed_table()
    try:
        tx.send_many(table, order)
        assert rx.take(100) == [table.packet(k) for k in range(100)]
        assert tx.stats() == {"sent": 101, "errors": 0}
        assert spy.calls == [4]  # one call, one message per run: 40, 20, 30 and 10 packets
    finally:
        tx.close()
        rx.close()


def test_packets_too_large_to_segment_go_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    rx = UdpSink()
    tx = segmenting(rx)
    assert tx._multi is not None
    tx._multi.segment_limit = 1000  # as on a 1028-byte MTU path
    spy = CallSpy(monkeypatch)
    table, order = mixed_table()
    try:
        tx.send_many(table, order)
        assert rx.take(100) == [table.packet(k) for k in range(100)]
        assert spy.calls == [3 + 10]  # three runs, then ten 1400-byte packets alone
    finally:
        tx.close()
        rx.close()


def test_kernel_refusing_segmentation_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """More segments than the kernel takes in one send (UDP_MAX_SEGMENTS): a real EINVAL."""
    from bridge.outputs import udp_batch

    monkeypatch.setattr(udp_batch, "MAX_SEGMENTS", 4096)
    rx = UdpSink()
    tx = segmenting(rx)
    table, order = table_of(600, 16)
    try:
        tx.send_many(table, order)
        assert not tx._segments
        assert rx.take(600) == [table.packet(k) for k in range(600)]
        assert tx.stats() == {"sent": 601, "errors": 0}
    finally:
        tx.close()
        rx.close()


def test_segmented_sends_to_a_receiver_that_goes_away(caplog: pytest.LogCaptureFixture) -> None:
    rx = UdpSink()
    tx = segmenting(rx)
    rx.close()  # the port is closed now: loopback answers with ICMP
    table, order = mixed_table()
    try:
        with caplog.at_level(logging.WARNING, logger="bridge.outputs"):
            for _ in range(3):
                tx.send_many(table, order)
        assert tx.health().state == "unreachable" and tx.last_error == "ECONNREFUSED"
        assert tx.errors > 0 and tx.sent + tx.errors == 301
        assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
    finally:
        tx.close()


def test_a_packet_too_large_for_udp_is_one_error_and_segmentation_stays() -> None:
    rx = UdpSink()
    tx = segmenting(rx)
    sizes = [200] * 5 + [70_000] + [200] * 5  # no UDP datagram holds 70000 bytes: EMSGSIZE
    table = PacketTable([bytes([i]) * n for i, n in enumerate(sizes)], 1, {})
    try:
        tx.send_many(table, np.arange(len(sizes), dtype=np.intp))
        assert rx.take(10) == [table.packet(k) for k in range(11) if k != 5]
        assert tx.stats() == {"sent": 11, "errors": 1} and tx.last_error == "EMSGSIZE"
        assert tx._segments and tx.health().state == "ok"
    finally:
        tx.close()
        rx.close()


def test_a_batch_under_the_threshold_goes_frame_by_frame_with_the_same_packets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One performer's frame (the single-performer bridge) takes the frame path, whose fixed
    cost is lower; a receiver gets the same packets either way."""
    monkeypatch.setattr(base, "BATCH_MIN_FRAMES", 16)
    fast, fast_rx, slow, slow_rx = udp_pair({"kind": "livelink"}, served([0]))
    used = []
    sender = fast.batch_sender
    assert sender is not None
    publish = sender.publish

    def counted(batch: FrameBatch) -> bool:
        used.append(batch.values.shape[0] * batch.stride)
        return publish(batch)

    sender.publish = counted  # type: ignore[method-assign]
    try:
        small, big = make_batch(1, 2), make_batch(1, 16)
        for b in (small, big):
            fast.publish_batch(b)
            reference(slow, b)
        assert fast_rx.take(18) == slow_rx.take(18)
        assert used == [16]  # only the batch of 16 frames went through the batch path
    finally:
        for x in (fast, slow):
            x.close()
        fast_rx.close()
        slow_rx.close()
