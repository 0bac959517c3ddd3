"""``a2e-bridge bench``: the whole pipeline at real-time pace, measured end to end.

A speech-like file (48 kHz, so resampling is part of the cost) is played at
real time through the full pipeline into all three outputs, each with a real
receiver on loopback.  The Live Link receiver checks what users care about
most: every frame number arrives once, in order (per subject).

``--streams N``: N performers, each on its own channel of one N-channel file of
distinct speech-like audio (16 kHz, each channel the signal shifted by a different
offset), played at real time by one reader (no thread per stream), into the same
outputs, each performer under its own subject.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import socket
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from bridge.config import BridgeConfig, OutputConfig, PerformerConfig
from bridge.config import _window as window_check
from bridge.errors import BridgeError

BENCH_RATE = 48_000


#: Receive buffer asked for on every receiver socket: a burst of N performers x 30 fps
#: must wait in the kernel, not be dropped, while the receiver process is descheduled.
RCVBUF_BYTES = 32 << 20
#: Seconds the receiver process is given to start, to connect, and to drain and answer.
RECEIVER_START_S = 30.0
RECEIVER_REPLY_S = 10.0
#: Quiet time that ends the drain after ``stop``; the whole drain is bounded by RECEIVER_REPLY_S / 2.
DRAIN_QUIET_S = 0.2


def _big_rcvbuf(sock: socket.socket) -> int:
    """Ask for RCVBUF_BYTES (SO_RCVBUFFORCE passes net.core.rmem_max where allowed) and return
    what the kernel granted (Linux reports twice the requested size, its bookkeeping included)."""
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(socket.SOL_SOCKET, force, RCVBUF_BYTES)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


class LiveLinkOrder:
    """Live Link frame numbers per subject, checked as they arrive: duplicated, out of order."""

    def __init__(self) -> None:
        self.received = 0
        self.duplicates = 0
        self.out_of_order = 0
        self._seen: dict[bytes, set[int]] = {}
        self._last: dict[bytes, int] = {}

    def add(self, data: bytes) -> None:
        try:
            (id_len,) = struct.unpack_from(">i", data, 1)
            (subj_len,) = struct.unpack_from(">i", data, 5 + id_len)
            subject = data[9 + id_len : 9 + id_len + subj_len]
            (frame,) = struct.unpack_from(">i", data, 9 + id_len + subj_len)
        except struct.error:
            return  # not a Live Link frame packet
        self.received += 1
        seen = self._seen.setdefault(subject, set())
        if frame in seen:
            self.duplicates += 1
        seen.add(frame)
        last = self._last.get(subject)
        if last is not None and frame <= last:
            self.out_of_order += 1
        self._last[subject] = frame

    def summary(self) -> dict[str, int]:
        unique = sum(len(s) for s in self._seen.values())
        return {"received": self.received, "duplicates": self.duplicates,
                "out_of_order": self.out_of_order, "unique": unique}  # fmt: skip


def serve_receivers() -> None:
    """The receiver process (``ReceiverProcess``): Live Link and OSC on UDP, a ZeroMQ SUB, one
    poll loop, so the bench process keeps its interpreter to the bridge being measured.

    Protocol, one JSON line each way on stdin/stdout: it announces its ports; ``{"zmq": endpoint}``
    connects the SUB (answered ``{"zmq_connected": true}``); ``{"stop": true}`` drains what is
    queued and answers the counts.  End of stdin (the bench ended, however) ends it at once.
    """
    import os
    import signal
    import sys

    import zmq

    for sig in (signal.SIGINT, signal.SIGHUP):  # the bench ends it through stdin, never a signal
        signal.signal(sig, signal.SIG_IGN)
    ctx = zmq.Context()
    ll_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    osc_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    granted = {"livelink": _big_rcvbuf(ll_sock), "osc": _big_rcvbuf(osc_sock)}
    for s in (ll_sock, osc_sock):
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 0)  # never drop on our side; the bridge's PUB keeps its own limit
    sub.setsockopt(zmq.RCVBUF, RCVBUF_BYTES)
    sub.setsockopt(zmq.LINGER, 0)
    order = LiveLinkOrder()
    osc_count = zmq_count = 0

    def say(doc: dict[str, Any]) -> None:
        os.write(1, (json.dumps(doc) + "\n").encode())

    say({"pid": os.getpid(), "livelink_port": ll_sock.getsockname()[1], "osc_port": osc_sock.getsockname()[1],
         "rcvbuf_requested_bytes": RCVBUF_BYTES, "rcvbuf_granted_bytes": granted})  # fmt: skip
    poller = zmq.Poller()
    for s in (ll_sock, osc_sock, sub):
        poller.register(s, zmq.POLLIN)
    poller.register(0, zmq.POLLIN)
    stdin = b""
    drain_until: float | None = None
    try:
        while True:
            ready = dict(poller.poll(DRAIN_QUIET_S * 1000 if drain_until else 1000))
            if ll_sock.fileno() in ready:  # the Poller answers plain sockets by file number
                while True:
                    try:
                        order.add(ll_sock.recv(2048))
                    except BlockingIOError:
                        break
            if osc_sock.fileno() in ready:
                while True:
                    try:
                        osc_sock.recv(65536)
                        osc_count += 1
                    except BlockingIOError:
                        break
            if sub in ready:
                while True:
                    try:
                        sub.recv(zmq.NOBLOCK)
                        zmq_count += 1
                    except zmq.Again:
                        break
            if drain_until is not None and (not ready or time.monotonic() > drain_until):
                say({"livelink": order.summary(), "osc": osc_count, "zmq": zmq_count})
                return
            if 0 in ready:
                chunk = os.read(0, 4096)
                if not chunk:
                    return  # the bench is gone
                stdin += chunk
                while b"\n" in stdin:
                    line, stdin = stdin.split(b"\n", 1)
                    command = json.loads(line)
                    if "zmq" in command:
                        sub.connect(command["zmq"])
                        say({"zmq_connected": True})
                    if command.get("stop"):
                        poller.unregister(0)
                        drain_until = time.monotonic() + RECEIVER_REPLY_S / 2
    finally:
        ll_sock.close()
        osc_sock.close()
        sub.close(linger=0)
        ctx.term()
        sys.stdout.flush()


class ReceiverProcess:
    """The bench's receivers in a child process (``serve_receivers``), so that at hundreds of
    streams they neither take the interpreter lock from the hop loop nor fall behind and
    overflow their socket buffers.  It always ends: told to stop, else its stdin closes (which
    also happens when the bench dies, however), else it is killed by PID."""

    def __init__(self, log_path: str) -> None:
        import os
        import subprocess
        import sys

        import bridge

        env = dict(os.environ)
        root = str(Path(bridge.__file__).resolve().parent.parent)  # the child imports this same bridge
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from bridge.bench import serve_receivers; serve_receivers()"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                start_new_session=True,  # Ctrl-C goes to the bench, which then ends it
            )  # fmt: skip
        self._buffer = b""
        try:
            self.hello = self._read(RECEIVER_START_S, "start")
        except BaseException:
            self.close()
            raise
        self.pid: int = self.hello["pid"]
        self.livelink_port: int = self.hello["livelink_port"]
        self.osc_port: int = self.hello["osc_port"]

    def _read(self, timeout: float, what: str) -> dict[str, Any]:
        import os
        import select

        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            chunk = os.read(fd, 65536) if left > 0 and select.select([fd], [], [], left)[0] else None
            if not chunk:
                raise self._failed(what, f"timed out after {timeout:g} s" if chunk is None
                                   else f"exited ({self.proc.wait()})")  # fmt: skip
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _send(self, doc: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(doc) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            raise self._failed("run", f"exited ({self.proc.poll()})") from None

    def _failed(self, what: str, why: str) -> BridgeError:
        log = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        return BridgeError(f"bench receiver process: {what} {why}" + (f": {log[-1]}" if log else ""))

    def connect_zmq(self, endpoint: str) -> None:
        self._send({"zmq": endpoint})
        self._read(RECEIVER_REPLY_S, "connect")

    def finish(self, expected_published: int) -> tuple[dict[str, int], int, int]:
        """Stop, drain, and return the Live Link order check, OSC bundles and ZeroMQ messages."""
        self._send({"stop": True})
        counts = self._read(RECEIVER_REPLY_S, "stop")
        self.close()
        ll = counts["livelink"]
        unique = ll.pop("unique")
        ll["not_received"] = max(expected_published - unique, 0)
        return ll, counts["osc"], counts["zmq"]

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "rcvbuf_requested_bytes": self.hello["rcvbuf_requested_bytes"],
                "rcvbuf_granted_bytes": self.hello["rcvbuf_granted_bytes"]}  # fmt: skip

    def close(self) -> None:
        """End the process whatever state it is in; safe to call twice."""
        import subprocess

        if self.proc.poll() is None:
            with contextlib.suppress(OSError):  # it died already: the pipe is broken
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            try:
                self.proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # SIGKILL to its PID
                self.proc.wait(timeout=5.0)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def run_bench(
    *,
    model: str,
    seconds: float,
    input_file: str | None = None,
    providers: str | None = None,
    lookahead: int | None = None,
    window_s: float | None = None,
    cuda_graph: bool | None = None,
    config: BridgeConfig | None = None,
    streams: int | None = None,
) -> dict[str, Any]:
    """Run the pipeline for ``seconds`` of audio and return the stats document (``streams``:
    that many performers, each from its own channel of one file)."""
    import soundfile

    from bridge.cli.common import apply_overrides
    from bridge.engine import Bridge
    from bridge.signals import speech_like

    cfg = config or BridgeConfig()
    with tempfile.TemporaryDirectory(prefix="a2e-bench-") as tmp:
        if streams is not None:
            if input_file is not None:
                raise BridgeError("--streams plays its own N-channel audio: leave out --input")
            input_file = str(Path(tmp) / f"speech16k-{streams}ch.wav")
            write_streams(input_file, streams, seconds)
        elif input_file is None:
            input_file = str(Path(tmp) / "speech48k.wav")
            soundfile.write(input_file, speech_like(seconds, BENCH_RATE), BENCH_RATE)
        cfg = apply_overrides(cfg, input_file=input_file, model=model, realtime=True)
        # The benchmark measures the model it was given: no switching to a fallback.
        model_cfg = dataclasses.replace(cfg.model, fallback="")
        if cuda_graph is not None:
            model_cfg = dataclasses.replace(model_cfg, cuda_graph=cuda_graph)
        if window_s is not None:
            problem = window_check(window_s)
            if problem:
                raise BridgeError(f"--window {window_s:g} {problem}")
            model_cfg = dataclasses.replace(model_cfg, window_s=window_s)
        if providers:
            model_cfg = dataclasses.replace(model_cfg, providers=tuple(providers.split(",")))
        sched = cfg.schedule
        if lookahead is not None:
            sched = dataclasses.replace(sched, lookahead_frames=lookahead)
        receivers = ReceiverProcess(str(Path(tmp) / "receivers.log"))  # before the bridge starts
        try:
            outputs = (
                OutputConfig(kind="livelink", port=receivers.livelink_port),
                OutputConfig(kind="osc", port=receivers.osc_port),
                OutputConfig(kind="zmq", endpoint="tcp://127.0.0.1:*", format="json"),
            )
            cfg = cfg.replace(model=model_cfg, schedule=sched, outputs=outputs)
            if streams is not None:
                cast = tuple(PerformerConfig(name=f"s{c}", subject=f"S{c}", post=cfg.post,
                                             input=dataclasses.replace(cfg.input, channel=c))
                             for c in range(streams))  # fmt: skip
                cfg = cfg.replace(performers=cast)
            bridge = Bridge(cfg, duration=seconds)
            try:
                receivers.connect_zmq(bridge.outputs[2].transport.last_endpoint)
                stats = bridge.run().as_dict()
            finally:
                bridge.close()
            received, osc_received, zmq_received = receivers.finish(stats["frames_published"])
        finally:
            receivers.close()
    if stats["frames_published"] == 0:
        raise BridgeError("the benchmark published no frames")
    if streams is not None:
        per = stats.pop("performers", None) or {"s0": {"frames_published": stats["frames_published"],
                                                       "frames_dropped": stats["frames_dropped"]}}
        stats["streams"] = streams
        stats.setdefault("batch", bridge.batch_summary())
        for key in ("frames_published", "frames_dropped"):
            values = [d[key] for d in per.values()]
            stats[f"{key}_per_stream"] = {"min": min(values), "max": max(values)}
    stats.update(
        {
            "seconds": seconds,
            "livelink_receiver": received,
            "osc_bundles_received": osc_received,
            "zmq_messages_received": zmq_received,
            "receivers": receivers.describe(),
            "window_s": cfg.model.window_s,
            "cuda_graph": cfg.model.cuda_graph,
            "lookahead_frames": cfg.schedule.lookahead_frames,
            "machine": f"{platform.node()} {platform.machine()} {_cpu_count()} cores",
        }
    )
    return stats


def write_streams(path: str, streams: int, seconds: float, rate: int = 16_000) -> None:
    """``streams`` channels of distinct speech-like audio (16-bit, 16 kHz), written a second at
    a time so hundreds of channels never sit in memory at once."""
    import numpy as np
    import soundfile

    from bridge.signals import speech_like

    if not 1 <= streams <= 1024:
        raise BridgeError(f"--streams {streams}: allowed 1..1024")
    base = speech_like(max(seconds, 7.0) + 1.0, rate)
    n = round(seconds * rate)
    # each channel the same speech shifted by its own offset: distinct audio, same loudness
    offsets = (np.arange(streams) * 7919 * 13) % base.shape[0]
    with soundfile.SoundFile(path, "w", rate, streams, subtype="PCM_16") as f:
        for start in range(0, n, rate):
            t = np.arange(start, min(start + rate, n))
            f.write(base[(t[:, None] + offsets[None, :]) % base.shape[0]])


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
