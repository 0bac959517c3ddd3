"""Offline rendering: a whole file through the model with context on both sides.

The realtime path sees no future: frame k comes from a window that ends at
frame k (+ ``lookahead_frames``), where the model is weakest.  Offline there is
no such limit.  The audio is cut into overlapping windows of the model's size
(``model.window_s``) that advance by about half a window; of each window only
the middle frames are kept, so every kept frame has context on both sides (the
way upstream's streaming keeps context), and the file is zero-padded at both
ends so the first and last frames are computed like the others.

Frame k depicts audio ``[k/30, (k+1)/30)`` exactly like the realtime path, and a
file of ``d`` seconds gives ``ceil(d * 30)`` frames (the last one may be partial).
The post chain then runs over the frames in frame order, exactly as in realtime
(causal stages see the same frames in the same order).

``compare_streaming`` runs the same file through the realtime path (``Bridge``,
one frame per hop, for each lookahead) and reports the per-channel mean absolute
difference from the offline render: the price of each latency in numbers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bridge.blendshapes import ARKIT_NAMES, HEAD_EYE_NAMES, LIVELINK_NAMES, NUM_BLENDSHAPES, canonical_index
from bridge.config import BridgeConfig
from bridge.errors import BridgeError
from bridge.frame import FPS, SAMPLE_RATE, frame_end_sample
from bridge.post import PostChain, build_post_chain
from bridge.post.base import FrameContext
from bridge.post.finite import OutputGuard

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  #: (done, total) in frames

#: Channels ``--plot`` draws and ``--compare-streaming`` lists first.
MAIN_CHANNELS: tuple[str, ...] = (
    "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthSmileLeft", "eyeBlinkLeft",
)  # fmt: skip
#: Frames per call of the post chain offline (any size gives the same result; bounds scratch).
POST_BLOCK = 256
#: Frames in 1600 samples: windows start on these boundaries so frame edges stay exact.
ALIGN_FRAMES = 3


def frames_for(samples: int, rate: int) -> int:
    """``ceil(samples / rate * 30)`` in integers: frames a file of ``samples`` at ``rate`` covers."""
    return -((-samples * FPS) // rate)


@dataclass(slots=True)
class Audio:
    """A file's audio as the model sees it: 16 kHz mono float32, plus what the file was."""

    samples: np.ndarray  #: 16 kHz mono float32
    frames: int  #: output frames: ceil(duration * 30)
    source_rate: int
    source_channels: int
    duration_s: float
    path: str = ""


def read_audio(path: str | Path, channel: int | str = "mix", block_seconds: float = 1.0) -> Audio:
    """Decode ``path`` block by block through the realtime conditioner (same mixing, same resampler)."""
    from bridge.audio.conditioner import Conditioner
    from bridge.audio.file import open_audio_file

    f = open_audio_file(path)
    try:
        rate, channels = int(f.samplerate), int(f.channels)
        cond = Conditioner(rate, channels, channel)
        block = max(1, int(rate * block_seconds))
        parts: list[np.ndarray] = []
        buf = np.zeros((block, channels), dtype=np.float32)
        read = 0
        try:
            while True:
                n = f.read(block, dtype="float32", always_2d=True, out=buf).shape[0]
                if n == 0:
                    break
                read += n
                parts.append(cond.process(buf[:n]).copy())
        except Exception as e:  # a decoding error mid-file
            raise BridgeError(f"reading {path} failed after {read} frames: {e}") from None
        parts.append(cond.process(buf[:0], last=True).copy())
    finally:
        f.close()
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return Audio(samples.astype(np.float32, copy=False), frames_for(read, rate), rate, channels,
                 read / rate if rate else 0.0, str(path))  # fmt: skip


@dataclass(slots=True)
class Render:
    """An offline render: post-processed frames plus what went into them."""

    values: np.ndarray  #: float32 (n, 52) canonical order, after the post chain
    head: np.ndarray  #: float32 (n, 9) Live Link head/eye values (degrees / 180)
    raw: np.ndarray  #: float32 (n, 52): the stitched model output before the post chain
    rms: np.ndarray  #: float32 (n,): each frame's own audio RMS
    speech_prob: np.ndarray | None  #: float32 (n,): CTC speech probability, if the model has a CTC head
    audio: Audio
    model: str = ""
    post: str = ""

    @property
    def frames(self) -> int:
        return int(self.values.shape[0])

    def livelink(self) -> np.ndarray:
        """(n, 61) float32: the 52 weights then the 9 head/eye values, Live Link order."""
        return np.concatenate([self.values, self.head], axis=1).astype(np.float32)


def window_plan(window_frames: int) -> tuple[int, int]:
    """(hop, left) in frames: keep window frames ``left .. left + hop - 1`` of each window.

    Both are multiples of 3 frames (1600 samples), so every window starts on an
    exact frame edge; the hop is about half the window and the kept frames sit in
    its middle, with at least as much context on the right (where the model is
    weakest) as on the left.
    """
    if window_frames < ALIGN_FRAMES or window_frames % ALIGN_FRAMES:
        raise BridgeError(f"offline rendering needs a window of a multiple of 3 frames, got {window_frames}")
    hop = max(ALIGN_FRAMES, ALIGN_FRAMES * (window_frames // (2 * ALIGN_FRAMES)))
    left = ALIGN_FRAMES * ((window_frames - hop) // (2 * ALIGN_FRAMES))
    return hop, left


def infer_stitched(
    runner: Any, audio: np.ndarray, frames: int, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Model output for frames ``0 .. frames-1`` from overlapping windows; (values, speech_prob)."""
    w = int(runner.window_samples)
    window_frames = (w * FPS) // SAMPLE_RATE
    if window_frames * SAMPLE_RATE != w * FPS:
        raise BridgeError(
            f"offline rendering needs a window of whole frames (model.window_s), got {w} samples"
        )
    hop, left = window_plan(window_frames)
    values = np.zeros((frames, NUM_BLENDSHAPES), dtype=np.float32)
    speech: np.ndarray | None = None
    if frames == 0:
        return values, None
    from bridge.model.ctc import speech_probability

    left_samples = left * SAMPLE_RATE // FPS
    starts = range(-left, frames - left, hop)  # window start frames (multiples of 3)
    last_start = starts[-1]
    padded = np.zeros(left_samples + last_start * SAMPLE_RATE // FPS + w, dtype=np.float32)
    n = min(audio.shape[0], frame_end_sample(frames - 1), padded.shape[0] - left_samples)
    padded[left_samples : left_samples + n] = audio[:n]
    for s in starts:
        at = left_samples + s * SAMPLE_RATE // FPS
        out = runner.infer(padded[at : at + w])
        lo = s + left
        hi = min(lo + hop, frames)
        if left + (hi - lo) > out.shape[0]:
            raise BridgeError(f"the model gave {out.shape[0]} frames for a {window_frames}-frame window")
        values[lo:hi] = out[left : left + hi - lo]
        logits = getattr(runner, "last_asr_logits", None)
        if logits is not None:
            if speech is None:
                speech = np.zeros(frames, dtype=np.float32)
            speech[lo:hi] = speech_probability(logits, out.shape[0])[left : left + hi - lo]
        if progress is not None:
            progress(hi, frames)
    return values, speech


def frame_audio(audio: np.ndarray, frames: int) -> np.ndarray:
    """``audio`` cut or zero-padded to exactly cover ``frames`` frames (the realtime path pads too)."""
    end = frame_end_sample(frames - 1) if frames else 0
    out = np.zeros(end, dtype=np.float32)
    n = min(end, audio.shape[0])
    out[:n] = audio[:n]
    return out


def frame_rms(audio: np.ndarray, frames: int) -> np.ndarray:
    """RMS of each frame's own samples, as the hop loop computes it for ``FrameContext.rms``."""
    if frames == 0:
        return np.zeros(0, dtype=np.float32)
    x = frame_audio(audio, frames).astype(np.float64)
    cs = np.concatenate([[0.0], np.cumsum(x * x)])
    ends = np.array([frame_end_sample(k) for k in range(frames)], dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    return np.sqrt((cs[ends] - cs[starts]) / (ends - starts)).astype(np.float32)


def run_post(chain: PostChain, values: np.ndarray, rms: np.ndarray, speech_prob: np.ndarray | None,
             audio: np.ndarray, head: np.ndarray) -> None:  # fmt: skip
    """The post chain over every frame in frame order, in blocks (in place)."""
    frames = values.shape[0]
    padded = frame_audio(audio, frames)
    for a in range(0, frames, POST_BLOCK):
        b = min(a + POST_BLOCK, frames)
        lo = frame_end_sample(a - 1)
        ctx = FrameContext(a, rms[a:b], None if speech_prob is None else speech_prob[a:b], head[a:b],
                           audio=padded[lo : frame_end_sample(b - 1)])  # fmt: skip
        chain.process(values[a:b][None], ctx.as_batch())  # one performer: a batch of one


def render(
    cfg: BridgeConfig,
    source: str | Path | Audio,
    *,
    raw: bool = False,
    progress: Progress | None = None,
    model: Any = None,
) -> Render:
    """Render ``source`` (a path or :class:`Audio`) with ``cfg``'s model and post chain."""
    from bridge.engine import load_model

    audio = source if isinstance(source, Audio) else read_audio(source, cfg.input.channel)
    chain = build_post_chain([cfg.post], raw=raw)
    loaded = model or load_model(cfg.model)
    raw_values, speech = infer_stitched(loaded.runner, audio.samples, audio.frames, progress)
    values = raw_values.copy()
    OutputGuard(max_frames=audio.frames).check(values, speech, 0)  # as the hop loop does: no NaN/Inf
    rms = frame_rms(audio.samples, audio.frames)
    head = np.zeros((audio.frames, len(HEAD_EYE_NAMES)), dtype=np.float32)
    run_post(chain, values, rms, speech, audio.samples, head)
    return Render(values, head, raw_values, rms, speech, audio, loaded.preset, chain.describe())


# ---- the realtime path on the same file ------------------------------------------------------------


def with_fixed_blinks(cfg: BridgeConfig, seed: int = 0) -> BridgeConfig:
    """Blinks are random: give both renders the same seed so a comparison sees the same blinks."""
    if not cfg.post.blink.enabled or cfg.post.blink.seed is not None:
        return cfg
    blink = dataclasses.replace(cfg.post.blink, seed=seed)
    return cfg.replace(post=dataclasses.replace(cfg.post, blink=blink))


def render_streaming(
    cfg: BridgeConfig, path: str | Path, *, lookahead: int, raw: bool = False,
    frames: int | None = None, progress: Progress | None = None,
) -> np.ndarray:  # fmt: skip
    """(n, 52) frames of ``path`` from the realtime path with ``lookahead`` frames, one frame per hop.

    The file is read as fast as possible, so to reproduce realtime's one-frame hops
    the scheduler's stride is held at 1 (a fast file would otherwise let one call
    publish many frames with more right-hand context than realtime ever has), and
    the stream pulls audio only when the next hop needs it (``Bridge(live_hops=True)``).
    """
    from bridge.engine import Bridge

    inp = dataclasses.replace(cfg.input, kind="file", file=str(path), realtime=False)
    sched = dataclasses.replace(cfg.schedule, lookahead_frames=lookahead)
    run_cfg = cfg.replace(input=inp, schedule=sched, outputs=())
    got: dict[int, np.ndarray] = {}
    total = frames or 0

    def on_frame(frame: Any) -> None:
        got[frame.number] = frame.values.copy()  # only valid during the call
        if progress is not None and (frame.number % FPS == 0 or frame.number + 1 == total):
            progress(frame.number + 1, total)

    bridge = Bridge(run_cfg, raw=raw, on_frame=on_frame, live_hops=True)
    try:
        bridge.run()
    finally:
        bridge.close()
    n = frames if frames is not None else (max(got) + 1 if got else 0)
    out = np.full((n, NUM_BLENDSHAPES), np.nan, dtype=np.float32)
    for k, v in got.items():
        if k < n:
            out[k] = v
    return out


@dataclass(slots=True)
class Comparison:
    """Per-channel mean absolute difference, streaming vs offline, for one lookahead."""

    lookahead: int
    mae: np.ndarray  #: float32 (52,) canonical order
    frames: int

    @property
    def mean(self) -> float:
        return float(np.mean(self.mae))

    @property
    def latency_ms(self) -> float:
        """What the lookahead adds to the latency (inference time comes on top)."""
        return self.lookahead * 1000.0 / FPS

    def as_dict(self) -> dict[str, Any]:
        worst = int(np.argmax(self.mae))
        return {
            "lookahead_frames": self.lookahead,
            "added_latency_ms": round(self.latency_ms, 1),
            "frames": self.frames,
            "mean_abs_diff": round(self.mean, 5),
            "worst_channel": ARKIT_NAMES[worst],
            "worst_mean_abs_diff": round(float(self.mae[worst]), 5),
            "per_channel": {n: round(float(v), 5) for n, v in zip(ARKIT_NAMES, self.mae, strict=True)},
        }


def compare(offline: np.ndarray, streaming: np.ndarray, lookahead: int) -> Comparison:
    """Mean absolute difference per channel over the frames both renders have."""
    n = min(offline.shape[0], streaming.shape[0])
    diff = np.abs(streaming[:n] - offline[:n])
    ok = ~np.isnan(diff).any(axis=1)
    mae = diff[ok].mean(axis=0) if ok.any() else np.zeros(NUM_BLENDSHAPES)
    return Comparison(lookahead, mae.astype(np.float32), int(ok.sum()))


def comparison_table(results: Sequence[Comparison], channels: Sequence[str] = MAIN_CHANNELS) -> str:
    """A plain-text table: one row per lookahead, the mean over all 52 and the main channels."""
    idx = [canonical_index(c) for c in channels]
    head = ["lookahead", "+latency", "all 52", *channels, "worst channel"]
    rows = [head]
    for r in results:
        worst = int(np.argmax(r.mae))
        rows.append([f"{r.lookahead} fr", f"{r.latency_ms:.0f} ms", f"{r.mean:.4f}",
                     *(f"{r.mae[i]:.4f}" for i in idx),
                     f"{ARKIT_NAMES[worst]} {r.mae[worst]:.4f}"])  # fmt: skip
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


# ---- writing ---------------------------------------------------------------------------------------

OUTPUT_SUFFIXES = (".csv", ".json", ".npy")


def write_render(path: str | Path, result: Render, timecode_fps: int | None = None,
                 start_time_of_day: float | None = None) -> None:  # fmt: skip
    """Write ``result`` as Live Link Face CSV, JSON or npy, by ``path``'s extension;
    ``timecode_fps`` is the CSV's timecode rate (default the app's 60), ``start_time_of_day``
    its first row's time of day (seconds since midnight; default 00:00:00)."""
    from bridge.livelink_csv import APP_TIMECODE_FPS, write_livelink_csv

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise BridgeError(f"output {p}: unknown format {suffix or '(none)'}; use .csv, .json or .npy")
    try:
        if suffix == ".csv":
            write_livelink_csv(p, result.values, result.head, timecode_fps=timecode_fps or APP_TIMECODE_FPS,
                               start_time_of_day=start_time_of_day)  # fmt: skip
        elif suffix == ".npy":
            np.save(p, result.livelink())
        else:
            p.write_text(json.dumps(render_json(result)) + "\n", encoding="utf-8")
    except OSError as e:
        raise BridgeError(f"cannot write {p}: {e.strerror or e}") from None


def render_json(result: Render) -> dict[str, Any]:
    """JSON layout close to upstream LAM's export (names, metadata, frames of weights and time)."""
    return {
        "names": list(ARKIT_NAMES),
        "head_names": list(HEAD_EYE_NAMES),
        "metadata": {
            "fps": FPS,
            "frame_count": result.frames,
            "duration_s": round(result.audio.duration_s, 6),
            "source": result.audio.path,
            "model": result.model,
            "post": result.post,
            "order": "canonical (Epic EARFaceBlendShape order, ARKit names)",
        },
        "frames": [
            {
                "time": round(k / FPS, 6),
                "weights": [round(float(v), 6) for v in result.values[k]],
                "head": [round(float(v), 6) for v in result.head[k]],
            }
            for k in range(result.frames)
        ],  # fmt: skip
    }


def plot_render(path: str | Path, result: Render, channels: Sequence[str] = MAIN_CHANNELS,
                title: str | None = None) -> None:  # fmt: skip
    """PNG of ``channels`` over time, one strip each, above the waveform."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BridgeError("--plot needs matplotlib: pip install matplotlib") from None
    idx = [canonical_index(c) for c in channels]
    n = result.frames
    t = np.arange(n) / FPS
    fig, axes = plt.subplots(len(idx) + 1, 1, figsize=(12, 1.2 * len(idx) + 2.2), sharex=True,
                             gridspec_kw={"height_ratios": [1] * len(idx) + [1.6]})  # fmt: skip
    for ax, i, name in zip(axes, idx, channels, strict=False):
        ax.plot(t, result.values[:, i], lw=1.0, color="C0", drawstyle="steps-post")
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
        ax.grid(alpha=0.3)
    wav = axes[-1]
    x = result.audio.samples
    if x.size:
        step = max(1, x.size // 200_000)
        wav.plot(np.arange(0, x.size, step) / SAMPLE_RATE, x[::step], lw=0.4, color="0.3")
    wav.set_ylabel("audio", rotation=0, ha="right", va="center", fontsize=9)
    wav.set_xlabel("time (s)")
    wav.set_xlim(0, max(n / FPS, 1.0 / FPS))
    fig.suptitle(title or f"{Path(result.audio.path).name}: {n} frames, {result.model}, {result.post}",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise BridgeError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)


__all__ = [
    "Audio", "Comparison", "LIVELINK_NAMES", "MAIN_CHANNELS", "Render", "compare", "comparison_table",
    "frame_rms", "frames_for", "infer_stitched", "plot_render", "read_audio", "render",
    "render_streaming", "run_post", "window_plan", "with_fixed_blinks", "write_render",
]  # fmt: skip
