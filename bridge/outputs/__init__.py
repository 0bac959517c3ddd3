"""Network outputs: each is a pure encoder (FaceFrame -> bytes) plus a non-blocking
transport, so the wire formats are testable without sockets and a stuck receiver never
stalls the hop loop.  :func:`build_output` turns one ``[[output]]`` table into one."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from bridge.config import OutputConfig
from bridge.errors import BridgeError
from bridge.outputs.base import Encoder, MultiEncoder, Output, Transport, UdpTransport, bind_udp_listener
from bridge.outputs.console import ConsoleEncoder
from bridge.outputs.ifacialmocap import IFacialMocapEncoder
from bridge.outputs.ifacialmocap_phone import IFacialMocapOutput, Phone
from bridge.outputs.livelink import LiveLinkEncoder
from bridge.outputs.osc import OscEncoder
from bridge.outputs.tcp import TcpTransport
from bridge.outputs.vrchat import VrchatEncoder, VrchatOutput
from bridge.outputs.vrchat_avatar import default_osc_folder, load_avatar_config
from bridge.outputs.vrchat_listener import AvatarFollower
from bridge.outputs.zmq import ZmqEncoder, ZmqPubTransport

log = logging.getLogger(__name__)

__all__ = [
    "ConsoleEncoder",
    "Encoder",
    "IFacialMocapEncoder",
    "IFacialMocapOutput",
    "LiveLinkEncoder",
    "MultiEncoder",
    "OscEncoder",
    "Output",
    "TcpTransport",
    "Transport",
    "UdpTransport",
    "VrchatEncoder",
    "VrchatOutput",
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
        return _build_vrchat(cfg, port)
    if cfg.kind == "ifacialmocap":
        return _build_ifacialmocap(cfg, port)
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


def _build_vrchat(cfg: OutputConfig, port: int) -> Output:
    """The VRChat output, on the avatar's own parameters when a config file is given, and
    following ``/avatar/change`` when it can listen on VRChat's OSC output port."""
    avatar = load_avatar_config(cfg.avatar_config) if cfg.avatar_config is not None else None
    enc = VrchatEncoder(cfg.names, cfg.prefix, cfg.parameters, cfg.rename,
                        bundle=True if cfg.bundle is None else cfg.bundle, mirror=cfg.mirror,
                        avatar=avatar)  # fmt: skip
    label = f"vrchat {cfg.names}"
    transport = UdpTransport(cfg.host, port, label=label)
    name = f"{label} {cfg.host}:{port}"
    listen, explicit = cfg.resolved_listen_port
    follower = None
    if listen:
        where = "127.0.0.1" if _is_loopback(transport.address[0]) else "0.0.0.0"
        try:
            sock = bind_udp_listener(where, listen, explicit=explicit, label="vrchat", key="listen_port",
                                     without="will not follow avatar changes")  # fmt: skip
        except BaseException:
            transport.close()
            raise
        if sock is not None:
            folder = Path(cfg.osc_folder).expanduser() if cfg.osc_folder is not None else default_osc_folder()
            follower = AvatarFollower(enc, sock, folder, label="vrchat")
            log.info("vrchat output: following /avatar/change on UDP %s:%d (avatar files in %s)",
                     where, sock.getsockname()[1], folder)  # fmt: skip
    if avatar is not None:
        log.info("vrchat output: avatar %s (%s) from %s: %s", avatar.id, avatar.name, avatar.source,
                 enc.plan.describe())  # fmt: skip
    return VrchatOutput(name, enc, transport, follower)


def _build_ifacialmocap(cfg: OutputConfig, port: int) -> Output:
    """The iFacialMocap output: the configured destination, plus every receiver that sends
    the app's start string to ``listen_port`` (the bridge plays the phone)."""
    transport = UdpTransport(cfg.host, port, label="ifacialmocap")
    name = f"ifacialmocap {cfg.host}:{port}"
    listen, explicit = cfg.resolved_listen_port
    phone = None
    if listen:
        try:
            sock = bind_udp_listener("0.0.0.0", listen, explicit=explicit, label="ifacialmocap",
                                     key="listen_port", without="answers no start strings")  # fmt: skip
        except BaseException:
            transport.close()
            raise
        if sock is not None:
            phone = Phone(sock, reply_port=cfg.reply_port, timeout_s=cfg.request_timeout_s)
            log.info("ifacialmocap output: answering iFacialMocap start strings on UDP port %d",
                     sock.getsockname()[1])  # fmt: skip
    return IFacialMocapOutput(name, cfg.mirror, transport, phone)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
