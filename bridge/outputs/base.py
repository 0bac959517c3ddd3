"""What every output is made of: a pure encoder, a non-blocking transport, and the pair.

Encoders turn a :class:`~bridge.frame.FaceFrame` into bytes and never touch a socket, so
their wire format is tested byte for byte without a network.  Transports only move bytes
and never block the hop loop: a slow or absent receiver costs a counted drop, not a late
frame for every other output.  A receiver that cannot be reached is said in one line when
that starts and when it ends (:class:`Reachability`), and :meth:`Output.health` tells
anyone who asks (the progress line, a console, a /health endpoint).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from bridge.errors import BridgeError
from bridge.frame import FaceFrame, FrameBatch
from bridge.outputs.packet_table import PacketTable
from bridge.outputs.udp_batch import multi_sender

log = logging.getLogger("bridge.outputs")

#: errors of a segmented (GSO) send that mean the route or kernel cannot segment it
_NO_SEGMENTS = frozenset(getattr(errno, n) for n in ("EIO", "EINVAL", "EMSGSIZE", "EOPNOTSUPP", "ENOPROTOOPT")
                         if hasattr(errno, n))  # fmt: skip
#: send errors that mean the socket buffer is full: the rest of a batch would fail too
_BUFFER_FULL = frozenset(getattr(errno, n) for n in ("EAGAIN", "EWOULDBLOCK", "ENOBUFS") if hasattr(errno, n))

#: Anything a transport accepts: ``bytes``, ``bytearray`` or a ``memoryview`` of either.
Buffer = bytes | bytearray | memoryview

#: ``ok``: the receiver takes what is sent (as far as the transport can tell);
#: ``unreachable``: it cannot be reached now (TCP not connected, UDP refused);
#: ``unknown``: nothing has been sent yet, or the transport cannot tell.
HealthState = Literal["ok", "unreachable", "unknown"]

#: UDP send errors that mean the receiver (or the way to it) is not there, rather than a
#: full buffer or a bad packet.
UNREACHABLE_ERRNOS = frozenset(
    getattr(errno, n)
    for n in ("ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "EHOSTDOWN", "ENETDOWN")
    if hasattr(errno, n)
)


#: Linux's IP_RECVERR / IPV6_RECVERR (Python's socket module lacks them): an unconnected UDP
#: socket then hears ICMP errors, so a closed port's "port unreachable" fails the next send.
_RECVERR = {socket.AF_INET: (socket.IPPROTO_IP, 11), socket.AF_INET6: (socket.IPPROTO_IPV6, 25)}


def error_name(e: BaseException) -> str:
    """``ECONNREFUSED`` for an OSError with that errno; ``timed out`` / the type name otherwise."""
    code = getattr(e, "errno", None)
    if code and code in errno.errorcode:
        return errno.errorcode[code]
    return str(e) if isinstance(e, TimeoutError) and str(e) else type(e).__name__


@dataclass(frozen=True, slots=True)
class Health:
    """One output's state as a snapshot: safe to read from any thread."""

    state: HealthState
    error: str | None = None  #: the last error that made it unreachable (kept after recovery)
    since: float = 0.0  #: ``time.monotonic()`` when ``state`` began
    changes: int = 0  #: how many times the state changed (flapping shows here)

    def describe(self) -> str:
        """``ok``, ``unknown`` or ``unreachable (ECONNREFUSED)``: for the progress line."""
        return f"unreachable ({self.error})" if self.state == "unreachable" and self.error else self.state

    def as_dict(self) -> dict[str, object]:
        return {"state": self.state, "error": self.error,
                "for_s": round(time.monotonic() - self.since, 3), "changes": self.changes}  # fmt: skip


class Reachability:
    """Whether a transport's receiver can be reached, said in one line when that changes.

    The transport calls :meth:`reachable` / :meth:`unreachable` as it learns (from the hop
    loop or its own thread); only changes are logged: ``unreachable`` once when it starts,
    and once more when the receiver is back.  ``unknown`` -> ``ok`` is the normal start and
    says nothing.  :attr:`name` is the output's name (:class:`Output` sets it).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._health = Health("unknown", None, time.monotonic(), 0)

    @property
    def state(self) -> HealthState:
        return self._health.state

    def health(self) -> Health:
        return self._health

    def reachable(self) -> None:
        h = self._health
        if h.state == "ok":
            return
        now = time.monotonic()
        self._health = Health("ok", h.error, now, h.changes + 1)
        if h.state == "unreachable":
            log.info("output %s: receiver reachable again after %.1f s", self.name, now - h.since)

    def unreachable(self, error: str) -> None:
        h = self._health
        if h.state == "unreachable":
            if error != h.error:
                self._health = Health("unreachable", error, h.since, h.changes)
            return
        self._health = Health("unreachable", error, time.monotonic(), h.changes + 1)
        log.warning("output %s: receiver unreachable (%s); its frames are dropped until it is back",
                    self.name, error)  # fmt: skip


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


class BatchSender(Protocol):
    """A whole :class:`~bridge.frame.FrameBatch` at once (bridge/outputs/batch.py): the packets
    :meth:`Output.publish` would send for its frames, encoded as arrays and sent in bulk."""

    def publish(self, batch: FrameBatch) -> bool:
        """Send the served rows' frames; False when this batch needs the frame-by-frame path."""
        ...

    def prepare(self, batch: FrameBatch) -> None:
        """Encode ``batch`` without sending it: what batches like it need (packet tables,
        routing, templates) is built before the first hop rather than in it."""
        ...


class Transport(Protocol):
    """Moves bytes; never blocks the caller and never raises on a failed send.

    Optional extras an :class:`Output` uses when present: ``send_batch(packets)`` (all
    packets of one frame at once), ``take_resync() -> bool`` (True once after the
    receiver may have missed packets, so a send-on-change encoder resends everything),
    ``health() -> Health`` and a ``reachability`` (:class:`Reachability`) whose name the
    output sets."""

    def send(self, data: Buffer) -> None: ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, int]: ...


#: Frames in a batch from which the whole-batch encoders and sends pay off: below, their fixed
#: cost per batch (tens of µs of array set-up) is more than encoding frame by frame
#: (``python3 scripts/bench_outputs.py --batch --performers N``: break-even at 8-16 frames).
BATCH_MIN_FRAMES = 16


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

    On Linux the socket asks for ICMP errors (``IP_RECVERR``), so an ICMP "port
    unreachable" (nobody listening on that port, which loopback always reports) fails the
    next ``sendto`` with ``ECONNREFUSED``.  (Not ``connect``, which would pin the source
    address: a laptop whose address changes mid-show would then fail every send.)  Every
    failed send (that, a full socket buffer, a packet too large, no route) is counted in
    ``errors``, the last one kept in ``last_error``; nothing is raised to the hop loop.
    Refused or unroutable sends make the receiver unreachable (said once).  It counts as
    back once sends have gone through for :data:`RECOVER_S`: the refusal of one send shows
    up at a later one, so only a run of good sends that long (the ICMP answer has had time
    to come back) proves the receiver is there.  A receiver on another host that drops
    packets silently still looks ``ok``: UDP cannot tell.
    """

    #: Seconds of good sends before an unreachable receiver counts as back.  On loopback a
    #: closed port refuses every other send; another host's kernel answers at most once a
    #: second (net.ipv4.icmp_ratelimit = 1000 ms), so less than that would flap.
    RECOVER_S = 2.0

    def __init__(self, host: str, port: int, *, label: str = "udp") -> None:
        self.label = label
        self.sent = 0
        self.errors = 0
        self.last_error: str | None = None
        family, proto, addr = resolve(host, port, socket.SOCK_DGRAM, label)
        self.address: tuple = addr
        self.reachability = Reachability(f"{label} {host}:{port}")
        self._good_since: float | None = None  #: first good send after the last refusal
        self._sock = socket.socket(family, socket.SOCK_DGRAM, proto)
        self._sock.setblocking(False)
        #: True where the kernel reports ICMP errors to this socket (Linux); elsewhere a
        #: closed port goes unnoticed and the state stays ``ok``
        self.hears_icmp = False
        if sys.platform.startswith("linux") and family in _RECVERR:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(*_RECVERR[family], 1)
                self.hears_icmp = True
        self._multi = multi_sender(self._sock, addr)  #: sendmmsg, or None: a loop of sendto
        #: runs of equal-size packets go as one segmented send (GSO) where the kernel can
        self._segments = self._multi is not None and self._multi.segment_limit > 0

    def send(self, data: Buffer) -> None:
        """Send one datagram now or count why not."""
        try:
            self._sock.sendto(data, self.address)
        except OSError as e:
            self._failed(e)
        else:
            self.sent += 1
            if self.reachability.state != "ok":
                self._went_through()

    def send_many(self, table: PacketTable, order: np.ndarray) -> None:
        """Send the packets of ``table``'s slots ``order``, in order, counting exactly what
        :meth:`send` would count for each: one ``sendmmsg`` per batch on Linux.

        Runs of equal-size packets go as one segmented send each (UDP GSO, where the kernel
        and route allow) while the receiver is reachable.  Linux stops a ``sendmmsg`` at the
        first message that fails and, when some went, drops that error; so the next call
        starts at that message.  A refusal (an ICMP error for an
        earlier packet) is read back from the socket's error queue and counts against that
        packet, as ``sendto`` would; a full socket buffer (EAGAIN, ENOBUFS) counts it and
        every packet after it as errors, without a syscall each.
        """
        multi = self._multi
        if multi is None:
            views, send = table.views(), self.send
            for slot in order.tolist():
                send(views[slot])
            return
        total, done = len(order), 0
        while done < total:
            # segmented (GSO) only while the receiver is known there: a refusal then counts
            # against one packet and the rest go one by one, exactly as sendto would count them
            segments = self._segments and self.reachability.state == "ok"
            went, err = multi.send(table, order, done, segments)
            if went:
                done += went
                self.sent += went
                if self.reachability.state != "ok":
                    self._went_through()
                if done >= total:
                    return
                err = self._queued_refusal()
                if not err:
                    continue  # the lost error was not a refusal: try again from there
            if segments and err in _NO_SEGMENTS and multi.stopped_segmented:
                self._segments = False  # this route or kernel does not segment: one by one from now on
                log.debug("%s: UDP segmentation refused (%s); sending datagrams one by one",
                          self.reachability.name, errno.errorcode.get(err, err))  # fmt: skip
                continue
            if err in _BUFFER_FULL:
                self.errors += total - done
                self.last_error = errno.errorcode.get(err, str(err))
                return
            self._failed(OSError(err, os.strerror(err)))
            done += 1

    def _queued_refusal(self) -> int:
        """The errno of an ICMP error waiting in the socket's error queue (0: none)."""
        if not self.hears_icmp:
            return 0
        try:
            _, ancdata, _, _ = self._sock.recvmsg(1, 512, socket.MSG_ERRQUEUE)
        except OSError:  # BlockingIOError: empty
            return 0
        for _level, _type, data in ancdata:
            if len(data) >= 4:  # struct sock_extended_err starts with ee_errno
                return int.from_bytes(data[:4], sys.byteorder)
        return 0

    def _failed(self, e: OSError) -> None:
        self.errors += 1
        self.last_error = error_name(e)
        if e.errno in UNREACHABLE_ERRNOS:
            self._good_since = None
            self.reachability.unreachable(self.last_error)
            if self.hears_icmp:
                self._drain_icmp()

    def _drain_icmp(self) -> None:
        """Empty the socket's error queue (each ICMP error waits there, using receive memory)."""
        for _ in range(64):
            try:
                self._sock.recvmsg(1, 512, socket.MSG_ERRQUEUE)
            except OSError:  # BlockingIOError: empty
                return

    def _went_through(self) -> None:
        """A send left while not known ok: ok at once at the start, after RECOVER_S when back."""
        if self.reachability.state == "unknown":
            self.reachability.reachable()
            return
        now = time.monotonic()
        if self._good_since is None:
            self._good_since = now
        elif now - self._good_since >= self.RECOVER_S:
            self.reachability.reachable()

    def health(self) -> Health:
        return self.reachability.health()

    def close(self) -> None:
        self._sock.close()

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "errors": self.errors}


class Output:
    """One configured destination: an encoder per performer it serves and one transport,
    under a readable name.

    ``routes`` maps a performer's index (:attr:`FaceFrame.performer`) to the encoder of its
    subject; None means ``encoder`` serves performer 0 alone (one performer, as before
    performers existed).  :meth:`publish` ignores the frames of any other performer: the
    check is one index into a table built here, so serving many performers costs nothing
    per frame beyond the encoder it picks.  ``encoder`` is the first performer's encoder.
    """

    def __init__(self, name: str, encoder: Encoder | MultiEncoder, transport: Transport, *,
                 routes: Mapping[int, Encoder | MultiEncoder] | None = None) -> None:  # fmt: skip
        self.name = name
        self.encoder = encoder
        self.transport = transport
        #: frames go out only while True (the console's ``output/<name>/enabled`` command)
        self.enabled = True
        routes = {0: encoder} if routes is None else dict(routes)
        if not routes or min(routes) < 0:
            raise ValueError(f"output {name}: routes must map performer indices >= 0 to encoders")
        #: performer index -> its encoder, for every performer this output serves
        self.encoders: dict[int, Encoder | MultiEncoder] = routes
        reach = getattr(transport, "reachability", None)
        if isinstance(reach, Reachability):
            reach.name = name  # its lines then name the output as every other line does
        self._health = getattr(transport, "health", None)
        self._multi = hasattr(encoder, "packet_views")
        if any(hasattr(e, "packet_views") != self._multi for e in routes.values()):
            raise ValueError(f"output {name}: every performer's encoder must be of one kind")
        # performer index -> the bound method that encodes its frames (None: not served)
        table: list = [None] * (max(routes) + 1)
        for i, enc in routes.items():
            table[i] = enc.packet_views if self._multi else enc.encode_view  # type: ignore[union-attr]
        self._route: tuple = tuple(table)
        self._served = len(table)
        self._send_batch = getattr(transport, "send_batch", None)
        take_resync = getattr(transport, "take_resync", None)
        resync = [r for r in (getattr(e, "resync", None) for e in routes.values()) if r is not None]
        self._take_resync = take_resync if resync else None
        self._resync = tuple(resync)
        #: sends whole batches without a FaceFrame each (set by ``build_output``), or None
        self.batch_sender: BatchSender | None = None

    def serves(self, performer: int) -> bool:
        """Whether frames of ``performer`` go out here."""
        return 0 <= performer < self._served and self._route[performer] is not None

    def publish(self, frame: FaceFrame) -> None:
        """Encode and hand off one frame of a performer this output serves; ignore any other.
        Uses zero-copy views: transports send synchronously (the kernel or libzmq copies)
        or copy before queueing, so a view is never kept past this call."""
        i = frame.performer
        if not 0 <= i < self._served or not self.enabled:
            return
        encode = self._route[i]
        if encode is None:
            return
        if not self._multi:
            self.transport.send(encode(frame))
            return
        if self._take_resync is not None and self._take_resync():
            for resync in self._resync:
                resync()
        packets = encode(frame)
        if not packets:
            return
        if self._send_batch is not None:
            self._send_batch(packets)
        else:
            send = self.transport.send
            for p in packets:
                send(p)

    def publish_batch(self, batch: FrameBatch) -> None:
        """Every frame of ``batch`` whose performer this output serves, each performer's in
        frame order: the packets :meth:`publish` would send, frame by frame.  Through
        :attr:`batch_sender` where the kind has one (every frame ``f`` of the batch before
        any ``f + 1``), else frame by frame here."""
        if not self.enabled:
            return
        sender = self._batch_path(batch)
        if sender is not None and sender.publish(batch):
            return
        publish, served = self.publish, self._served
        rows = batch.performers.tolist()
        for i, performer in enumerate(rows):
            if performer < served and self._route[performer] is not None:
                for f in range(batch.stride):
                    publish(batch.frame(i, f))

    def prepare_batch(self, batch: FrameBatch) -> None:
        """Build what :meth:`publish_batch` needs for batches like ``batch``, sending nothing
        (before the first hop: at 256 performers its first batch built tables for ~20 ms)."""
        sender = self._batch_path(batch)
        if self.enabled and sender is not None:
            sender.prepare(batch)

    def _batch_path(self, batch: FrameBatch) -> BatchSender | None:
        """The batch sender for ``batch``, or None: frame by frame (no batch path for this kind,
        or a batch too small for the batch path's fixed cost to pay off)."""
        if batch.values.shape[0] * batch.stride < BATCH_MIN_FRAMES:
            return None
        return self.batch_sender

    def close(self) -> None:
        self.transport.close()

    def stats(self) -> dict[str, int]:
        return self.transport.stats()

    def health(self) -> Health:
        """Whether the receiver can be reached now (and the last error); any thread may ask."""
        return self._health() if self._health is not None else Health("unknown")

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Output({self.name!r})"


def describe_health(outputs: Sequence[Output]) -> str:
    """``livelink 127.0.0.1:11111 ok, console tcp 127.0.0.1:53000 unreachable (ECONNREFUSED)``."""
    return ", ".join(f"{o.name} {o.health().describe()}" for o in outputs) or "none"
