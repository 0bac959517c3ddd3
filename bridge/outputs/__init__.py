"""Network outputs: each is a pure encoder (FaceFrame -> bytes) plus a non-blocking
transport, so the wire formats are testable without sockets and a stuck receiver never
stalls the hop loop.  :func:`build_output` turns one ``[[output]]`` table into one."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path

from bridge.config import BridgeConfig, OutputConfig, subjectless
from bridge.errors import BridgeError
from bridge.outputs.base import Encoder, MultiEncoder, Output, Transport, UdpTransport, bind_udp_listener
from bridge.outputs.batch import batch_sender
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
    "ONE_PERFORMER",
    "build_output",
    "performers_served",
]


#: What an output serves in a config without ``[[performer]]``: performer 0 under the
#: output's own ``subject``.
ONE_PERFORMER: tuple[tuple[int, str | None], ...] = ((0, None),)


def performers_served(cfg: BridgeConfig, out: OutputConfig) -> list[tuple[int, str | None]]:
    """``(index in cfg.cast, subject)`` of every performer ``out`` serves: what
    :func:`build_output` takes (subject None: the output's own ``subject`` key)."""
    served = {p.name for p in cfg.served_by(out)}
    return [(i, p.subject) for i, p in enumerate(cfg.cast) if p.name in served]


def build_output(cfg: OutputConfig, performers: Sequence[tuple[int, str | None]] = ONE_PERFORMER) -> Output:
    """The encoders and transport that one output table describes (sockets opened here),
    with the whole-batch path where the kind has one (bridge/outputs/batch.py)."""
    output = _build_output(cfg, performers)
    output.batch_sender = batch_sender(output)
    return output


def _build_output(cfg: OutputConfig, performers: Sequence[tuple[int, str | None]]) -> Output:
    """The output of one table, without its batch path (see :func:`build_output`).

    ``performers`` are the ``(index, subject)`` pairs of the performers it serves (see
    :func:`performers_served`); a subject None means the output's own ``subject`` key.
    Kinds that carry a subject get one encoder per performer, all on the output's one
    socket; the others serve exactly one performer.
    """
    served = _subjects(cfg, performers)
    port = cfg.resolved_port
    first = served[0][0]
    several = len(served) > 1
    if cfg.kind == "livelink":
        ll = {i: LiveLinkEncoder(subject, cfg.device_id, cfg.mirror, timecode=cfg.timecode)
              for i, subject in served}  # fmt: skip
        name = f"livelink {cfg.host}:{port}"
        return Output(name, ll[first], UdpTransport(cfg.host, port, label="livelink"), routes=ll)
    if cfg.kind == "osc":
        label = f"osc {cfg.scheme}"
        osc = {i: OscEncoder(cfg.scheme, cfg.mirror, speech=cfg.speech, subject=subject if several else None)
               for i, subject in served}  # fmt: skip
        return Output(f"{label} {cfg.host}:{port}", osc[first], UdpTransport(cfg.host, port, label=label),
                      routes=osc)  # fmt: skip
    if cfg.kind == "zmq":
        zm = {i: ZmqEncoder(cfg.format, cfg.topic, subject, cfg.device_id, cfg.mirror)
              for i, subject in served}  # fmt: skip
        # a subscriber may fall a second behind before PUB drops (silently) for it: one second of
        # frames of every performer served, since a hop publishes a burst of one per performer
        transport = ZmqPubTransport(cfg.endpoint, sndhwm=30 * max(1, len(served)), label="zmq")
        return Output(f"zmq {cfg.format} {transport.last_endpoint}", zm[first], transport, routes=zm)
    if cfg.kind == "vrchat":
        return _build_vrchat(cfg, port, first)
    if cfg.kind == "ifacialmocap":
        return _build_ifacialmocap(cfg, port, first)
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
        routes = {first: enc}
        if cfg.transport == "tcp":
            tcp = TcpTransport(cfg.host, port, framing=cfg.framing, label=label)
            return Output(f"{label} {cfg.host}:{port}", enc, tcp, routes=routes)
        udp = UdpTransport(cfg.host, port, label=label)
        return Output(f"{label} {cfg.host}:{port}", enc, udp, routes=routes)
    raise BridgeError(
        f"output kind {cfg.kind!r} is not known; allowed: livelink, osc, zmq, vrchat, ifacialmocap, console"
    )


def _subjects(cfg: OutputConfig, performers: Sequence[tuple[int, str | None]]) -> list[tuple[int, str]]:
    """(index, subject) of each performer served, subjects resolved; refuses (one line each)
    what no receiver could tell apart."""
    what = f"{cfg.kind} output"
    served = [(int(i), cfg.subject if subject is None else subject) for i, subject in performers]
    indices = [i for i, _ in served]
    if not served or min(indices) < 0 or len(set(indices)) != len(indices):
        raise ValueError(f"{what}: performers must be distinct indices >= 0, got {list(performers)!r}")
    if len(served) == 1:
        return served
    if subjectless(cfg):
        raise BridgeError(f"{what} serves {len(served)} performers, but its receivers know no subject: "
                          "it takes exactly one; restrict it with performers = [\"name\"] "
                          "(one output per performer)")  # fmt: skip
    seen: dict[str, int] = {}
    for i, subject in served:
        if subject in seen:
            raise BridgeError(f"{what}: performers {seen[subject]} and {i} both have subject {subject!r}, "
                              "which its receivers cannot tell apart; give each performer its own subject "
                              "(performer.subject)")  # fmt: skip
        seen[subject] = i
    if cfg.device_id is not None and (cfg.kind == "livelink" or cfg.format == "livelink"):
        raise BridgeError(f"{what}: device_id = {cfg.device_id!r} is one device's id, but the output serves "
                          f"{len(served)} performers and Unreal keys each subject by its device; leave "
                          "device_id unset (each subject gets its own derived UUID) or restrict the output "
                          "with performers = [\"name\"]")  # fmt: skip
    return served


def _build_vrchat(cfg: OutputConfig, port: int, performer: int) -> Output:
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
    return VrchatOutput(name, enc, transport, follower, performer=performer)


def _build_ifacialmocap(cfg: OutputConfig, port: int, performer: int) -> Output:
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
    return IFacialMocapOutput(name, cfg.mirror, transport, phone, performer=performer)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
