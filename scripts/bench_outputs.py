"""Per-frame cost of each output: ``Output.publish`` (encode + send to a real loopback
receiver) and the encoder alone, in microseconds per frame (best of several repeats).

    python3 scripts/bench_outputs.py [--frames 500] [--repeats 40] [--performers 1] [--only KIND]

With ``--performers N`` the subject-carrying kinds (livelink, osc arkit, zmq) are built to
serve N performers and frames cycle through them, so the figure is per performer-frame.
The receivers are bound but never read: the kernel drops what overflows, which costs the
sender nothing more (UDP), and ZeroMQ has a connected SUB that is drained between repeats.

    python3 scripts/bench_outputs.py --batch [--performers 256] [--strides 1 2] [--batches 200]

``--batch`` compares, per output kind, ``Output.publish_batch`` of one FrameBatch of N
performers x stride frames on the frame-by-frame path (a FaceFrame and a ``publish`` per
frame, as before batches) and on the batch path (bridge/outputs/batch.py): the median
(p50) over ``--batches`` batches, in µs per performer-frame.  UDP receivers are bound with
a big buffer and never read (loopback drops what overflows at the receiver, costing the
sender nothing more); the ZeroMQ SUB is drained between batches, outside the timing.
"""

from __future__ import annotations

import argparse
import inspect
import socket
import time
import timeit

import numpy as np
import zmq

from bridge.config import OutputConfig
from bridge.frame import FaceFrame, FrameBatch
from bridge.outputs import build_output

SUBJECT_KINDS = ("livelink", "osc arkit", "zmq json", "zmq livelink")


def configs(port: int) -> dict[str, OutputConfig]:
    return {
        "livelink": OutputConfig(kind="livelink", port=port),
        "osc arkit": OutputConfig(kind="osc", port=port),
        "osc arkit speech": OutputConfig(kind="osc", port=port, speech=True),
        "osc vmc": OutputConfig(kind="osc", scheme="vmc", port=port),
        "zmq json": OutputConfig(kind="zmq", endpoint="tcp://127.0.0.1:*"),
        "zmq livelink": OutputConfig(kind="zmq", format="livelink", endpoint="tcp://127.0.0.1:*"),
        "vrchat arkit": OutputConfig(kind="vrchat", names="arkit", port=port, listen_port=False),
        "vrchat unified": OutputConfig(kind="vrchat", names="unified", port=port, listen_port=False),
        "ifacialmocap": OutputConfig(kind="ifacialmocap", port=port, listen_port=False),
        "console udp": OutputConfig(kind="console", transport="udp", port=port),
    }


def frames(n: int, performers: int) -> list[FaceFrame]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        values = rng.random(52, dtype=np.float32)
        head = (rng.random(9, dtype=np.float32) - 0.5) * 0.1
        f = FaceFrame(k // performers, values, 0.0, head, "", 0.5)
        if performers > 1:  # (so that the script also measures a checkout without performers)
            f.performer = k % performers
        out.append(f)
    return out


def build(cfg: OutputConfig, performers: int):
    if "performers" in inspect.signature(build_output).parameters:
        return build_output(cfg, [(i, None if performers == 1 else f"P{i}") for i in range(performers)])
    assert performers == 1, "this checkout's build_output serves one performer"
    return build_output(cfg)


def measure(cfg: OutputConfig, performers: int, fs: list[FaceFrame], repeats: int) -> tuple[float, float]:
    """(publish, encode) in µs per frame, the best of ``repeats`` runs over ``fs``."""
    out = build(cfg, performers)
    sub = None
    if cfg.kind == "zmq":
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(out.transport.last_endpoint)
    publish = out.publish
    enc = out.encoder
    one = getattr(enc, "packet_views", None) or enc.encode_view

    def run_publish() -> None:
        for f in fs:
            publish(f)

    def run_encode() -> None:
        for f in fs:
            one(f)

    def drain() -> None:
        while sub is not None and sub.poll(0):
            sub.recv()

    try:
        best_p = min(timeit.repeat(run_publish, setup=drain, number=1, repeat=repeats)) / len(fs) * 1e6
        best_e = float("nan")
        if performers == 1:
            best_e = min(timeit.repeat(run_encode, number=1, repeat=repeats)) / len(fs) * 1e6
    finally:
        out.close()
        if sub is not None:
            sub.close(linger=0)
    return best_p, best_e


BATCH_KINDS = ("livelink", "osc arkit", "osc arkit speech", "zmq json", "zmq livelink")


def make_batch(performers: int, stride: int, first: int) -> FrameBatch:
    rng = np.random.default_rng(first)
    now = time.monotonic()
    return FrameBatch(
        performers=np.arange(performers, dtype=np.intp),
        first=np.full(performers, first, dtype=np.int64),
        values=rng.random((performers, stride, 52), dtype=np.float32),
        head=(rng.random((performers, stride, 9), dtype=np.float32) - 0.5) * 0.1,
        capture_time=np.full((performers, stride), now - 0.05) + np.arange(stride) / 30,
        subjects=[f"P{i}" for i in range(performers)],
        speech_prob=rng.random((performers, stride), dtype=np.float32),
        texts=[""] * performers,
        sent_at=now,
    )


def measure_batches(cfg: OutputConfig, performers: int, stride: int, batches: int, fast: bool) -> float:
    """Median µs per performer-frame of ``publish_batch`` over ``batches`` batches."""
    out = build(cfg, performers)
    if not fast:
        out.batch_sender = None
    sub = None
    if cfg.kind == "zmq":
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(out.transport.last_endpoint)
        time.sleep(0.3)
    blocks = [make_batch(performers, stride, k * stride) for k in range(8)]
    times = []
    try:
        for k in range(batches + 5):
            while sub is not None and sub.poll(0):
                sub.recv()
            t0 = time.perf_counter()
            out.publish_batch(blocks[k % len(blocks)])
            if k >= 5:  # the first batches build tables and routing
                times.append(time.perf_counter() - t0)
    finally:
        out.close()
        if sub is not None:
            sub.close(linger=0)
    return float(np.median(times)) / (performers * stride) * 1e6


def batch_main(a: argparse.Namespace, port: int) -> None:
    performers = a.performers or 256
    print(f"{'kind':<18} {'stride':>6} {'frames µs':>10} {'batch µs':>9} {'speed-up':>8}   "
          f"({performers} performers; p50 of {a.batches} batches; µs per performer-frame)")  # fmt: skip
    cfgs = configs(port)
    for name in BATCH_KINDS:
        if a.only and a.only not in name:
            continue
        for stride in a.strides:
            slow = measure_batches(cfgs[name], performers, stride, a.batches, fast=False)
            fast = measure_batches(cfgs[name], performers, stride, a.batches, fast=True)
            print(f"{name:<18} {stride:6d} {slow:10.2f} {fast:9.2f} {slow / fast:7.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", action="store_true", help="per-frame vs batch path of publish_batch")
    ap.add_argument("--strides", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--frames", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--performers", type=int, default=0, help="default 1 (256 with --batch)")
    ap.add_argument("--only", default="", help="only the kinds whose name contains this")
    a = ap.parse_args()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    if a.batch:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        batch_main(a, port)
        rx.close()
        return
    a.performers = a.performers or 1
    print(f"{'kind':<18} {'publish µs':>10} {'encode µs':>10}   "
          f"({a.performers} performer(s); µs per performer-frame)")  # fmt: skip
    for name, cfg in configs(port).items():
        if a.only and a.only not in name:
            continue
        n = a.performers if name in SUBJECT_KINDS else 1
        publish, encode = measure(cfg, n, frames(a.frames, n), a.repeats)
        print(f"{name:<18} {publish:10.2f} {encode:10.2f}")
    rx.close()


if __name__ == "__main__":
    main()
