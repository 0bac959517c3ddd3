"""The web console's server: one page, a WebSocket, /api/state, /api/command, /metrics, /health.

aiohttp on a thread of its own with its own event loop: the hop loop never waits on a
browser.  State goes out as snapshots of the :class:`~bridge.control.monitor.Monitor`;
commands go into the :class:`~bridge.control.commands.CommandQueue` and the reply waits
(briefly, on this thread) for the hop loop to apply them.

Safe by default: on loopback no token is needed, but the ``Host`` header must name
loopback (a DNS-rebinding page cannot reach it); bound to anything else, every request but
``/health`` needs the token (``Authorization: Bearer``, ``X-A2E-Token`` or ``?token=``).
POSTs and WebSockets from another origin are refused.  The page and its two assets are
fixed files of the package: nothing a request says reaches a file path or a shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from importlib import resources
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from bridge.control.access import is_loopback, token_matches
from bridge.control.commands import CommandError
from bridge.errors import BridgeError

log = logging.getLogger(__name__)

#: state pushes per second on each WebSocket
PUSH_HZ = 20.0
#: how long a command's reply waits for the hop loop to apply it
APPLY_WAIT_S = 2.0
#: the static files served, by URL path (nothing else is ever read from disk)
STATIC = {"/": ("console.html", "text/html"), "/console.js": ("console.js", "application/javascript"),
          "/console.css": ("console.css", "text/css")}  # fmt: skip
_LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _read_static(name: str) -> bytes:
    return resources.files("bridge.control").joinpath("static", name).read_bytes()


class WebConsole:
    """The HTTP + WebSocket server of one bridge's console."""

    def __init__(self, control: Any, host: str, port: int, token: str) -> None:
        self.control = control
        self.host, self.port, self.token = host, port, token
        self.loopback = is_loopback(host)
        self._static = {path: (_read_static(name), ctype) for path, (name, ctype) in STATIC.items()}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: str | None = None
        self._stop: asyncio.Event | None = None
        self.clients = 0
        self._sockets: set[web.WebSocketResponse] = set()
        self._message: tuple[Any, str] | None = None

    # ---- life --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="a2e-console", daemon=True)
        self._thread.start()
        self._ready.wait(10.0)
        if self._error is not None:
            raise BridgeError(self._error)

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "[::]") else host
        return f"http://{shown}:{self.port}/" + ("?token=<the token>" if self.token else "")

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        except Exception as e:  # pragma: no cover - reported by start()
            self._error = self._error or f"console: {e}"
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application(middlewares=[self._guard], client_max_size=16 * 1024)
        app.router.add_get("/", self._page)
        app.router.add_get("/console.js", self._page)
        app.router.add_get("/console.css", self._page)
        app.router.add_get("/api/state", self._state)
        app.router.add_post("/api/command", self._command)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/health", self._health)
        app.on_shutdown.append(self._close_sockets)
        # a browser left open must not hold up the bridge's exit (Ctrl-C ends a run within a second)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            self._error = (
                f"console: cannot listen on {self.host}:{self.port} ({e.strerror or e}); "
                "pick another [console] port (or --console PORT), or stop what uses it"
            )
            self._ready.set()
            return
        self._runner = runner
        server = site._server  # the bound port, when 0 was asked for
        if server is not None and server.sockets:  # type: ignore[union-attr]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    async def _close_sockets(self, _app: web.Application) -> None:
        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=WSCloseCode.GOING_AWAY, message=b"bridge stopping"), 0.5)

    def close(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(5.0)

    # ---- checks --------------------------------------------------------------------------
    def _token_ok(self, request: web.Request) -> bool:
        if not self.token:
            return True
        given = request.headers.get("X-A2E-Token") or request.query.get("token", "")
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[7:]
        return token_matches(given, self.token)

    def _same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser's cross-site request (curl, scripts, OSC bridges)
            return True
        return origin in (f"http://{request.host}", f"https://{request.host}")

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.loopback:
            name = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
            if name not in _LOOPBACK_NAMES:
                return _error(403, f"host {request.host!r} refused: the console answers only to "
                              "127.0.0.1 and localhost")  # fmt: skip
        # the page and its assets hold no data: they load without the token, which the page
        # then takes from its own URL for the WebSocket and the commands
        if request.path != "/health" and request.path not in STATIC and not self._token_ok(request):
            return _error(401, "token required: add ?token=<token> (printed at start) or "
                          "an 'Authorization: Bearer <token>' header")  # fmt: skip
        if (request.method != "GET" or request.path == "/ws") and not self._same_origin(request):
            return _error(403, f"cross-origin request from {request.headers.get('Origin')!r} refused")
        return await handler(request)

    # ---- handlers ------------------------------------------------------------------------
    async def _page(self, request: web.Request) -> web.Response:
        body, ctype = self._static[request.path]
        resp = web.Response(body=body, content_type=ctype)
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; frame-ancestors 'none'"
        )
        return resp

    def _state_doc(self) -> dict[str, Any]:
        from bridge.control.monitor import NAMES
        from bridge.model.presets import PRESETS

        return {**self.control.monitor.snapshot(), "names": NAMES, "presets": list(PRESETS)}

    def _state_message(self) -> str:
        """The state as a WebSocket message, serialised once per snapshot for every client."""
        snap = self.control.monitor.snapshot()
        cached = self._message
        if cached is None or cached[0] is not snap:
            doc = {"type": "state", **self._state_doc()}
            cached = self._message = (snap, json.dumps(doc, separators=(",", ":")))
        return cached[1]

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self._state_doc())

    async def _metrics(self, request: web.Request) -> web.Response:
        from bridge.control.metrics import CONTENT_TYPE, Metrics

        metrics = getattr(self, "_metrics_obj", None)
        if metrics is None:
            metrics = self._metrics_obj = Metrics(self.control.bridge, self.control.monitor)
        resp = web.Response(body=metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE
        return resp

    async def _health(self, request: web.Request) -> web.Response:
        status, body = self.control.monitor.health()
        return web.json_response(body, status=status)

    async def _run_command(self, doc: Any, origin: str) -> tuple[int, dict[str, Any]]:
        try:
            ticket = self.control.command_from_json(doc, origin)
        except CommandError as e:
            return 400, {"ok": False, "error": str(e)}
        waited = 0.0
        while not ticket.done and waited < APPLY_WAIT_S:
            await asyncio.sleep(0.005)
            waited += 0.005
        if not ticket.done:
            return 202, {"ok": True, "queued": True, "note": "the hop loop has not applied it yet"}
        if ticket.error is not None:
            return 400, {"ok": False, "error": ticket.error}
        c = self.control.commands
        what = ticket.command.describe(c.names, c.outputs)
        return 200, {"ok": True, "command": what, "frame": ticket.frame, "message": ticket.message}

    async def _command(self, request: web.Request) -> web.Response:
        try:
            doc = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            return _error(400, 'the body must be JSON like {"command": "mute", "value": 1}')
        status, body = await self._run_command(doc, f"http {request.remote}")
        return web.json_response(body, status=status)

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=16 * 1024)
        await ws.prepare(request)
        self.clients += 1
        self._sockets.add(ws)
        origin = f"ws {request.remote}"

        async def push() -> None:
            try:
                while not ws.closed:
                    await ws.send_str(self._state_message())
                    await asyncio.sleep(1.0 / PUSH_HZ)
            except (ConnectionError, RuntimeError):  # the browser went away mid-send
                pass

        pusher = asyncio.ensure_future(push())
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    doc = json.loads(msg.data)
                except json.JSONDecodeError:
                    await ws.send_json({"type": "result", "ok": False, "error": "not JSON"})
                    continue
                rid = doc.get("id") if isinstance(doc, dict) else None
                status, body = await self._run_command(doc, origin)
                await ws.send_json({"type": "result", "id": rid, "status": status, **body})
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            pusher.cancel()
            self.clients -= 1
            self._sockets.discard(ws)
        return ws


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"ok": False, "error": message}, status=status)
