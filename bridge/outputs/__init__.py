"""Network outputs: each is a pure encoder (FaceFrame -> bytes) plus a non-blocking
transport, so the wire formats are testable without sockets and a stuck receiver never
stalls the hop loop.  :func:`build_output` turns one ``[[output]]`` table into one."""

from __future__ import annotations

from bridge.config import OutputConfig
from bridge.errors import BridgeError
from bridge.outputs.base import Encoder, Output, Transport, UdpTransport
from bridge.outputs.livelink import LiveLinkEncoder
from bridge.outputs.osc import OscEncoder
from bridge.outputs.zmq import ZmqEncoder, ZmqPubTransport

__all__ = [
    "Encoder",
    "LiveLinkEncoder",
    "OscEncoder",
    "Output",
    "Transport",
    "UdpTransport",
    "ZmqEncoder",
    "ZmqPubTransport",
    "build_output",
]


def build_output(cfg: OutputConfig) -> Output:
    """The encoder and transport that one output table describes (sockets opened here)."""
    if cfg.kind == "livelink":
        port = cfg.resolved_port
        enc: Encoder = LiveLinkEncoder(cfg.subject, cfg.device_id, cfg.mirror)
        return Output(f"livelink {cfg.host}:{port}", enc, UdpTransport(cfg.host, port, label="livelink"))
    if cfg.kind == "osc":
        port = cfg.resolved_port
        label = f"osc {cfg.scheme}"
        enc = OscEncoder(cfg.scheme, cfg.mirror)
        return Output(f"{label} {cfg.host}:{port}", enc, UdpTransport(cfg.host, port, label=label))
    if cfg.kind == "zmq":
        enc = ZmqEncoder(cfg.format, cfg.topic, cfg.subject, cfg.device_id, cfg.mirror)
        transport = ZmqPubTransport(cfg.endpoint, label="zmq")
        return Output(f"zmq {cfg.format} {transport.last_endpoint}", enc, transport)
    raise BridgeError(f"output kind {cfg.kind!r} is not known; allowed: livelink, osc, zmq")
