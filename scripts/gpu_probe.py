"""Measure ways of calling the model on the CUDA provider (run on the GPU machine).

    python scripts/gpu_probe.py MODEL.onnx [--runs 300]

Compares plain ``session.run`` with numpy in/out, IOBinding with the input and
outputs kept on the device, and IOBinding with CUDA graphs (fixed shapes), and
prints p50/p99 per call in ms.  Decides how the runner calls a CUDA session.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort


def timed(fn, runs: int) -> tuple[float, float]:
    for _ in range(10):
        fn()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        t.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(t, 50)), float(np.percentile(t, 99))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    audio = (np.random.default_rng(0).standard_normal((1, 16000)) * 0.1).astype(np.float32)
    ident = np.zeros((1, 12), np.float32)
    ident[0, 0] = 1
    feeds = {"audio": audio, "identity": ident}

    for label, opts in [("default", {}), ("heuristic", {"cudnn_conv_algo_search": "HEURISTIC"})]:
        s = ort.InferenceSession(args.model, providers=[("CUDAExecutionProvider", opts)])
        assert s.get_providers()[0] == "CUDAExecutionProvider", s.get_providers()
        p50, p99 = timed(lambda s=s: s.run(["blendshapes", "asr_logits"], feeds), args.runs)
        print(f"run numpy [{label}]: p50 {p50:.3f} ms  p99 {p99:.3f} ms")
        p50, p99 = timed(lambda s=s: s.run(["blendshapes"], feeds), args.runs)
        print(f"run numpy blendshapes only [{label}]: p50 {p50:.3f} ms  p99 {p99:.3f} ms")

    for graph in (False, True):
        opts = {"enable_cuda_graph": "1"} if graph else {}
        s = ort.InferenceSession(args.model, providers=[("CUDAExecutionProvider", opts)])
        x = ort.OrtValue.ortvalue_from_numpy(audio, "cuda", 0)
        i = ort.OrtValue.ortvalue_from_numpy(ident, "cuda", 0)
        b_out = ort.OrtValue.ortvalue_from_shape_and_type([1, 30, 52], np.float32, "cuda", 0)
        a_out = ort.OrtValue.ortvalue_from_shape_and_type([1, 49, 32], np.float32, "cuda", 0)
        bind = s.io_binding()
        bind.bind_ortvalue_input("audio", x)
        bind.bind_ortvalue_input("identity", i)
        bind.bind_ortvalue_output("blendshapes", b_out)
        bind.bind_ortvalue_output("asr_logits", a_out)

        def call(s=s, bind=bind, x=x, b_out=b_out) -> np.ndarray:
            x.update_inplace(audio)
            s.run_with_iobinding(bind)
            return b_out.numpy()

        ref = s.run(["blendshapes"], feeds)[0] if not graph else None
        out = call()
        if ref is not None:
            print("iobinding matches run:", np.allclose(out, ref, atol=1e-5))
        p50, p99 = timed(call, args.runs)
        print(f"iobinding cuda_graph={graph}: p50 {p50:.3f} ms  p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
