"""Real receivers on loopback for end-to-end tests: a UDP socket for Live Link, a
python-osc server, and a ZeroMQ SUB.  Each collects what it got on a thread."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Any

import zmq
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import BlockingOSCUDPServer

from tests.decoders import decode_livelink


class LiveLinkReceiver:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.packets: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self.packets.append(decode_livelink(self.sock.recv(4096)))

    def close(self) -> None:
        time.sleep(0.1)
        self._stop.set()
        self._t.join()
        self.sock.close()


class OscReceiver:
    """A python-osc server; ``frames`` maps a frame number to {address: args}."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, tuple]] = []
        disp = Dispatcher()
        disp.set_default_handler(lambda addr, *args: self.messages.append((addr, args)))
        self.server = BlockingOSCUDPServer(("127.0.0.1", 0), disp)
        self.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.port = self.server.server_address[1]
        self._t = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                   daemon=True)  # fmt: skip
        self._t.start()

    def close(self) -> None:
        time.sleep(0.2)
        self.server.shutdown()
        self.server.server_close()


class ZmqReceiver:
    def __init__(self, endpoint: str, topic: str) -> None:
        self.topic = topic.encode()
        self.sub = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, self.topic)
        self.sub.setsockopt(zmq.RCVHWM, 100000)
        self.sub.setsockopt(zmq.RCVTIMEO, 50)
        self.sub.connect(endpoint)
        self.messages: list[bytes] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(zmq.Again):
                self.messages.append(self.sub.recv())

    def payloads(self) -> list[bytes]:
        return [m[len(self.topic) + 1 :] for m in self.messages]

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.payloads()]

    def close(self) -> None:
        time.sleep(0.2)
        self._stop.set()
        self._t.join()
        self.sub.close(linger=0)


def wait_connected(seconds: float = 0.3) -> None:
    """ZeroMQ SUBs join asynchronously: give the connection a moment before publishing."""
    time.sleep(seconds)
