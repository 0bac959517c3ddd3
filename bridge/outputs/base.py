"""What every output is made of: a pure encoder, a non-blocking transport, and the pair.

Encoders turn a :class:`~bridge.frame.FaceFrame` into bytes and never touch a socket, so
their wire format is tested byte for byte without a network.  Transports only move bytes
and never block the hop loop: a slow or absent receiver costs a counted drop, not a late
frame for every other output.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from bridge.errors import BridgeError
from bridge.frame import FaceFrame

#: Anything a transport accepts: ``bytes``, ``bytearray`` or a ``memoryview`` of either.
Buffer = bytes | bytearray | memoryview


class Encoder(Protocol):
    """FaceFrame -> wire bytes.  Pure: no sockets, no clocks."""

    def encode(self, frame: FaceFrame) -> bytes:
        """A fresh, immutable copy of the packet (safe to keep)."""
        ...

    def encode_view(self, frame: FaceFrame) -> memoryview:
        """The packet without a copy; valid only until the next ``encode*`` call."""
        ...


class MultiEncoder(Protocol):
    """FaceFrame -> the packets of one frame, for receivers that want one OSC message per
    value (VRChat, consoles).  Pure like :class:`Encoder`, but may keep state between frames
    (send-on-change), so each frame is encoded once, in order.  Zero packets is valid."""

    def packet_views(self, frame: FaceFrame) -> Sequence[Buffer]:
        """The frame's packets; views valid only until the next call."""
        ...

    def encode_packets(self, frame: FaceFrame) -> list[bytes]:
        """Like :meth:`packet_views`, as independent ``bytes`` copies."""
        ...


class Transport(Protocol):
    """Moves bytes; never blocks the caller and never raises on a failed send.

    Optional extras an :class:`Output` uses when present: ``send_batch(packets)`` (all
    packets of one frame at once) and ``take_resync() -> bool`` (True once after the
    receiver may have missed packets, so a send-on-change encoder resends everything)."""

    def send(self, data: Buffer) -> None: ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, int]: ...


def wrap_int32(n: int) -> int:
    """``n`` as the int32 a receiver reads (two's complement wrap), so a very long run never
    makes ``struct`` raise on the hot path (2**31 frames at 30 fps is 2.3 years)."""
    return ((n + 0x8000_0000) & 0xFFFF_FFFF) - 0x8000_0000


def inverse_permutation(perm: np.ndarray) -> np.ndarray:
    """``dst[inv] = src`` equals ``dst = src[perm]``: lets encoders mirror while scattering
    straight into their output buffer (no temporary array per frame)."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(len(perm), dtype=perm.dtype)
    return inv


def resolve(host: str, port: int, kind: int, label: str) -> tuple[int, int, tuple]:
    """(family, proto, address) for ``host:port``, resolved once when the output is built."""
    try:
        infos = socket.getaddrinfo(host, port, type=kind)
    except (socket.gaierror, UnicodeError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise BridgeError(
            f"{label} output: cannot resolve host {host!r} ({why}); set output.host to an "
            "IP address or a host name this machine can resolve"
        ) from None
    except OverflowError:
        raise BridgeError(
            f"{label} output: port {port} is not a port number; set output.port to 1..65535"
        ) from None
    family, _, proto, _, addr = infos[0]
    return family, proto, addr


def bind_udp_listener(host: str, port: int, *, explicit: bool, label: str, key: str,
                      without: str) -> socket.socket | None:  # fmt: skip
    """A UDP socket bound to ``host:port`` for an output that also listens (iFacialMocap's
    start string, VRChat's ``/avatar/change``).  A port the user chose must bind (one-line
    BridgeError otherwise); a default one that another program holds costs a warning, and
    the output runs without listening (``without`` says what it then does not do)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        why = e.strerror or str(e)
        if explicit:
            raise BridgeError(
                f"{label} output: cannot listen on UDP {host}:{port} ({why}); choose a free port in "
                f"output.{key}, or set output.{key} = false"
            ) from None
        logging.getLogger(__name__).warning(
            "%s output: cannot listen on UDP %s:%d (%s), so it %s; set output.%s to a free port, "
            "or to false to silence this", label, host, port, why, without, key,
        )  # fmt: skip
        return None
    return sock


class UdpTransport:
    """A non-blocking UDP sender to one destination, resolved once at construction.

    Every failed ``sendto`` (full socket buffer, ICMP port unreachable reported as
    ``ECONNREFUSED``, a packet too large, no route) is counted in ``errors``; the last one
    is kept in ``last_error`` for diagnostics.  Nothing is raised to the hop loop.
    """

    def __init__(self, host: str, port: int, *, label: str = "udp") -> None:
        self.label = label
        self.sent = 0
        self.errors = 0
        self.last_error: str | None = None
        family, proto, addr = resolve(host, port, socket.SOCK_DGRAM, label)
        self.address: tuple = addr
        self._sock = socket.socket(family, socket.SOCK_DGRAM, proto)
        self._sock.setblocking(False)

    def send(self, data: Buffer) -> None:
        """Send one datagram now or count why not."""
        try:
            self._sock.sendto(data, self.address)
        except OSError as e:
            self.errors += 1
            self.last_error = errno.errorcode.get(e.errno or 0, type(e).__name__)
        else:
            self.sent += 1

    def close(self) -> None:
        self._sock.close()

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "errors": self.errors}


class Output:
    """One configured destination: an encoder and a transport under a readable name."""

    def __init__(self, name: str, encoder: Encoder | MultiEncoder, transport: Transport) -> None:
        self.name = name
        self.encoder = encoder
        self.transport = transport
        self._packets = getattr(encoder, "packet_views", None)
        self._send_batch = getattr(transport, "send_batch", None)
        take_resync = getattr(transport, "take_resync", None)
        resync = getattr(encoder, "resync", None)
        self._take_resync = take_resync if resync is not None else None
        self._resync = resync

    def publish(self, frame: FaceFrame) -> None:
        """Encode and hand off one frame.  Uses zero-copy views: transports send
        synchronously (the kernel or libzmq copies) or copy before queueing, so a view is
        never kept past this call."""
        if self._packets is None:
            self.transport.send(self.encoder.encode_view(frame))  # type: ignore[union-attr]
            return
        if self._take_resync is not None and self._take_resync():
            self._resync()  # type: ignore[misc]
        packets = self._packets(frame)
        if not packets:
            return
        if self._send_batch is not None:
            self._send_batch(packets)
        else:
            send = self.transport.send
            for p in packets:
                send(p)

    def close(self) -> None:
        self.transport.close()

    def stats(self) -> dict[str, int]:
        return self.transport.stats()

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Output({self.name!r})"
