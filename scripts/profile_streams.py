"""Where the hop loop's time goes in ``bench --streams N``: a cProfile of ``Bridge.run``.

    python3 scripts/profile_streams.py --model synthetic-full --providers cuda,cpu \
        --streams 256 --window 1.0 --seconds 30

Prints the bench's summary and the functions sorted by own time.  A diagnostic, not a
benchmark: profiling slows every Python call, so the figures are relative.  (On Python
3.12 the profiler sees every thread; on 3.11 only the hop loop's.)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats

from bridge import bench
from bridge import engine as engine_module


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="synthetic")
    ap.add_argument("--providers", default=None)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--window", type=float, default=0.5)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    prof = cProfile.Profile()
    run = engine_module.Bridge.run

    def profiled_run(self, stop=None):  # type: ignore[no-untyped-def]
        prof.enable()
        try:
            return run(self, stop)
        finally:
            prof.disable()

    engine_module.Bridge.run = profiled_run  # type: ignore[method-assign]
    doc = bench.run_bench(model=a.model, seconds=a.seconds, streams=a.streams, window_s=a.window,
                          providers=a.providers)  # fmt: skip
    keys = ("frames_published", "frames_dropped", "stride", "overhead_ms_per_frame", "latency_ms",
            "inference_ms")  # fmt: skip
    print({k: doc.get(k) for k in keys})
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(a.top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
