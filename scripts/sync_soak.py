"""A long passthrough run on the virtual microphone and speaker: does the delay hold?

    python3 scripts/sync_soak.py [SECONDS] [DELAY_MS]

Plays bursts of noise through the bridge's voice passthrough (oracle model, CPU) for
SECONDS (default 180) and prints one JSON line: the passthrough's counters (delay, drift,
corrections, underruns), the lag of every burst in the recording (first, last, spread: a
delay that holds keeps one lag, to the sample, all run long) and the delay that lag implies
(see tests/test_sync_passthrough.py for how).  Both virtual devices run
on one JACK server (one clock), so the drift measured is the estimator's own noise.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from tests.test_sync_passthrough import RATE, burst_lags, bursts, run_passthrough  # noqa: E402


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 180.0
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 200.0
    samples, starts = bursts(seconds + 5.0, seed=7)
    with tempfile.TemporaryDirectory() as tmp:
        stats, played = run_passthrough(Path(tmp), samples, seconds, {"delay_ms": delay})
    heard = burst_lags(played, samples, starts)
    lags = [lag for _, lag, _ in heard]
    pt = stats["passthrough"]
    pt.pop("corrections_log", None)
    pt.pop("clock_offset_log", None)
    primed = played.shape[0] - pt["stream_samples"]  # PortAudio's silence before its first callback
    print(json.dumps({
        "seconds": seconds, "delay_ms": delay, "passthrough": pt,
        "bursts": len(heard), "lag_first": lags[0], "lag_last": lags[-1],
        "lag_spread_samples": max(lags) - min(lags), "min_correlation": round(min(c for *_, c in heard), 6),
        "primed_samples": primed,
        "implied_delay_ms": round(pt["clock_offset_ms"] + (lags[-1] - primed - 1) * 1000.0 / RATE, 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
