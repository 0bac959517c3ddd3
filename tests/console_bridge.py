"""A bridge running in a thread with its live console on ephemeral ports, for the console tests.

Real parts only: a WAV file played at real time through the oracle model (every output
value a known function of the audio), a real Live Link receiver on loopback, the console's
real aiohttp server and python-osc server (port 0: any free port)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from bridge.blendshapes import ARKIT_NAMES, LIVELINK_NAMES
from bridge.config import parse_config
from bridge.engine import Bridge
from bridge.modeltools.synth import oracle_value
from tests.receivers import LiveLinkReceiver

JAW = LIVELINK_NAMES.index("JawOpen")
BROW = LIVELINK_NAMES.index("BrowInnerUp")
EYE_BLINK = LIVELINK_NAMES.index("EyeBlinkLeft")


def oracle(level: float, name: str, identity: int = 0) -> float:
    """What the oracle sends for a frame of constant audio ``level`` under ARKit ``name``."""
    return oracle_value(level, ARKIT_NAMES.index(name), identity)


def write_levels(path: Path, segments: list[tuple[float, float]], rate: int = 16000) -> Path:
    """A WAV of constant levels: (seconds, level) after each other."""
    parts = [np.full(round(s * rate), level, dtype=np.float32) for s, level in segments]
    soundfile.write(str(path), np.concatenate(parts), rate, subtype="FLOAT")
    return path


def config(wav: Path, port: int, *, raw_post: dict | None = None, console: dict | None = None,
           control: dict | None = None, performers: list | None = None) -> dict:  # fmt: skip
    doc: dict[str, Any] = {
        "input": {"kind": "file", "file": str(wav), "realtime": True},
        "model": {"preset": "oracle", "providers": ["cpu"], "threads": 1, "fallback": ""},
        "console": {"enabled": True, "port": 0, **(console or {})},
        "control": {"enabled": True, "osc_port": 0, **(control or {})},
        "output": [{"kind": "livelink", "port": port, "subject": "Tester"}],
    }
    if raw_post is not None:
        doc["post"] = raw_post
    if performers is not None:
        doc["performer"] = performers
    return doc


class Running:
    """A started bridge: its console URL, OSC port, receiver and the thread running it."""

    def __init__(self, bridge: Bridge, receiver: LiveLinkReceiver) -> None:
        self.bridge, self.receiver = bridge, receiver
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.bridge.run(self.stop)
        except BaseException as e:  # reported by the test
            self.error = e

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.bridge.control.web.port}"

    @property
    def osc_port(self) -> int:
        return int(self.bridge.control.osc.port)

    def get(self, path: str, headers: dict | None = None) -> tuple[int, Any]:
        return http("GET", self.url + path, None, headers)

    def post(self, doc: Any, headers: dict | None = None) -> tuple[int, Any]:
        return http("POST", self.url + "/api/command", doc, headers)

    def wait_frames(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.receiver.packets) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.receiver.packets) >= n, f"only {len(self.receiver.packets)} frames; {self.error}"

    def packets_from(self, frame: int, count: int, timeout: float = 5.0) -> list[dict]:
        """``count`` packets numbered ``frame`` on (waits for them)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [p for p in list(self.receiver.packets) if p["frame"] >= frame]
            if len(got) >= count:
                return got[:count]
            time.sleep(0.01)
        raise AssertionError(f"no {count} packets from frame {frame}; {self.error}")


def http(method: str, url: str, doc: Any = None, headers: dict | None = None,
         timeout: float = 10.0) -> tuple[int, Any]:  # fmt: skip
    """A real HTTP request: (status, JSON body or text)."""
    data = json.dumps(doc).encode() if doc is not None and not isinstance(doc, bytes) else doc
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode()


@contextlib.contextmanager
def running(tmp_path: Path, segments: list[tuple[float, float]] | None = None, raw: bool = True,
            **cfg: Any) -> Iterator[Running]:  # fmt: skip
    """A bridge on a constant-level file (default 0.2 for 60 s), console and OSC control on."""
    wav = write_levels(tmp_path / "levels.wav", segments or [(60.0, 0.2)])
    receiver = LiveLinkReceiver()
    bridge = Bridge(parse_config(config(wav, receiver.port, **cfg), "test.toml"), raw=raw)
    r = Running(bridge, receiver)
    r.thread.start()
    try:
        r.wait_frames(5)
        yield r
    finally:
        r.stop.set()
        r.thread.join(10)
        bridge.close()
        receiver.close()
    assert r.error is None, r.error
