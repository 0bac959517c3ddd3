"""The batched model call alone: per-call cost of ``ModelRunner.infer_batch`` for B windows.

    python3 scripts/bench_batch.py --json OUT.json                     # the GPU run (CUDA provider)
    python3 scripts/bench_batch.py --providers cpu --size tiny --batches 1 8 --padded 5 --each 8

For each precision (fp32; fp16 surgical, converted from the same synthetic model) and
window, one runner prepared for ``max(batches + padded)`` windows: its start (session,
warm-up, and on CUDA the capture of one graph per bucket size 1, 2, 4, ..., max), then
p50/p99 per call for each batch size, and µs per stream-hop (p50 / B).  Sizes in
``--padded`` are not bucket sizes: they run padded up to the next bucket.  ``--each N``
(first precision and window, after all the others) starts a runner with one graph per size 1..N, for the
start time and exact-size cost of that choice; on CUDA a runner without graphs is timed
too.  Checks on the way: every batched row equals the same window run alone, and graphs
agree with the uncaptured run.  The JSON is rewritten after every step, so a run cut
short keeps what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.model.description import LAM  # noqa: E402
from bridge.model.runner import ModelRunner, batch_sizes  # noqa: E402
from bridge.modeltools.convert import convert_file  # noqa: E402
from bridge.modeltools.synth import synthesize  # noqa: E402

SAMPLE_RATE = 16_000


def timed(
    fn: Callable[[], object], seconds: float, min_runs: int = 20, max_runs: int = 400
) -> dict[str, Any]:
    """p50/p99/mean of ``fn`` in ms over about ``seconds`` of calls (after two untimed ones)."""
    fn()
    fn()
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    runs = int(min(max_runs, max(min_runs, seconds / max(once, 1e-6))))
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    ms = times * 1000.0
    return {
        "runs": runs,
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "max_ms": round(float(ms.max()), 3),
    }


def per_call(runner: ModelRunner, windows: np.ndarray, ids: np.ndarray, b: int, seconds: float) -> dict:
    """``timed`` for one batch size, with µs per stream-hop."""
    res = timed(lambda: runner.infer_batch(windows[:b], ids[:b]), seconds)
    res.update(batch=b, us_per_stream_hop=round(res["p50_ms"] * 1000 / b, 1))
    return res


def show(what: str, res: dict[str, Any]) -> None:
    runs_as = f" as {res['runs_as']:4d}" if "runs_as" in res else ""
    print(f"  {what:10s} B={res['batch']:4d}{runs_as}: p50 {res['p50_ms']:8.3f} ms  "
          f"p99 {res['p99_ms']:8.3f} ms  {res['us_per_stream_hop']:8.1f} us/stream-hop ({res['runs']} runs)",
          flush=True)  # fmt: skip


def row_check(runner: ModelRunner, windows: np.ndarray, ids: np.ndarray, n: int) -> float:
    """Largest difference between a batch of ``n`` and each of its windows run alone."""
    batch = runner.infer_batch(windows[:n], ids[:n]).copy()
    worst = 0.0
    for i in range(n):
        alone = runner.infer_batch(windows[i : i + 1], ids[i : i + 1])[0]
        worst = max(worst, float(np.abs(batch[i] - alone).max()))
    return worst


def gpu_memory_used_mib() -> int | None:
    """Device memory in use now (all processes), from nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20)  # fmt: skip
        return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--providers", default="cuda", help="cuda or cpu")
    ap.add_argument("--size", default="full", choices=["full", "tiny"], help="synthetic LAM size")
    ap.add_argument("--windows", type=float, nargs="+", default=[1.0, 0.5], help="window lengths, s")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256, 512])
    ap.add_argument("--padded", type=int, nargs="+", default=[5, 48, 100, 300],
                    help="batch sizes between buckets (run padded)")  # fmt: skip
    ap.add_argument("--each", type=int, default=64, help="one graph per size 1..N runner (0 = skip)")
    ap.add_argument("--seconds", type=float, default=1.5, help="timing per batch size, s")
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = one per core)")
    ap.add_argument("--budget-s", type=float, default=480, help="start no new step after this, s")
    ap.add_argument("--model-dir", default=None, help="where the models are built (default: a temp dir)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    import onnxruntime as ort

    t_start = time.perf_counter()
    cuda = args.providers == "cuda"
    providers = ["cuda", "cpu"] if cuda else ["cpu"]
    max_batch = max(args.batches + args.padded)
    doc: dict[str, Any] = {
        "command": "python3 scripts/bench_batch.py " + " ".join(sys.argv[1:]),
        "machine": {
            "gpu": gpu_name() if cuda else None,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "available_providers": ort.get_available_providers(),
        },
        "model": f"synthetic LAM {args.size}",
        "max_batch": max_batch,
        "buckets": list(batch_sizes(max_batch)),
        "configs": [],
        "notes": [],
    }

    def save() -> None:
        doc["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")

    def over_budget(what: str) -> bool:
        if time.perf_counter() - t_start > args.budget_s:
            doc["notes"].append(f"skipped (time budget): {what}")
            print(f"budget: skipping {what}", flush=True)
            return True
        return False

    work = Path(args.model_dir or tempfile.mkdtemp(prefix="bench-batch-"))
    t0 = time.perf_counter()
    paths = {"fp32": synthesize("lam", args.size, work / f"lam-{args.size}.onnx")}
    doc["build_fp32_s"] = round(time.perf_counter() - t0, 1)
    if "fp16" in args.precisions:
        t0 = time.perf_counter()
        paths["fp16"] = work / f"lam-{args.size}-fp16.onnx"
        convert_file(paths["fp32"], paths["fp16"], "surgical")
        doc["convert_fp16_s"] = round(time.perf_counter() - t0, 1)
    save()

    rng = np.random.default_rng(0)
    first = True
    extra: tuple = ()
    for precision in args.precisions:
        for window_s in args.windows:
            label = f"{precision} window {window_s:g} s"
            if over_budget(label):
                continue
            w = round(window_s * SAMPLE_RATE)
            windows = (0.1 * rng.standard_normal((max_batch, w))).astype(np.float32)
            ids = (np.arange(max_batch) % 12).astype(np.int64)
            t0 = time.perf_counter()
            runner = ModelRunner(paths[precision], LAM, providers=providers, threads=args.threads,
                                 window_samples=w, cache_optimized=False, cuda_graph=cuda,
                                 max_batch=max_batch)  # fmt: skip
            cfg: dict[str, Any] = {
                "precision": precision,
                "window_s": window_s,
                "provider": runner.provider,
                "cuda_graph": runner.cuda_graph,
                "slots": "buckets" if runner.batch_sizes else "exact",
                "batch_sizes": list(runner.batch_sizes),
                "start_s": round(time.perf_counter() - t0, 2),
                "session_s": round(runner.load_seconds, 2),
                "warmup_s": round(runner.warmup_seconds, 2),
                "warmup_s_by_batch": {
                    str(b): round(t, 3) for b, t in sorted(runner.warmup_seconds_by_batch.items())
                },
                "gpu_memory_used_mib": gpu_memory_used_mib() if cuda else None,
                "calls": [],
            }  # fmt: skip
            doc["configs"].append(cfg)
            print(f"{label}: {runner.provider}, start {cfg['start_s']} s "
                  f"(warm-up/capture {cfg['warmup_s']} s)", flush=True)  # fmt: skip
            if cuda and runner.provider != "CUDAExecutionProvider":
                doc["notes"].append(f"{label}: CUDA provider did not load; ran on {runner.provider}")
            save()
            for b in sorted(args.batches + args.padded):
                if over_budget(f"{label} B={b}"):
                    break
                res = per_call(runner, windows, ids, b, args.seconds)
                slot = runner._slot_of[b] if runner.batch_sizes else None
                res["runs_as"] = slot.batch if slot is not None else b
                cfg["calls"].append(res)
                show("", res)
                save()
            if not over_budget(f"{label} checks"):
                n = min(8, max_batch)
                cfg["rows_vs_alone_max_abs"] = row_check(runner, windows, ids, n)
                pad = next((p for p in sorted(args.padded) if p <= max_batch), None)
                if pad is not None:
                    cfg[f"padded_{pad}_rows_vs_alone_max_abs"] = row_check(runner, windows, ids, min(pad, 8))
                print(f"  rows vs alone: max |diff| {cfg['rows_vs_alone_max_abs']:.2e}", flush=True)
                save()
            if first:  # the extras below run on this configuration, after all the others
                n8 = min(8, max_batch)
                reference = runner.infer_batch(windows[:n8], ids[:n8]).copy()
                extra = (cfg, paths[precision], w, windows, ids, reference)
            del runner
            gc.collect()
            first = False
    if not first:
        cfg, path, w, windows, ids, reference = extra
        label = f"{cfg['precision']} window {cfg['window_s']:g} s"
        if cuda and not over_budget(f"{label} uncaptured"):
            t0 = time.perf_counter()
            plain = ModelRunner(path, LAM, providers=providers, threads=args.threads, window_samples=w,
                                cache_optimized=False, cuda_graph=False, max_batch=max_batch)  # fmt: skip
            unc: dict[str, Any] = {"start_s": round(time.perf_counter() - t0, 2), "calls": []}
            n8 = reference.shape[0]
            unc["graph_vs_uncaptured_max_abs"] = float(
                np.abs(plain.infer_batch(windows[:n8], ids[:n8]) - reference).max()
            )
            cfg["uncaptured"] = unc
            print(f"{label}, no CUDA graph: start {unc['start_s']} s; graph vs uncaptured max |diff| "
                  f"{unc['graph_vs_uncaptured_max_abs']:.2e}", flush=True)  # fmt: skip
            for b in sorted(args.batches):
                if over_budget(f"{label} uncaptured B={b}"):
                    break
                res = per_call(plain, windows, ids, b, args.seconds / 2)
                unc["calls"].append(res)
                show("uncaptured", res)
                save()
            del plain
            gc.collect()
        if args.each > 0 and not over_budget(f"{label} each 1..{args.each}"):
            t0 = time.perf_counter()
            each = ModelRunner(path, LAM, providers=providers, threads=args.threads, window_samples=w,
                               cache_optimized=False, cuda_graph=cuda, max_batch=args.each,
                               batch_slots="each")  # fmt: skip
            ev: dict[str, Any] = {
                "max_batch": args.each,
                "graphs": len(each.batch_sizes),
                "start_s": round(time.perf_counter() - t0, 2),
                "warmup_s": round(each.warmup_seconds, 2),
                "warmup_s_by_batch": {
                    str(b): round(t, 3) for b, t in sorted(each.warmup_seconds_by_batch.items())
                },
                "gpu_memory_used_mib": gpu_memory_used_mib() if cuda else None,
                "calls": [],
            }  # fmt: skip
            cfg["each"] = ev
            print(f"{label}, one graph per size 1..{args.each}: start {ev['start_s']} s "
                  f"(warm-up/capture {ev['warmup_s']} s)", flush=True)  # fmt: skip
            for b in sorted({b for b in args.padded + args.batches if b <= args.each}):
                if over_budget(f"{label} each B={b}"):
                    break
                res = per_call(each, windows, ids, b, args.seconds)
                ev["calls"].append(res)
                show("each", res)
                save()
            del each
            gc.collect()
    doc["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    save()
    print(f"done in {doc['elapsed_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
