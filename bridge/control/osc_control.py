"""OSC control: the console's command set from QLab, TouchDesigner or a lighting desk.

A python-osc UDP server on its own thread (``[control] host``:``osc_port``, default
127.0.0.1:9002).  ``/a2e/<command> value`` applies to every performer,
``/a2e/<performer>/<command> value`` to one, ``/a2e/output/<id>/enabled 1|0`` to an output.
A malformed command changes nothing and is answered to its sender, from this port, with
``/a2e/error <address> <message>``; so is a calibration refused later (a noisy input).
Bound to anything but loopback, every command carries the token as a last string argument.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_server import BlockingOSCUDPServer

from bridge.control.access import token_matches
from bridge.control.commands import CommandError
from bridge.errors import BridgeError

log = logging.getLogger(__name__)


class OscControl:
    """The OSC command server of one bridge."""

    def __init__(self, control: Any, host: str, port: int, token: str) -> None:
        self.control, self.host, self.port, self.token = control, host, port, token
        self._server: BlockingOSCUDPServer | None = None
        self._thread: threading.Thread | None = None
        self.errors_sent = 0

    def start(self) -> None:
        d = Dispatcher()
        d.set_default_handler(self._handle, needs_reply_address=True)
        try:
            self._server = BlockingOSCUDPServer((self.host, self.port), d)
        except OSError as e:
            raise BridgeError(
                f"OSC control: cannot listen on udp {self.host}:{self.port} ({e.strerror or e}); "
                "pick another [control] osc_port, or stop what uses it"
            ) from None
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="a2e-osc-control", daemon=True)  # fmt: skip
        self._thread.start()

    def _reply_error(self, client: tuple[str, int], address: str, message: str) -> None:
        if self._server is None:
            return
        msg = OscMessageBuilder("/a2e/error")
        msg.add_arg(address)
        msg.add_arg(message)
        try:
            self._server.socket.sendto(msg.build().dgram, client)
            self.errors_sent += 1
        except OSError as e:  # the sender is gone: nothing to tell
            log.debug("OSC control: cannot answer %s: %s", client, e)

    def _handle(self, client: tuple[str, int], address: str, *args: Any) -> None:
        values = list(args)
        origin = f"osc {client[0]}:{client[1]}"
        if self.token:
            given = values.pop() if values and isinstance(values[-1], str) else ""
            if not token_matches(str(given), self.token):
                self.control.commands.refused += 1
                self._reply_error(client, address, "token required: send it as the last argument")
                return
        try:
            self.control.command_from_osc(
                address, values, origin, notify=lambda m: self._reply_error(client, address, m)
            )
        except CommandError as e:
            log.warning("OSC command refused (%s): %s", origin, e)
            self._reply_error(client, address, str(e))

    def close(self) -> None:
        server = self._server
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(2.0)
        self._server = None


__all__ = ["OscControl"]
