"""Draw what each post-processing stage does: docs/postprocessing.png.

Runs the tiny synthetic model (``--model synthetic-tiny``: random weights, LAM's interface,
a model floor in silence that shows what calibration and the gate do)
over ``bridge.signals.speech_like`` audio through the realtime path's frames
(the offline renderer's raw output), then applies the stages one after another
in the chain's order, one frame per call as at one-frame hops, and plots each
stage's input (grey) and output (colour) on the channels it acts on.

    python scripts/plot_post_stages.py [-o docs/postprocessing.png] [--seconds 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge.blendshapes import canonical_index  # noqa: E402
from bridge.config import parse_config  # noqa: E402
from bridge.frame import FPS, SAMPLE_RATE  # noqa: E402
from bridge.offline import Audio, frames_for, render  # noqa: E402
from bridge.post import Clamp  # noqa: E402
from bridge.post.base import FrameContext  # noqa: E402
from bridge.post.blink import Blinks  # noqa: E402
from bridge.post.calibration import Calibration  # noqa: E402
from bridge.post.gate import SilenceGate  # noqa: E402
from bridge.post.shape import Curve, Symmetrize  # noqa: E402
from bridge.post.smoothing import Ema, OneEuro, one_euro_delay_frames  # noqa: E402
from bridge.signals import speech_like  # noqa: E402


def run_stage(stage, values: np.ndarray, rms: np.ndarray) -> np.ndarray:
    """``stage`` over ``values`` one frame per call, as the hop loop runs it."""
    out = values.copy()
    for k in range(out.shape[0]):
        stage.process(out[k : k + 1], FrameContext(k, rms[k : k + 1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="docs/postprocessing.png")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = speech_like(args.seconds, seed=0)  # 5 s of speech, a 2.5 s pause, speech again
    n = frames_for(x.shape[0], SAMPLE_RATE)
    audio = Audio(x, n, SAMPLE_RATE, 1, x.shape[0] / SAMPLE_RATE, "speech_like")
    cfg = parse_config({"model": {"preset": "synthetic-tiny", "providers": ["cpu"], "fallback": ""}})
    base = render(cfg, audio, raw=True)
    raw, rms = base.raw, base.rms
    t = np.arange(n) / FPS
    pause = (t >= 5.3) & (t < 7.3)  # silence inside the pause: what `calibrate` would record

    jaw, close, funnel = (
        canonical_index("jawOpen"),
        canonical_index("mouthClose"),
        canonical_index("mouthFunnel"),
    )
    blink_l = canonical_index("eyeBlinkLeft")
    smile_l, smile_r = canonical_index("mouthSmileLeft"), canonical_index("mouthSmileRight")

    stages = []
    cal = Calibration(np.median(raw[pause], axis=0))
    v1 = run_stage(cal, raw, rms)
    stages.append(
        ("calibration (delay 0): floor from the pause subtracted, range rescaled", raw, v1, [jaw, close])
    )
    one = OneEuro(4.0, 0.3, 1.0)
    v2 = run_stage(one, v1, rms)
    ema = run_stage(Ema(0.5), v1, rms)
    d = one_euro_delay_frames(4.0)
    stages.append((f"One Euro (min_cutoff 4 Hz, beta 0.3): delay <= {d:.1f} frames; EMA 0.5 dashed: 1 frame",
                   v1, v2, [jaw], ema))  # fmt: skip
    gate = SilenceGate()
    gains = np.zeros(n)
    v3 = v2.copy()
    for k in range(n):
        gate.process(v3[k : k + 1], FrameContext(k, rms[k : k + 1]))
        gains[k] = gate.gain
    stages.append(("silence gate (delay 0): -40/-46 dBFS, hold 2, attack 2, release 3 frames", v2, v3,
                   [jaw, funnel], None, gains))  # fmt: skip
    v4 = run_stage(Blinks(seed=1), v3, rms)
    stages.append(
        ("blinks (delay 0): 7-frame shape every 2-6 s, model's own blink dropped", v3, v4, [blink_l])
    )
    v5 = run_stage(Symmetrize("average"), v4, rms)
    stages.append(
        ("symmetrize average (delay 0): mouthSmileLeft/Right made equal", v4, v5, [smile_l, smile_r])
    )
    v6 = run_stage(Curve(gain={"jawOpen": 1.4}, gamma={"jawOpen": 0.7}), v5, rms)
    v6 = run_stage(Clamp(), v6, rms)
    stages.append(("curve + clamp (delay 0): jawOpen gain 1.4, gamma 0.7, clamp to [0, 1]", v5, v6, [jaw]))

    fig, axes = plt.subplots(len(stages) + 1, 1, figsize=(12, 2.0 * len(stages) + 2), sharex=True)
    colours = ["C0", "C1"]
    for ax, st in zip(axes, stages, strict=False):
        title, before, after, chans = st[:4]
        for c, ch in enumerate(chans):
            ax.plot(t, before[:, ch], color="0.7", lw=0.9, drawstyle="steps-post")
            ax.plot(t, after[:, ch], color=colours[c % 2], lw=1.1, drawstyle="steps-post",
                    label=cfg_name(ch))  # fmt: skip
        if len(st) > 4 and st[4] is not None:
            ax.plot(t, st[4][:, chans[0]], color="C3", lw=0.9, ls="--", drawstyle="steps-post", label="EMA")
            ax.set_xlim(0, args.seconds)
        if len(st) > 5:
            ax.plot(t, st[5], color="C2", lw=1.0, ls=":", label="gate gain")
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=7, ncol=3)
    # An inset on the smoothing panel: one second, to see the lag.
    ins = axes[1].inset_axes([0.56, 0.08, 0.25, 0.55])
    zoom = (t >= 1.0) & (t < 2.0)
    ins.plot(t[zoom], v1[zoom, jaw], color="0.6", lw=0.9, drawstyle="steps-post")
    ins.plot(t[zoom], v2[zoom, jaw], color="C0", lw=1.1, drawstyle="steps-post")
    ins.plot(t[zoom], ema[zoom, jaw], color="C3", lw=0.9, ls="--", drawstyle="steps-post")
    ins.set_xticks([1.0, 1.5, 2.0])
    ins.tick_params(labelsize=6)
    ins.set_title("1.0-2.0 s", fontsize=7)
    wav = axes[-1]
    wav.plot(np.arange(x.shape[0]) / SAMPLE_RATE, x, color="0.3", lw=0.3)
    level = wav.twinx()
    level.plot(t, 20 * np.log10(np.maximum(rms, 1e-6)), color="C2", lw=0.8)
    level.axhline(-40, color="C2", ls="--", lw=0.7)
    level.axhline(-46, color="C2", ls=":", lw=0.7)
    level.set_ylim(-70, 0)
    level.set_ylabel("frame RMS dBFS", fontsize=8, color="C2")
    wav.set_title("input: bridge.signals.speech_like (grey), frame RMS and the gate's thresholds (green)",
                  fontsize=9, loc="left")  # fmt: skip
    wav.set_xlabel("time (s)")
    fig.suptitle("post-processing stages, each applied one frame per call to the previous one's output "
                 "(synthetic-tiny model: random weights)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


def cfg_name(index: int) -> str:
    from bridge.blendshapes import ARKIT_NAMES

    return ARKIT_NAMES[index]


if __name__ == "__main__":
    main()
