#!/usr/bin/env bash
# Soak test: run the bridge for a long time (default 1 h) from a looped speech-like WAV at
# real-time pace into real Live Link (UDP), OSC (python-osc) and ZeroMQ (SUB) receivers, and
# report frames lost / duplicated / out of order per receiver, the bridge's RSS at start and
# end, and its CPU use.  Exit 0 only when nothing was lost, repeated or reordered.
#
#   scripts/soak.sh                      # 1 hour, synthetic model
#   scripts/soak.sh --minutes 3          # a quick check
#   scripts/soak.sh --minutes 60 --model synthetic-full --json soak.json
#
# Everything runs from this checkout (PYTHONPATH), on free loopback ports, in a temporary folder.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
exec python3 "$ROOT/scripts/soak.py" "$@"
