#!/usr/bin/env python3
"""Cost of the default post chain per performer-frame: one batched chain over [P, F, 52]
against P single-stream chains called one after the other (the hop loop of today).

    python scripts/bench_post_batch.py                 # batched and looped, P = 1, 8, 64, 256
    python scripts/bench_post_batch.py --mode loop     # only the loop (runs on older checkouts too)

Prints one line per (mode, P, F): microseconds per performer-frame (best of --repeat runs of
--seconds each), and the same with the output guard in front (what the hop loop runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.config import parse_config  # noqa: E402
from bridge.post import build_post_chain  # noqa: E402
from bridge.post.base import FrameContext  # noqa: E402
from bridge.post.finite import OutputGuard  # noqa: E402


def inputs(p: int, f: int, blocks: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Model output and frame loudness: each performer talks 1 s, pauses 1 s, on its own phase."""
    rng = np.random.default_rng(seed)
    values = rng.random((blocks, p, f, 52), dtype=np.float32)
    t = (np.arange(blocks * f).reshape(blocks, 1, f) + 7 * np.arange(p).reshape(1, p, 1)) // 30 % 2
    rms = np.where(t == 0, 0.05, 1e-4).astype(np.float32)
    return values, rms


def run_batched(p: int, f: int, seconds: float, guard: bool) -> float:
    cfg = parse_config({"post": {"blink": {"seed": 1}}}).post
    blocks = 300
    chain, g = build_post_chain([cfg] * p), OutputGuard(performers=p)
    values, rms = inputs(p, f, blocks)
    work = np.empty((p, f, 52), np.float32)
    head = np.zeros((p, f, 9), np.float32)
    first = np.zeros(p, np.int64)
    n, t0 = 0, time.perf_counter()
    while True:
        for b in range(blocks):
            work[...] = values[b]
            if guard:
                g.check(work, None, first)
            chain.process(work, FrameContext(first, rms[b], None, head))
            first += f
        n += blocks
        if time.perf_counter() - t0 >= seconds:
            break
    return (time.perf_counter() - t0) / (n * p * f)


def run_loop(p: int, f: int, seconds: float, guard: bool) -> float:
    cfg = parse_config({"post": {"blink": {"seed": 1}}}).post
    blocks = 300
    chains = [build_post_chain(cfg) for _ in range(p)]
    guards = [OutputGuard() for _ in range(p)]
    values, rms = inputs(p, f, blocks)
    work = np.empty((p, f, 52), np.float32)
    head = np.zeros((f, 9), np.float32)
    first = 0
    n, t0 = 0, time.perf_counter()
    while True:
        for b in range(blocks):
            work[...] = values[b]
            for i in range(p):
                if guard:
                    guards[i].check(work[i], None, first)
                chains[i].process(work[i], FrameContext(first, rms[b, i], None, head))
            first += f
        n += blocks
        if time.perf_counter() - t0 >= seconds:
            break
    return (time.perf_counter() - t0) / (n * p * f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["both", "batched", "loop"], default="both")
    ap.add_argument("--performers", default="1,8,64,256")
    ap.add_argument("--frames", default="1,2")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    modes = ["batched", "loop"] if args.mode == "both" else [args.mode]
    fns = {"batched": run_batched, "loop": run_loop}
    print("mode     P    F   chain us/perf-frame   guard+chain us/perf-frame")
    for f in (int(x) for x in args.frames.split(",")):
        for p in (int(x) for x in args.performers.split(",")):
            for mode in modes:
                chain = min(fns[mode](p, f, args.seconds, False) for _ in range(args.repeat))
                both = min(fns[mode](p, f, args.seconds, True) for _ in range(args.repeat))
                print(f"{mode:7s} {p:4d} {f:3d}   {chain * 1e6:10.2f}   {both * 1e6:10.2f}", flush=True)


if __name__ == "__main__":
    main()
