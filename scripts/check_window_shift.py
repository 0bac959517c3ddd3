"""Check on a real device that windows moved on by the shift graph give the frames of whole windows.

    python3 scripts/check_device_io.py --providers cuda,cpu --batch 256 [--model PATH]

The tests check the same on the CPU (tests/test_device_io.py); this runs the CUDA path
(IOBinding, CUDA graphs) that only a GPU machine has, and times both ways of feeding a hop.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bridge.model.description import LAM
from bridge.model.hub import locate_model
from bridge.model.presets import get_preset
from bridge.model.runner import ModelRunner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="an ONNX LAM (default: synthetic-full)")
    ap.add_argument("--providers", default="cuda,cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--window", type=float, default=1.0)
    ap.add_argument("--hops", type=int, default=60)
    a = ap.parse_args()
    path = a.model or locate_model(get_preset("synthetic-full"))
    w = round(a.window * 16000)
    runner = ModelRunner(path, LAM, providers=a.providers.split(","), window_samples=w, max_batch=a.batch,
                         cuda_graph="cuda" in a.providers,
                         bind_device=None if "cuda" in a.providers else "cpu")  # fmt: skip
    rng = np.random.default_rng(0)
    stream = rng.uniform(-0.3, 0.3, (a.batch, w + 534 * (a.hops + 1))).astype(np.float32)
    end = w
    runner.infer_batch(np.ascontiguousarray(stream[:, :end]))
    whole_ms, shift_ms, worst = [], [], 0.0
    for _ in range(a.hops):
        k = 533 if end % 2 else 534
        t0 = time.perf_counter()
        got = runner.advance_batch(stream[:, end : end + k]).copy()
        shift_ms.append((time.perf_counter() - t0) * 1000)
        end += k
        t0 = time.perf_counter()
        windows = np.ascontiguousarray(stream[:, end - w : end])  # the gather the engine does otherwise
        want = runner.infer_batch(windows).copy()
        whole_ms.append((time.perf_counter() - t0) * 1000)
        worst = max(worst, float(np.abs(got - want).max()))
        runner.infer_batch(windows)  # the device holds these again: the next advance continues them
    slot = runner._slot(a.batch)  # what the last call copied to the host against the device's own
    if slot.fetch is not None:
        fetched = [x.copy() for x in slot.fetch.arrays]
        direct = [v.numpy() for v in slot.outputs]
        same = all(np.array_equal(x, y) for x, y in zip(fetched, direct, strict=True))
        t0 = time.perf_counter()
        for _ in range(10):
            [v.numpy() for v in slot.outputs]
        numpy_ms = (time.perf_counter() - t0) * 100
        t0 = time.perf_counter()
        for _ in range(10):
            slot.fetch.run()
        fetch_ms = (time.perf_counter() - t0) * 100
        print(f"outputs fetched into host arrays == OrtValue.numpy(): {same}; "
              f"OrtValue.numpy() {numpy_ms:.2f} ms, fetch {fetch_ms:.2f} ms per call")
        if not same:
            raise SystemExit("fetched outputs differ")
    print(f"{runner.provider} batch {a.batch} window {a.window} s: max |advanced - whole| = {worst:.2e}; "
          f"call with new samples p50 {np.percentile(shift_ms, 50):.2f} ms, "
          f"with whole windows (gather + call) p50 {np.percentile(whole_ms, 50):.2f} ms")
    if worst > 1e-3:
        raise SystemExit("advanced windows differ from whole windows")


if __name__ == "__main__":
    main()
