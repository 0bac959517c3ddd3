#!/usr/bin/env bash
# `a2e-bridge bench --streams N` on a GPU machine: the figures of docs/benchmarks.md
# ("Many performers on one GPU").  Needs onnxruntime-gpu importable (see
# shared/device/README.md for the H200 machine).  Each run is 60 s of N performers at
# real-time pace into Live Link, OSC and ZeroMQ receivers; JSON and a log per run in $OUT.
#
#   scripts/gpu_streams.sh fp32 "256:1.0 320:1.0 384:0.5 512:0.5" [SECONDS]
#   scripts/gpu_streams.sh fp16 "256:1.0 512:0.5"
set -euo pipefail
cd "$(dirname "$0")/.."
precision=${1:?fp32 or fp16}
runs=${2:?"N:WINDOW ..."}
seconds=${3:-60}
out=${OUT:-out}
mkdir -p "$out"
model=synthetic-full
if [[ $precision == fp16 ]]; then
  model=/tmp/a2e-lam-full-fp16.onnx
  [[ -f $model ]] || python3 -c "
from bridge.model.hub import locate_model
from bridge.model.presets import get_preset
from bridge.modeltools.convert import convert_file
convert_file(locate_model(get_preset('synthetic-full')), '$model', 'surgical')"
fi
for run in $runs; do
  n=${run%%:*} window=${run##*:}
  name="h200-streams-$precision-n$n-w$window"
  timeout $((seconds + 240)) python3 -m bridge bench --model "$model" --providers cuda,cpu \
    --streams "$n" --window "$window" --seconds "$seconds" --json "$out/$name.json" \
    >"$out/$name.log" 2>&1 || echo "$name: bench failed (see $name.log)"
  [[ -f $out/$name.json ]] && python3 - "$out/$name.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
s = d["frames_published_per_stream"]; dr = d["frames_dropped_per_stream"]
print(f"{d['provider']:>22} N={d['streams']:>4} window {d['window_s']} s: published/stream {s['min']}-{s['max']}"
      f" of {d['frames_expected'] // d['streams']}, dropped {d['frames_dropped']} (per stream max {dr['max']}),"
      f" latency p50 {d['latency_ms']['p50']} p99 {d['latency_ms']['p99']} ms, inference p50"
      f" {d['inference_ms']['p50']} p99 {d['inference_ms']['p99']} ms, batch {d['batch']['mean']:.1f},"
      f" stride {d['stride']}, overhead {d['overhead_ms_per_frame']} ms/performer-frame,"
      f" cpu {d['cpu_percent']} %, livelink lost {d['livelink_receiver']['not_received']},"
      f" sends p50 {d['send_ms']['p50']} p99 {d['send_ms']['p99']} ms per batch"
      f" ({'thread' if d['send_thread'] else 'inline'}, {d['send_waits']} waits), model calls"
      f" {'on their thread' if d.get('model_thread') else 'inline'}; phases p50/p99 ms:"
      + ", ".join(f" {k} {v['p50']}/{v['p99']}" for k, v in d['hop_phases_ms'].items()))
PY
done
