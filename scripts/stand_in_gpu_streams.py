"""``bench --streams N`` with a stand-in for a GPU model, on a machine without one.

    python3 scripts/stand_in_gpu_streams.py --streams 256 --model-ms 22 --window 0.5 --seconds 20

The model call is replaced by a sleep of ``--model-ms`` that, like ONNX Runtime's GPU call,
leaves the interpreter lock and the CPU free, and the sends and the model calls run on
threads of their own as they do with a GPU model (``--inline``: both in the hop thread).
Everything else (capture, histories, plans, post, encoders, sends, receivers) is the real
pipeline.  A diagnostic for the hop loop's own stalls: it prints the
bench's latency, the hop phases and the moments a hop started late (``wake`` over 10 ms).
Not a GPU figure: those come from ``scripts/gpu_streams.sh`` on the GPU machine.
"""

from __future__ import annotations

import argparse
import time

from bridge import bench, engine
from bridge import stats as stats_module
from bridge.model import runner as runner_module


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--model-ms", type=float, default=22.0)
    ap.add_argument("--window", type=float, default=0.5)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--inline", action="store_true", help="sends and model calls in the hop thread")
    a = ap.parse_args()
    late: list[tuple[float, float]] = []
    plain_init = stats_module.RunStats.__init__

    def init(self, *args, **kw):  # type: ignore[no-untyped-def]
        plain_init(self, *args, **kw)
        wake = self.phases["wake"]
        add = wake.add

        def add_and_note(ms: float) -> None:
            late.append((time.monotonic(), ms))
            add(ms)

        wake.add = add_and_note

    def model_call(self, windows, n, identities):  # type: ignore[no-untyped-def]
        time.sleep(a.model_ms / 1000.0)  # no lock held, no CPU used: a GPU call's shape
        return self._out[:n], (self._asr[:n] if self._asr is not None else None)

    stats_module.RunStats.__init__ = init  # type: ignore[method-assign]
    runner_module.ModelRunner._call = model_call  # type: ignore[method-assign]
    engine.Bridge._model_leaves_cpu = lambda self: not a.inline  # type: ignore[method-assign]
    d = bench.run_bench(model="synthetic-tiny", seconds=a.seconds, streams=a.streams, window_s=a.window)
    phases = d["hop_phases_ms"]
    print(f"{a.streams} streams, window {a.window} s, stand-in model {a.model_ms:g} ms: dropped "
          f"{d['frames_dropped']}, stride {d['stride']}, latency p50 {d['latency_ms']['p50']} p99 "
          f"{d['latency_ms']['p99']} ms; wake p50 {phases['wake']['p50']} p99 {phases['wake']['p99']} ms, "
          f"hop p50 {phases['hop']['p50']} ms, sends p50 {d['send_ms']['p50']} p99 {d['send_ms']['p99']} ms")
    t0 = late[0][0]
    stalls = [round(t - t0, 1) for t, ms in late if ms > 10.0]
    print(f"hops started over 10 ms late: {len(stalls)} of {len(late)}, at s = {stalls[:40]}")


if __name__ == "__main__":
    main()
