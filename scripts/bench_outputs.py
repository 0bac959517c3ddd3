"""Per-frame cost of each output: ``Output.publish`` (encode + send to a real loopback
receiver) and the encoder alone, in microseconds per frame (best of several repeats).

    python3 scripts/bench_outputs.py [--frames 3000] [--repeats 7] [--performers 1]

With ``--performers N`` the subject-carrying kinds (livelink, osc arkit, zmq) are built to
serve N performers and frames cycle through them, so the figure is per performer-frame.
The receivers are bound but never read: the kernel drops what overflows, which costs the
sender nothing more (UDP), and ZeroMQ has a connected SUB that is drained between repeats.
"""

from __future__ import annotations

import argparse
import inspect
import socket
import timeit

import numpy as np
import zmq

from bridge.config import OutputConfig
from bridge.frame import FaceFrame
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
        f = FaceFrame(k, rng.random(52, dtype=np.float32), 0.0, (rng.random(9, dtype=np.float32) - 0.5) * 0.1,
                      "", 0.5)  # fmt: skip
        if performers > 1:
            f.performer = k % performers
        out.append(f)
    return out


def build(cfg: OutputConfig, performers: int):
    if "performers" in inspect.signature(build_output).parameters:
        return build_output(cfg, [(i, None if performers == 1 else f"P{i}") for i in range(performers)])
    assert performers == 1, "this checkout's build_output serves one performer"
    return build_output(cfg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--performers", type=int, default=1)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    fs = frames(a.frames, a.performers)
    print(f"{'kind':<18} {'publish µs':>10} {'encode µs':>10}   ({a.performers} performer(s), per performer-frame)")
    for name, cfg in configs(port).items():
        if a.only and a.only not in name:
            continue
        n = a.performers if name in SUBJECT_KINDS else 1
        out = build(cfg, n)
        sub = None
        if cfg.kind == "zmq":
            sub = zmq.Context.instance().socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(out.transport.last_endpoint)
        publish = out.publish
        enc = getattr(out, "encoder", None)
        one = getattr(enc, "encode_view", None) or getattr(enc, "packet_views", None)
        encs = getattr(out, "encoders", None)

        def run_publish() -> None:
            for f in fs:
                publish(f)

        def run_encode() -> None:
            for f in fs:
                one(f)

        def drain() -> None:
            while sub is not None and sub.poll(0):
                sub.recv()

        best_p = min(timeit.repeat(run_publish, setup=drain, number=1, repeat=a.repeats)) / len(fs) * 1e6
        best_e = float("nan")
        if one is not None and (n == 1 or encs is None):
            best_e = min(timeit.repeat(run_encode, number=1, repeat=a.repeats)) / len(fs) * 1e6
        print(f"{name:<18} {best_p:10.2f} {best_e:10.2f}")
        out.close()
        if sub is not None:
            sub.close(linger=0)


if __name__ == "__main__":
    main()
