"""Be the phone: answer iFacialMocap start strings the way the iPhone app does.

A receiver (VSeeFace, VTube Studio, talking-head-anime-3, VRCFaceTracking's module, ...)
starts the app's stream by sending ``iFacialMocap_sahuasouryya9218sauhuiayeta91555dy3719``
to UDP port 49983 of the phone, optionally followed by ``|sendDataVersion=v2``.  The app
then streams to that receiver's IP address, to port 49983 (the app's developer examples
send the start string from a throwaway socket and read the stream on a socket bound to
49983; talking-head-anime-3 does exactly that), in the version asked for.

:class:`Phone` keeps the table of such requesters.  Its socket is non-blocking and is
drained from the hop loop at each frame (one ``recvfrom`` that finds nothing costs about a
microsecond), so there is no thread and nothing ever waits.  Each requester gets its own
connected UDP socket, so an ICMP "port unreachable" is reported for that requester alone.

A requester stops being served when

* it sends the app's stop string (``iFacialMocap_UDPTCPSTOP_...``),
* its port has been refusing datagrams (ICMP port unreachable) for a while (:data:`REFUSED_LIMIT`),
* it has not asked again for ``timeout_s`` seconds, when ``timeout_s`` > 0.  The default is
  0 (never): the receivers we know send the start string once (talking-head-anime-3, the
  app's own Python example) or only while they get nothing, so dropping silent requesters
  would cut them off mid-stream.
* more than :data:`MAX_REQUESTERS` are served: the one that asked least recently goes.

Each start and each drop is one log line.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from dataclasses import dataclass, field

from bridge.frame import FaceFrame
from bridge.outputs.base import Output, UdpTransport
from bridge.outputs.ifacialmocap import IFacialMocapEncoder

log = logging.getLogger(__name__)

#: The app's UDP port: it listens here for start strings and streams to it on the receiver.
APP_PORT = 49983
_KEY = "sahuasouryya9218sauhuiayeta91555dy3719"
START_STRING = f"iFacialMocap_{_KEY}"
STOP_STRING = f"iFacialMocap_UDPTCPSTOP_{_KEY}"
TCP_START_STRING = f"iFacialMocap_UDPTCP_{_KEY}"
V2_OPTION = "sendDataVersion=v2"
#: At most this many requesters are served at once (bounds the work per frame).
MAX_REQUESTERS = 16
#: A requester whose port refused this many datagrams, none more than a second after the
#: previous refusal, has gone away (Linux reports an ICMP port unreachable on every other send).
REFUSED_LIMIT = 10
#: Datagrams read per poll at most, so a flood costs a bounded slice of one frame.
_POLL_BUDGET = 64


def parse_request(data: bytes) -> tuple[str, str]:
    """``("start", "v1"|"v2")``, ``("stop", "")``, ``("tcp", "")`` or ``("unknown", "")``."""
    text = data.decode("ascii", "replace").strip("\0\r\n ")
    if text.startswith(STOP_STRING):
        return "stop", ""
    if text.startswith(TCP_START_STRING):
        return "tcp", ""
    if text == START_STRING or text.startswith(START_STRING + "|"):
        options = text[len(START_STRING) :].split("|")
        return "start", "v2" if V2_OPTION in options else "v1"
    return "unknown", ""


@dataclass(eq=False)
class Requester:
    """One receiver being streamed to."""

    address: tuple[str, int]  #: where its frames go
    version: str
    since: float
    asked_at: float  #: its latest start string (monotonic seconds)
    sock: socket.socket = field(repr=False)
    sent: int = 0
    refused: int = 0
    last_refused: float = 0.0


class Phone:
    """The requester table behind a bound, non-blocking UDP socket; see the module doc.

    ``reply_port`` is where frames go on the requester's host (0: the port the start
    string came from).  Everything runs on the caller's thread (the hop loop)."""

    def __init__(self, sock: socket.socket, *, reply_port: int = APP_PORT, timeout_s: float = 0.0,
                 label: str = "ifacialmocap") -> None:  # fmt: skip
        self.label = label
        self.reply_port = reply_port
        self.timeout_s = timeout_s
        self._sock = sock
        self._sock.setblocking(False)
        self._table: dict[tuple[str, int], Requester] = {}
        #: The requesters now served (a tuple replaced whenever the table changes).
        self.requesters: tuple[Requester, ...] = ()
        self.requests = 0  #: start strings heard
        self.dropped = 0  #: requesters no longer served
        self.sent = 0
        self.errors = 0
        self.ignored = 0  #: datagrams that were no start or stop string
        self.last_error: str | None = None
        self._said: set[str] = set()

    @property
    def address(self) -> tuple[str, int]:
        return self._sock.getsockname()

    def poll(self, now: float) -> None:
        """Read the start and stop strings that arrived; drop requesters that went silent."""
        for _ in range(_POLL_BUDGET):
            try:
                data, src = self._sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # e.g. Windows' WSAECONNRESET on UDP sockets: not ours to handle
                break
            kind, version = parse_request(data)
            if kind == "start":
                self._asked(src, version, now)
            elif kind == "stop":
                r = self._table.get(self._key(src))
                if r is not None:
                    self.drop(r, "it sent the stop string")
            elif kind == "tcp":
                self.ignored += 1
                self._once("tcp", "%s output: %s:%d asked for iFacialMocap's TCP mode, which the bridge "
                           "does not speak; set the receiver to UDP", self.label, src[0], src[1])  # fmt: skip
            else:
                self.ignored += 1
                self._once("unknown", "%s output: ignoring datagrams on port %d that are no iFacialMocap "
                           "start string (first from %s:%d)",
                           self.label, self.address[1], src[0], src[1])  # fmt: skip
        if self.timeout_s > 0:
            for r in self.requesters:
                if now - r.asked_at > self.timeout_s:
                    self.drop(r, f"no start string for {self.timeout_s:g} s (output.request_timeout_s)")

    def _key(self, src: tuple) -> tuple[str, int]:
        return (src[0], self.reply_port or src[1])

    def _asked(self, src: tuple, version: str, now: float) -> None:
        self.requests += 1
        key = self._key(src)
        r = self._table.get(key)
        if r is not None:
            r.asked_at = now
            if r.version != version:
                r.version = version
                log.info("%s output: %s:%d now asks for %s", self.label, key[0], key[1], version)
            return
        if len(self._table) >= MAX_REQUESTERS:
            oldest = min(self._table.values(), key=lambda q: q.asked_at)
            self.drop(oldest, f"{MAX_REQUESTERS} requesters are served at most and it asked least recently")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(key)
        except OSError as e:
            sock.close()
            self.errors += 1
            self._once(f"connect {key}", "%s output: cannot send to %s:%d (%s)", self.label, key[0], key[1],
                       e.strerror or e)  # fmt: skip
            return
        self._table[key] = Requester(key, version, now, now, sock)
        self.requesters = tuple(self._table.values())
        asked_from = "" if src[1] == key[1] else f" (asked from port {src[1]})"
        log.info("%s output: streaming %s to %s:%d%s", self.label, version, key[0], key[1], asked_from)

    def send(self, r: Requester, data: bytes | memoryview, now: float) -> None:
        """Send one datagram to ``r``; never blocks, never raises."""
        try:
            r.sock.send(data)
        except (ConnectionRefusedError, ConnectionResetError):
            self.errors += 1
            self.last_error = "ECONNREFUSED"
            r.refused = r.refused + 1 if now - r.last_refused <= 1.0 else 1
            r.last_refused = now
            if r.refused >= REFUSED_LIMIT:
                self.drop(r, "its port is closed (ICMP port unreachable)")
        except OSError as e:
            self.errors += 1
            self.last_error = errno.errorcode.get(e.errno or 0, type(e).__name__)
        else:
            r.sent += 1
            self.sent += 1

    def drop(self, r: Requester, why: str) -> None:
        if self._table.pop(r.address, None) is None:
            return
        self.requesters = tuple(self._table.values())
        self.dropped += 1
        r.sock.close()
        log.info("%s output: stopped streaming to %s:%d after %d frames: %s", self.label, r.address[0],
                 r.address[1], r.sent, why)  # fmt: skip

    def _once(self, what: str, msg: str, *args: object) -> None:
        if what not in self._said:
            self._said.add(what)
            log.warning(msg, *args)

    def stats(self) -> dict[str, int]:
        return {
            "requesters": len(self._table),
            "requests": self.requests,
            "requesters_dropped": self.dropped,
            "replies_sent": self.sent,
            "reply_errors": self.errors,
            "ignored_datagrams": self.ignored,
        }

    def close(self) -> None:
        for r in self.requesters:
            r.sock.close()
        self._table.clear()
        self.requesters = ()
        self._sock.close()


class IFacialMocapOutput(Output):
    """The iFacialMocap output: v1 to the configured destination, as always, plus whatever
    each requester asked for.  A requester at the configured destination's own address
    gets only its own stream (no duplicate datagrams).  Each version is encoded at most
    once per frame."""

    def __init__(self, name: str, mirror: bool, transport: UdpTransport, phone: Phone | None, *,
                 performer: int = 0) -> None:  # fmt: skip
        #: one encoder per text version a receiver may ask for
        self.versions = {v: IFacialMocapEncoder(mirror, v) for v in ("v1", "v2")}  # type: ignore[arg-type]
        super().__init__(name, self.versions["v1"], transport, routes={performer: self.versions["v1"]})
        self._v1, self._v2 = self.versions["v1"], self.versions["v2"]
        self.phone = phone
        self.performer = performer
        self._destination = tuple(transport.address[:2])

    def publish(self, frame: FaceFrame) -> None:
        phone = self.phone
        if phone is None or frame.performer != self.performer:
            super().publish(frame)  # (ignores another performer's frame)
            return
        now = time.monotonic()
        phone.poll(now)
        requesters = phone.requesters
        if not requesters:
            super().publish(frame)
            return
        v1 = v2 = None  # each version encoded at most once
        shadowed = False
        for r in requesters:
            shadowed = shadowed or r.address == self._destination
            if r.version == "v2":
                data = v2 = v2 or self._v2.encode(frame)
            else:
                data = v1 = v1 or self._v1.encode(frame)
            phone.send(r, data, now)
        if not shadowed:
            self.transport.send(v1 or self._v1.encode(frame))

    def close(self) -> None:
        if self.phone is not None:
            self.phone.close()
        super().close()

    def stats(self) -> dict[str, int]:
        out = dict(self.transport.stats())
        if self.phone is not None:
            out.update(self.phone.stats())
        return out
