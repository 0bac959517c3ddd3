"""Network outputs: each is a pure encoder (FaceFrame -> bytes) plus a non-blocking
transport, so the wire formats are testable without sockets and a stuck receiver never
stalls the hop loop.  :func:`build_output` turns one ``[[output]]`` table into one."""

from __future__ import annotations

from bridge.config import OutputConfig
from bridge.errors import BridgeError
from bridge.outputs.base import Encoder, MultiEncoder, Output, Transport, UdpTransport
from bridge.outputs.console import ConsoleEncoder
from bridge.outputs.ifacialmocap import IFacialMocapEncoder
from bridge.outputs.livelink import LiveLinkEncoder
from bridge.outputs.osc import OscEncoder
from bridge.outputs.tcp import TcpTransport
from bridge.outputs.vrchat import VrchatEncoder
from bridge.outputs.zmq import ZmqEncoder, ZmqPubTransport

__all__ = [
    "ConsoleEncoder",
    "Encoder",
    "IFacialMocapEncoder",
    "LiveLinkEncoder",
    "MultiEncoder",
    "OscEncoder",
    "Output",
    "TcpTransport",
    "Transport",
    "UdpTransport",
    "VrchatEncoder",
    "ZmqEncoder",
    "ZmqPubTransport",
    "build_output",
]


def build_output(cfg: OutputConfig) -> Output:
    """The encoder and transport that one output table describes (sockets opened here)."""
    port = cfg.resolved_port
    if cfg.kind == "livelink":
        enc: Encoder | MultiEncoder = LiveLinkEncoder(cfg.subject, cfg.device_id, cfg.mirror)
        return Output(f"livelink {cfg.host}:{port}", enc, UdpTransport(cfg.host, port, label="livelink"))
    if cfg.kind == "osc":
        label = f"osc {cfg.scheme}"
        enc = OscEncoder(cfg.scheme, cfg.mirror, speech=cfg.speech)
        return Output(f"{label} {cfg.host}:{port}", enc, UdpTransport(cfg.host, port, label=label))
    if cfg.kind == "zmq":
        enc = ZmqEncoder(cfg.format, cfg.topic, cfg.subject, cfg.device_id, cfg.mirror)
        transport = ZmqPubTransport(cfg.endpoint, label="zmq")
        return Output(f"zmq {cfg.format} {transport.last_endpoint}", enc, transport)
    if cfg.kind == "vrchat":
        enc = VrchatEncoder(
            cfg.names,
            cfg.prefix,
            cfg.parameters,
            cfg.rename,
            bundle=True if cfg.bundle is None else cfg.bundle,
            mirror=cfg.mirror,
        )
        label = f"vrchat {cfg.names}"
        return Output(f"{label} {cfg.host}:{port}", enc, UdpTransport(cfg.host, port, label=label))
    if cfg.kind == "ifacialmocap":
        enc = IFacialMocapEncoder(cfg.mirror)
        return Output(
            f"ifacialmocap {cfg.host}:{port}", enc, UdpTransport(cfg.host, port, label="ifacialmocap")
        )
    if cfg.kind == "console":
        enc = ConsoleEncoder(
            cfg.channels,
            cfg.rename,
            cfg.address,
            cfg.range,
            cfg.value_type,
            send_on_change=cfg.send_on_change,
            threshold=cfg.threshold,
            keepalive_s=cfg.keepalive_s,
            bundle=bool(cfg.bundle),
            mirror=cfg.mirror,
        )
        label = f"console {cfg.transport}"
        if cfg.transport == "tcp":
            tcp = TcpTransport(cfg.host, port, framing=cfg.framing, label=label)
            return Output(f"{label} {cfg.host}:{port}", enc, tcp)
        return Output(f"{label} {cfg.host}:{port}", enc, UdpTransport(cfg.host, port, label=label))
    raise BridgeError(
        f"output kind {cfg.kind!r} is not known; allowed: livelink, osc, zmq, vrchat, ifacialmocap, console"
    )
