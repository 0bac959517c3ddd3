"""Outputs say when their receiver cannot be reached, once, and again when it is back; the
state is readable (``Output.health()``) and in the progress line.  Real sockets on loopback:
a TCP output with no server and then python-osc's TCP server; a UDP output to a closed port
(the kernel's ICMP "port unreachable") and then a bound socket."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bridge.config import OutputConfig, parse_config
from bridge.engine import Bridge
from bridge.frame import FaceFrame
from bridge.outputs import ConsoleEncoder, Output, TcpTransport, UdpTransport, build_output
from bridge.outputs.base import Health, describe_health
from tests.receivers import LiveLinkReceiver
from tests.test_outputs_receivers import TcpOscReceiver, free_port


def frame(k: int) -> FaceFrame:
    values = np.full(52, (k % 10) / 10, np.float32)
    return FaceFrame(number=k, values=values, capture_time=0.0, head=np.zeros(9, np.float32))


def lines(caplog: pytest.LogCaptureFixture, name: str, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"output {name}: {text}")]


def publish_until(out: Output, done: Callable[[], bool], timeout: float, start: int = 0) -> int:
    """Publish a frame every 5 ms until ``done()`` (or ``timeout``); return the next frame number."""
    k, deadline = start, time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        t0 = time.perf_counter()
        out.publish(frame(k))
        assert time.perf_counter() - t0 < 0.05  # never blocks the hop loop, whatever the state
        k += 1
        time.sleep(0.005)
    return k


def test_tcp_output_without_server_says_unreachable_once_then_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bridge.outputs")
    port = free_port()
    out = Output(f"console tcp 127.0.0.1:{port}", ConsoleEncoder(),
                 TcpTransport("127.0.0.1", port, backoff=(0.02, 0.2)))  # fmt: skip
    name = out.name
    rx = None
    try:
        assert out.health().state == "unknown"
        k = publish_until(out, lambda: out.health().state == "unreachable", timeout=3.0)
        k = publish_until(out, lambda: False, timeout=0.5, start=k)  # keeps failing: said once
        h = out.health()
        assert h.state == "unreachable" and h.error == "connect: ECONNREFUSED" and h.changes == 1
        assert out.stats()["connects"] == 0 and out.stats()["errors"] >= 2
        said = lines(caplog, name, "receiver unreachable")
        assert said == [f"output {name}: receiver unreachable (connect: ECONNREFUSED); "
                        "its frames are dropped until it is back"]  # fmt: skip
        assert describe_health([out]) == f"{name} unreachable (connect: ECONNREFUSED)"

        rx = TcpOscReceiver("1.1", port)
        publish_until(out, lambda: len(rx.messages) >= 52, timeout=5.0, start=k)
        assert len(rx.messages) >= 52 and rx.messages[0][0].startswith("/face/")
        assert out.health().state == "ok" and out.health().changes == 2
        back = lines(caplog, name, "receiver reachable again after")
        assert len(back) == 1 and len(lines(caplog, name, "receiver unreachable")) == 1
        assert describe_health([out]) == f"{name} ok"
    finally:
        out.close()
        if rx is not None:
            rx.close()


def free_udp_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((host, 0))
    except OSError:
        pytest.skip(f"no {host} on this machine")
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_udp_output_to_closed_loopback_port_says_unreachable_once_then_back(
    caplog: pytest.LogCaptureFixture, host: str
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.outputs")
    port = free_udp_port(host)
    out = build_output(OutputConfig(kind="livelink", host=host, port=port))
    name = out.name
    rx = None
    try:
        k = publish_until(out, lambda: out.health().state == "unreachable", timeout=2.0)
        k = publish_until(out, lambda: False, timeout=0.7, start=k)  # refused all along: no flapping
        h = out.health()
        # unknown -> ok (the first datagram leaves) -> unreachable (the ICMP answer to it)
        assert h.state == "unreachable" and h.error == "ECONNREFUSED" and h.changes == 2
        assert out.stats()["errors"] >= 10
        assert len(lines(caplog, name, "receiver unreachable (ECONNREFUSED)")) == 1

        rx = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind((host, port))
        rx.settimeout(0.0)
        t0 = time.monotonic()
        publish_until(out, lambda: out.health().state == "ok", timeout=5.0, start=k)
        assert time.monotonic() - t0 >= UdpTransport.RECOVER_S - 0.1  # not at the first good send
        assert out.health().state == "ok" and out.health().changes == 3
        assert len(lines(caplog, name, "receiver reachable again after")) == 1
        assert len(rx.recv(4096)) > 200  # packets arrive: a Live Link packet
    finally:
        out.close()
        if rx is not None:
            rx.close()


def test_udp_output_with_a_receiver_is_ok_and_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bridge.outputs")
    rx = LiveLinkReceiver()
    out = build_output(OutputConfig(kind="livelink", port=rx.port))
    try:
        assert out.health().state == "unknown"
        for k in range(20):
            out.publish(frame(k))
        assert out.health().state == "ok" and out.stats() == {"sent": 20, "errors": 0}
    finally:
        out.close()
        rx.close()
    assert len(rx.packets) == 20 and not caplog.records


def test_zmq_is_ok_once_bound_and_transports_without_health_are_unknown() -> None:
    out = build_output(OutputConfig(kind="zmq", endpoint="tcp://127.0.0.1:*"))
    try:
        assert out.health().state == "ok"
    finally:
        out.close()

    class Bare:
        def send(self, data: object) -> None: ...

        def close(self) -> None: ...

        def stats(self) -> dict[str, int]:
            return {}

    assert Output("bare", ConsoleEncoder(), Bare()).health() == Health("unknown")


def test_progress_line_carries_each_outputs_state(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Through the bridge: a live Live Link receiver and a console whose TCP server is down."""
    wav = tmp_path / "s.wav"
    soundfile.write(str(wav), np.zeros(16000, np.float32), 16000)
    ll, dead = LiveLinkReceiver(), free_port()
    cfg = parse_config({
        "input": {"kind": "file", "file": str(wav), "realtime": False},
        "model": {"preset": "oracle", "providers": ["cpu"], "threads": 1, "fallback": ""},
        "output": [{"kind": "livelink", "port": ll.port},
                   {"kind": "console", "transport": "tcp", "port": dead}],
    }, "t.toml")  # fmt: skip
    bridge = Bridge(cfg)
    try:
        bridge.run()
        deadline = time.monotonic() + 3.0
        while bridge.outputs[1].health().state != "unreachable" and time.monotonic() < deadline:
            time.sleep(0.01)
        caplog.set_level(logging.INFO, logger="bridge.engine")
        bridge._log_status()
        logged = [r.getMessage() for r in caplog.records if r.name == "bridge.engine"]
    finally:
        bridge.close()
        ll.close()
    assert logged and logged[-1].endswith(
        f"; outputs: livelink 127.0.0.1:{ll.port} ok, "
        f"console tcp 127.0.0.1:{dead} unreachable (connect: ECONNREFUSED)"
    )
