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

import dataclasses
import platform
import socket
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any

from bridge.config import BridgeConfig, OutputConfig, PerformerConfig
from bridge.config import _window as window_check
from bridge.errors import BridgeError

BENCH_RATE = 48_000


class LiveLinkOrderCheck:
    """A UDP receiver that records Live Link frame numbers: lost, duplicated, out of order."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.frames: dict[bytes, list[int]] = {}  #: frame numbers per subject
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(2048)
            except TimeoutError:
                continue
            (id_len,) = struct.unpack_from(">i", data, 1)
            (subj_len,) = struct.unpack_from(">i", data, 5 + id_len)
            subject = data[9 + id_len : 9 + id_len + subj_len]
            (frame,) = struct.unpack_from(">i", data, 9 + id_len + subj_len)
            self.frames.setdefault(subject, []).append(frame)

    def finish(self, expected_published: int) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        per = self.frames.values()
        unique = sum(len(set(f)) for f in per)
        return {
            "received": sum(len(f) for f in per),
            "duplicates": sum(len(f) - len(set(f)) for f in per),
            "out_of_order": sum(1 for f in per for a, b in zip(f, f[1:], strict=False) if b <= a),
            "not_received": max(expected_published - unique, 0),
        }


class Counter:
    """Counts datagrams or ZeroMQ messages on a background thread."""

    def __init__(self, recv: Any, close: Any) -> None:
        self.count = 0
        self._recv, self._close = recv, close
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._recv():
                self.count += 1

    def finish(self) -> int:
        self._stop.set()
        self._thread.join()
        self._close()
        return self.count


def _udp_counter() -> tuple[int, Counter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)

    def recv() -> bool:
        try:
            sock.recv(65536)
            return True
        except TimeoutError:
            return False

    return sock.getsockname()[1], Counter(recv, sock.close)


def _zmq_counter(endpoint: str) -> Counter:
    import zmq

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 200)
    sub.connect(endpoint)

    def recv() -> bool:
        try:
            sub.recv()
            return True
        except zmq.Again:
            return False

    return Counter(recv, lambda: sub.close(linger=0))


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
        ll = LiveLinkOrderCheck()
        osc_port, osc_count = _udp_counter()
        outputs = (
            OutputConfig(kind="livelink", port=ll.port),
            OutputConfig(kind="osc", port=osc_port),
            OutputConfig(kind="zmq", endpoint="tcp://127.0.0.1:*", format="json"),
        )
        cfg = cfg.replace(model=model_cfg, schedule=sched, outputs=outputs)
        if streams is not None:
            cast = tuple(PerformerConfig(name=f"s{c}", subject=f"S{c}", post=cfg.post,
                                         input=dataclasses.replace(cfg.input, channel=c))
                         for c in range(streams))  # fmt: skip
            cfg = cfg.replace(performers=cast)
        bridge = Bridge(cfg, duration=seconds)
        zmq_out = bridge.outputs[2]
        zmq_count = _zmq_counter(zmq_out.transport.last_endpoint)
        try:
            stats = bridge.run().as_dict()
        finally:
            bridge.close()
        received = ll.finish(stats["frames_published"])
        osc_received = osc_count.finish()
        zmq_received = zmq_count.finish()
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
