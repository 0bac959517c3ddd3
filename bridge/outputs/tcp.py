"""OSC over TCP, for consoles that take it (QLab, ETC Eos, ...), without ever blocking the hop loop.

TCP can block: a receiver that stops reading fills both socket buffers and ``send`` waits;
a receiver that is gone makes ``connect`` wait for a timeout.  So the hop loop only frames
the frame's messages and puts them, as one item, in a small bounded queue; a sender thread
connects, sends and reconnects.  A full queue drops the frame (counted), and a connection
that fails or stalls is closed and retried with exponential backoff, dropping (and counting)
what was queued meanwhile: stale faces are worth nothing to a receiver.  The receiver is
unreachable (said once, and again when it is back) while connecting fails or a send fails or
stalls; it is back once a connection takes a frame.

Framing matches python-osc's TCP client and server (``pythonosc.tcp_client``,
``pythonosc.osc_tcp_server``): ``"slip"`` is OSC 1.1, each packet as
``END + escaped bytes + END`` (RFC 1055 escapes, double-ended as python-osc writes it);
``"length"`` is OSC 1.0, each packet preceded by its byte length as a big-endian uint32.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
from collections.abc import Iterable
from typing import Literal

from bridge.errors import BridgeError
from bridge.outputs.base import Buffer, Health, Reachability, error_name, resolve

Framing = Literal["slip", "length"]
FRAMINGS: tuple[str, ...] = ("slip", "length")

SLIP_END = b"\xc0"
SLIP_ESC = b"\xdb"
SLIP_ESC_END = b"\xdb\xdc"
SLIP_ESC_ESC = b"\xdb\xdd"
_U32 = struct.Struct(">I")


def slip_frame(packet: Buffer) -> bytes:
    """One OSC 1.1 stream packet: ``END``, the bytes with ``ESC``/``END`` escaped, ``END``."""
    data = bytes(packet)
    if SLIP_ESC in data or SLIP_END in data:
        data = data.replace(SLIP_ESC, SLIP_ESC_ESC).replace(SLIP_END, SLIP_ESC_END)
    return SLIP_END + data + SLIP_END


def length_frame(packet: Buffer) -> bytes:
    """One OSC 1.0 stream packet: its size as a big-endian uint32, then the bytes."""
    return _U32.pack(len(packet)) + bytes(packet)


class TcpTransport:
    """A TCP client to one OSC receiver that never blocks the caller.

    ``send``/``send_batch`` frame and enqueue (one queue item per call, at most
    ``queue_frames`` items); the sender thread does all socket work.  Counters: ``sent`` and
    ``dropped`` count OSC packets, ``errors`` failed connects and sends, ``connects`` the
    connections made.  After any drop or reconnect, :meth:`take_resync` returns True once so
    a send-on-change encoder resends every value.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        framing: Framing = "slip",
        queue_frames: int = 8,
        connect_timeout: float = 1.0,
        send_timeout: float = 2.0,
        backoff: tuple[float, float] = (0.1, 2.0),
        label: str = "tcp",
    ) -> None:
        if framing not in FRAMINGS:
            raise BridgeError(f"{label} output: framing {framing!r} is not known; use slip or length")
        self.label = label
        self.framing = framing
        self._frame = slip_frame if framing == "slip" else length_frame
        self._family, self._proto, self.address = resolve(host, port, socket.SOCK_STREAM, label)
        self._connect_timeout = connect_timeout
        self._send_timeout = send_timeout
        self._backoff = backoff
        self._queue: queue.Queue[tuple[bytes, int]] = queue.Queue(maxsize=queue_frames)
        self.sent = 0  # sender thread only
        self.errors = 0  # sender thread only
        self.connects = 0  # sender thread only
        self._dropped_full = 0  # caller only
        self._dropped_stale = 0  # sender thread only
        self.last_error: str | None = None
        self.reachability = Reachability(f"{label} {host}:{port}")
        self._resync = False
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{label}-sender", daemon=True)
        self._thread.start()

    # --- caller side (the hop loop) ------------------------------------------------------

    def send(self, data: Buffer) -> None:
        """Queue one packet, or count it dropped; never waits."""
        self.send_batch((data,))

    def send_batch(self, packets: Iterable[Buffer]) -> None:
        """Queue one frame's packets as one item (copied: views die after this call)."""
        frame = self._frame
        framed = [frame(p) for p in packets]
        try:
            self._queue.put_nowait((b"".join(framed), len(framed)))
        except queue.Full:
            self._dropped_full += len(framed)
            self._resync = True

    def take_resync(self) -> bool:
        """True once after packets may have been lost (drop, reconnect)."""
        if self._resync:
            self._resync = False
            return True
        return False

    @property
    def dropped(self) -> int:
        return self._dropped_full + self._dropped_stale

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "dropped": self.dropped, "errors": self.errors, "connects": self.connects}

    def health(self) -> Health:
        return self.reachability.health()

    def close(self) -> None:
        """Stop the sender (unblocking a stalled send) and close the connection."""
        self._stop.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=self._send_timeout + self._connect_timeout + 1.0)

    # --- sender thread ---------------------------------------------------------------------

    def _fail(self, e: OSError, doing: str) -> None:
        self.errors += 1
        self.last_error = error_name(e)
        self._resync = True
        if not self._stop.is_set():  # close() shutting the socket down is no receiver fault
            self.reachability.unreachable(f"{doing}: {self.last_error}")

    def _drop(self, n: int) -> None:
        """Count ``n`` packets lost; the encoder must resend everything once a frame gets through."""
        self._dropped_stale += n
        self._resync = True

    def _drain(self) -> None:
        """Drop what queued up while there was no connection: it is stale by now."""
        while True:
            try:
                _, n = self._queue.get_nowait()
            except queue.Empty:
                return
            self._drop(n)

    def _connect(self) -> socket.socket | None:
        sock = socket.socket(self._family, socket.SOCK_STREAM, self._proto)
        try:
            sock.settimeout(self._connect_timeout)
            sock.connect(self.address)
            sock.settimeout(self._send_timeout)
            if self._family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            sock.close()
            self._fail(e, "connect")
            return None
        self.connects += 1
        return sock

    def _run(self) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            try:
                data, n = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if self._sock is None:
                self._sock = self._connect()
                if self._sock is None:
                    self._drop(n)
                    self._stop.wait(delay)
                    delay = min(delay * 2, self._backoff[1])
                    self._drain()
                    continue
                delay = self._backoff[0]
            try:
                self._sock.sendall(data)
            except OSError as e:  # reset, closed, or stalled past send_timeout
                self._fail(e, "send")
                self._drop(n)
                self._sock.close()
                self._sock = None
                self._drain()
            else:
                self.sent += n
                if self.reachability.state != "ok":
                    self.reachability.reachable()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
