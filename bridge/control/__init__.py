"""The live console: see the voice and the face while the bridge runs, and steer it.

:class:`Control` is what the engine holds: the live settings and their hooks
(:mod:`~bridge.control.live`), the command queue (:mod:`~bridge.control.commands`), the
monitor the readers share (:mod:`~bridge.control.monitor`), and the front-ends it starts
on their own threads: the web console (:mod:`~bridge.control.web`: page, WebSocket,
``/api``, ``/metrics``, ``/health``), OSC control (:mod:`~bridge.control.osc_control`)
and the terminal status line (:mod:`~bridge.control.terminal`).  The hop loop only calls
:meth:`Control.apply` once per turn and the live hooks once per post block; it never
waits on a front-end.  docs/console.md describes it for users.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

from bridge.control.access import is_loopback
from bridge.control.commands import Command, CommandError, CommandQueue, Ticket, parse_json, parse_osc
from bridge.control.live import LiveControls
from bridge.control.monitor import Monitor
from bridge.errors import BridgeError

log = logging.getLogger(__name__)


class Control:
    """The console's half of a bridge: live settings, commands, monitor, front-ends."""

    def __init__(self, bridge: Any, load_model: Callable[[str], Any]) -> None:
        self.bridge = bridge
        self.live = LiveControls(bridge, load_model)
        self.commands = CommandQueue([p.name for p in bridge.performers], self.live.output_ids)
        self.monitor = Monitor(bridge, self.live, self.commands)
        self.web: Any = None
        self.osc: Any = None
        self.terminal: Any = None
        self.token = ""

    # ---- the hop loop's side ---------------------------------------------------------
    def apply(self) -> None:
        """Between hops: run the waiting commands (nothing to do is one queue check)."""
        if self.commands.waiting():
            self.commands.apply(self.live.execute, self.bridge.performers[0].scheduler.next_frame)

    # ---- the front-ends' side --------------------------------------------------------
    def command_from_json(self, doc: Any, origin: str, notify: Callable[[str], None] | None = None) -> Ticket:
        """Parse and queue; CommandError (counted) when malformed."""
        try:
            cmd = parse_json(doc, self.live.capabilities(), origin, notify)
        except CommandError:
            self.commands.refused += 1
            raise
        return self.commands.submit(cmd)

    def command_from_osc(self, address: str, args: list[Any], origin: str,
                         notify: Callable[[str], None] | None = None) -> Ticket:  # fmt: skip
        try:
            cmd = parse_osc(address, args, self.live.capabilities(), origin, notify)
        except CommandError:
            self.commands.refused += 1
            raise
        return self.commands.submit(cmd)

    @property
    def terminal_active(self) -> bool:
        return self.terminal is not None

    def start(self, cfg: Any) -> list[str]:
        """Start the front-ends ``cfg`` asks for; lines to print (the URLs, the token once).
        A port in use is a BridgeError naming it."""
        lines: list[str] = []
        wide = (cfg.console.enabled and not is_loopback(cfg.console.host)) or (
            cfg.control.enabled and not is_loopback(cfg.control.host)
        )
        self.token = cfg.console.token or (secrets.token_urlsafe(18) if wide else "")
        if cfg.console.enabled:
            from bridge.control.web import WebConsole

            self.web = WebConsole(self, cfg.console.host, cfg.console.port,
                                  self.token if not is_loopback(cfg.console.host) else "")  # fmt: skip
            self.web.start()
            lines.append(f"live console: {self.web.url()}")
        if cfg.control.enabled:
            from bridge.control.osc_control import OscControl

            self.osc = OscControl(self, cfg.control.host, cfg.control.osc_port,
                                  self.token if not is_loopback(cfg.control.host) else "")  # fmt: skip
            self.osc.start()
            lines.append(f"OSC control: udp {self.osc.host}:{self.osc.port} (/a2e/<command>, "
                         "/a2e/<performer>/<command>; errors come back on /a2e/error)")  # fmt: skip
        if wide and not cfg.console.token:
            lines.append(f"console token (shown once): {self.token}")
        return lines

    def start_terminal(self) -> None:
        from bridge.control.terminal import TerminalStatus

        self.terminal = TerminalStatus(self.monitor)
        self.terminal.start()

    def close(self) -> None:
        for part in (self.terminal, self.osc, self.web):
            if part is not None:
                part.close()


__all__ = ["BridgeError", "Command", "CommandError", "Control", "is_loopback"]
