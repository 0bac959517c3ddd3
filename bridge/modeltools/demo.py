"""The demo model: a hand-built LAM-interface graph whose face follows the voice.

``--model synthetic`` is what a new user runs first, offline, with no weights
to download.  A random-weight network there shows a face that does not speak,
so this graph computes its 52 values from what can be heard, with ``onnx`` +
``numpy`` and no training:

* a filter bank (a strided ``Conv``: Hann-windowed cosine and sine at 50 Hz
  steps to 4 kHz, 200 Hz steps to 7.8 kHz; 20 ms windows every 10 ms) gives
  band powers, in dB, smoothed over 50 ms;
* *opening* = the speech band's (100 Hz - 4 kHz) level mapped from
  ``OPEN_FLOOR_DB`` (closed) to ``OPEN_FULL_DB`` (fully open): jaw, lower lip
  and upper lip follow the syllables and close in pauses;
* vowel colour from neighbouring band levels in dB: a front vowel (i, e: second
  formant in 1.5 - 2.6 kHz rather than 0.7 - 1.3 kHz) spreads the lips (stretch,
  smile); a back vowel rounds them (funnel, pucker: u, o) or, when its first
  formant is high (a: 0.6 - 1.3 kHz over 150 - 450 Hz), opens the jaw wider;
* *hiss* = the 4 - 7.8 kHz band over the speech band: fricatives narrow the
  jaw and lift the upper lip a little;
* the 30 fps frames are the 100 fps analysis resampled at each frame's centre
  (``Resize``, half-pixel: within 5 ms), so frame ``i`` of a window depicts its
  samples ``[i W / F, (i + 1) W / F)`` as LAM's frames do;
* every channel is ``Clip(features @ MIX + identity @ STYLE, 0, 1)``: no noise,
  so nothing twitches; the brows and cheeks move a little with the voice, the
  eyes not at all (blinks are the post chain's), and the identity picks a small
  resting expression (0 = neutral);
* ``asr_logits`` (LAM only) at wav2vec2's 50 fps step count: blank against one
  letter by the speech level, so the CTC voice gate (``vad = "ctc"``) works.

It is fast: about 6 M multiply-adds per 1 s window (see docs/models.md).  It reads
absolute levels (no normalisation): a quiet microphone opens the mouth less.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from bridge.blendshapes import ARKIT_NAMES, NUM_BLENDSHAPES
from bridge.model.description import LAM, WAV2ARKIT
from bridge.modeltools.synth import CONFIGS, _Builder, _frames_graph, model_kind, save_model

SAMPLE_RATE = 16_000
FPS = 30
#: Analysis window and hop (samples): 20 ms every 10 ms.
WINDOW = 320
HOP = 160
#: Filter-bank centre frequencies (Hz): the DFT grid of a 20 ms window to 4 kHz, coarser above.
BINS_HZ: tuple[float, ...] = tuple(range(100, 4000, 50)) + tuple(range(4000, 7900, 200))
#: Bands (Hz, [lo, hi)): the speech band; four for vowel colour (around the second formant of
#: front vowels and of back vowels; the first formant of open vowels and of closed ones);
#: fricatives' hiss.
BANDS: dict[str, tuple[float, float]] = {
    "speech": (100, 4000),
    "f2_front": (1500, 2600),
    "f2_back": (700, 1300),
    "f1_open": (600, 1300),
    "f1_closed": (150, 450),
    "hiss": (4000, 8000),
}
#: Speech-band level (dB of band power; a full-scale sine reads -6 dB) where the mouth starts to
#: open / is fully open.
OPEN_FLOOR_DB = -48.0
OPEN_FULL_DB = -20.0
#: Front vowels (i, e: second formant above 1.5 kHz) spread the lips: ``f2_front - f2_back``
#: above FRONT_DB.  Neighbouring bands, so a voice's tilt moves it by only ~4 dB per 3 dB/octave.
#: With a -6 dB/octave source (a typical voice): i +4, e +3; u -6.5, o -7.5, a -9.3.
FRONT_DB = -1.5
#: Back vowels round the lips (u, o) unless the first formant is high (a: ``f1_open -
#: f1_closed`` above OPEN_VOWEL_DB; at -6 dB/octave a +2.8, o -1.7, e -3.6, u -7.5, i -17),
#: which opens the jaw wider instead.
OPEN_VOWEL_DB = 0.5
COLOUR_WIDTH_DB = 2.0
#: Hiss over speech band (dB) where fricatives start to count.
HISS_DB = -12.0
#: CTC: speech probability 0.5 at this level; dB per logit unit.
CTC_SPEECH_DB = -42.0
CTC_DB_PER_LOGIT = 3.0
CTC_LETTER = 7  #: "A" in the wav2vec2-base-960h vocabulary
#: Time smoothing of the band levels: taps at 100 fps (a 50 ms triangle).
SMOOTH_TAPS = (1.0, 2.0, 3.0, 2.0, 1.0)
LOG_EPS = 1e-10

#: Feature rows of the mixing matrix.
FEATURES = ("open", "open_round", "open_spread", "open_hiss", "open_wide")

#: Per channel: weights on FEATURES (unlisted ones 0).  Mouth channels carry the speech;
#: the rest move a little with it, as faces do (brows lift on stress, cheeks with a smile).
MIX: dict[str, dict[str, float]] = {
    "jawOpen": {"open": 0.5, "open_wide": 0.2, "open_round": -0.1, "open_spread": -0.15, "open_hiss": -0.2},
    "mouthLowerDownLeft": {"open": 0.4, "open_wide": 0.1, "open_round": -0.15, "open_spread": 0.1},
    "mouthLowerDownRight": {"open": 0.4, "open_wide": 0.1, "open_round": -0.15, "open_spread": 0.1},
    "mouthUpperUpLeft": {"open": 0.18, "open_spread": 0.12, "open_hiss": 0.2},
    "mouthUpperUpRight": {"open": 0.18, "open_spread": 0.12, "open_hiss": 0.2},
    "mouthRollLower": {"open": 0.1, "open_round": -0.1},
    "mouthFunnel": {"open": 0.05, "open_round": 0.55},
    "mouthPucker": {"open_round": 0.5},
    "mouthStretchLeft": {"open_spread": 0.5, "open_hiss": 0.15},
    "mouthStretchRight": {"open_spread": 0.5, "open_hiss": 0.15},
    "mouthSmileLeft": {"open_spread": 0.4},
    "mouthSmileRight": {"open_spread": 0.4},
    "mouthDimpleLeft": {"open_spread": 0.1},
    "mouthDimpleRight": {"open_spread": 0.1},
    "mouthShrugUpper": {"open_round": 0.1},
    "cheekSquintLeft": {"open_spread": 0.12},
    "cheekSquintRight": {"open_spread": 0.12},
    "browInnerUp": {"open": 0.12},
    "browOuterUpLeft": {"open": 0.06},
    "browOuterUpRight": {"open": 0.06},
    "noseSneerLeft": {"open_hiss": 0.05},
    "noseSneerRight": {"open_hiss": 0.05},
}

#: Identity 1..11: a small resting expression each (identity 0 is neutral).
STYLES: tuple[dict[str, float], ...] = (
    {},
    {"mouthSmileLeft": 0.08, "mouthSmileRight": 0.08, "cheekSquintLeft": 0.04, "cheekSquintRight": 0.04},
    {"browInnerUp": 0.1, "mouthFrownLeft": 0.04, "mouthFrownRight": 0.04},
    {"browDownLeft": 0.08, "browDownRight": 0.08},
    {"mouthPressLeft": 0.06, "mouthPressRight": 0.06},
    {"browOuterUpLeft": 0.08, "browOuterUpRight": 0.08, "eyeWideLeft": 0.05, "eyeWideRight": 0.05},
    {"mouthSmileLeft": 0.1, "cheekSquintLeft": 0.05},
    {"mouthSmileRight": 0.1, "cheekSquintRight": 0.05},
    {"mouthShrugLower": 0.08, "mouthRollUpper": 0.04},
    {"eyeSquintLeft": 0.06, "eyeSquintRight": 0.06},
    {"mouthDimpleLeft": 0.06, "mouthDimpleRight": 0.06},
    {"jawForward": 0.04, "mouthClose": 0.03},
)


def filter_bank() -> np.ndarray:
    """``[2 K, 1, WINDOW]`` Conv weights: K cosines then K sines, Hann-windowed, unit gain.

    A full-scale sine on a bin puts 0.25 into that bin's cos² + sin² (the bins are
    the window's DFT grid below 4 kHz, so band sums are flat there).
    """
    n = np.arange(WINDOW) - WINDOW / 2 + 0.5
    hann = 0.5 + 0.5 * np.cos(2 * np.pi * n / WINDOW)
    f = np.asarray(BINS_HZ)[:, None]
    cos = hann * np.cos(2 * np.pi * f * n / SAMPLE_RATE)
    sin = hann * np.sin(2 * np.pi * f * n / SAMPLE_RATE)
    w = np.concatenate([cos, sin]) / hann.sum()
    return w[:, None, :].astype(np.float32)


def band_matrix() -> np.ndarray:
    """``[2 K, bands]``: sums each bin's cos² + sin² into the bands it belongs to."""
    f = np.asarray(BINS_HZ)
    m = np.zeros((2 * len(f), len(BANDS)), np.float32)
    for j, (lo, hi) in enumerate(BANDS.values()):
        inside = ((f >= lo) & (f < hi)).astype(np.float32)
        m[: len(f), j] = inside
        m[len(f) :, j] = inside
    return m


def mix_matrix(order: tuple[str, ...]) -> np.ndarray:
    """``[features, 52]``: :data:`MIX` with the columns in the model's output ``order``."""
    col = {name: i for i, name in enumerate(order)}
    m = np.zeros((len(FEATURES), NUM_BLENDSHAPES), np.float32)
    for name, weights in MIX.items():
        for feature, w in weights.items():
            m[FEATURES.index(feature), col[name]] = w
    return m


def style_matrix(order: tuple[str, ...]) -> np.ndarray:
    """``[12, 52]``: the identity one-hot's resting expression, columns in ``order``."""
    col = {name: i for i, name in enumerate(order)}
    m = np.zeros((len(STYLES), NUM_BLENDSHAPES), np.float32)
    for i, style in enumerate(STYLES):
        for name, v in style.items():
            m[i, col[name]] = v
    return m


def build_demo(family: str = "lam") -> onnx.ModelProto:
    """The demo model with ``family``'s exact interface (any batch, any window length)."""
    if family not in ("lam", "wav2arkit"):
        raise ValueError(f"family {family!r} is not known; allowed: lam, wav2arkit")
    lam = family == "lam"
    desc = LAM if lam else WAV2ARKIT
    order = desc.output_order
    assert set(order) == set(ARKIT_NAMES)
    b = _Builder(0)
    audio = desc.audio_input
    nb = len(BANDS)
    band = {name: i for i, name in enumerate(BANDS)}

    # Filter bank -> band powers -> dB, [B, bands, T100] (T100 = samples // HOP + 1).
    x = b.op("Unsqueeze", [audio, b.ints([1])], "demo/Unsqueeze")
    x = b.op(
        "Conv", [x, b.tensor("demo.filter_bank", filter_bank())], "demo/filter_bank",
        kernel_shape=[WINDOW], strides=[HOP], pads=[WINDOW // 2, WINDOW // 2],
    )  # fmt: skip
    x = b.op("Mul", [x, x], "demo/power")
    x = b.op("Transpose", [x], "demo/Transpose", perm=[0, 2, 1])
    x = b.op("MatMul", [x, b.tensor("demo.band_matrix", band_matrix())], "demo/bands")
    x = b.op("Add", [x, b.const(LOG_EPS)], "demo/Add_eps")
    x = b.op("Log", [x], "demo/Log")
    x = b.op("Mul", [x, b.const(10.0 / math.log(10.0))], "demo/dB")
    x = b.op("Transpose", [x], "demo/Transpose_1", perm=[0, 2, 1])

    # 50 ms smoothing per band, edge-padded so a window's newest frames are not pulled to 0.
    half = len(SMOOTH_TAPS) // 2
    x = b.op("Pad", [x, b.ints([0, 0, half, 0, 0, half])], "demo/Pad", mode="edge")
    taps = np.tile(np.asarray(SMOOTH_TAPS, np.float32) / sum(SMOOTH_TAPS), (nb, 1, 1))
    x = b.op("Conv", [x, b.tensor("demo.smooth", taps)], "demo/smooth", kernel_shape=[len(SMOOTH_TAPS)],
             group=nb)  # fmt: skip

    # 100 fps -> the window's 30 fps frames, sampled at each frame's centre.
    batch, frames = _frames_graph(b, audio, ceil=not lam)
    sizes = b.op("Concat", [batch, b.ints([nb]), frames], "demo/sizes", axis=0)
    levels = b.op(
        "Resize", [x, "", "", sizes], "demo/Resize", mode="linear",
        coordinate_transformation_mode="half_pixel",
    )  # fmt: skip
    levels = b.op("Transpose", [levels], "demo/Transpose_2", perm=[0, 2, 1])  # [B, F, bands]

    def column(name: str, src: str, tag: str) -> str:
        i = band[name]
        return b.op("Slice", [src, b.ints([i]), b.ints([i + 1]), b.ints([2])], f"demo/{tag}_{name}")

    speech = column("speech", levels, "level")
    span = OPEN_FULL_DB - OPEN_FLOOR_DB
    opening = b.op("Sub", [speech, b.const(OPEN_FLOOR_DB)], "demo/open_Sub")
    opening = b.op("Mul", [opening, b.const(1.0 / span)], "demo/open_Mul")
    opening = b.op("Clip", [opening, b.const(0.0), b.const(1.0)], "demo/open")

    def sigmoid(x: str, centre: float, width: float, tag: str) -> str:
        """``sigmoid((x - centre) / width)``; a negative width flips it."""
        d = b.op("Sub", [x, b.const(centre)], f"demo/{tag}_Sub")
        d = b.op("Mul", [d, b.const(1.0 / width)], f"demo/{tag}_Mul")
        return b.op("Sigmoid", [d], f"demo/{tag}")

    fronted = b.op("Sub", [column("f2_front", levels, "level"), column("f2_back", levels, "level")],
                   "demo/fronted")  # fmt: skip
    spr = sigmoid(fronted, FRONT_DB, COLOUR_WIDTH_DB, "spread")
    backed = sigmoid(fronted, FRONT_DB, -COLOUR_WIDTH_DB, "back")
    f1 = b.op("Sub", [column("f1_open", levels, "level"), column("f1_closed", levels, "level")], "demo/f1")
    open_vowel = sigmoid(f1, OPEN_VOWEL_DB, COLOUR_WIDTH_DB, "open_vowel")
    closed_vowel = sigmoid(f1, OPEN_VOWEL_DB, -COLOUR_WIDTH_DB, "closed_vowel")
    rnd = b.op("Mul", [backed, closed_vowel], "demo/round")
    wide = b.op("Mul", [backed, open_vowel], "demo/wide")
    hiss = b.op("Sub", [column("hiss", levels, "level"), speech], "demo/hiss_Sub")
    hiss = b.op("Sub", [hiss, b.const(HISS_DB)], "demo/hiss_Sub_1")
    hiss = b.op("Sigmoid", [b.op("Mul", [hiss, b.const(0.5)], "demo/hiss_Mul")], "demo/hiss")
    feats = [
        opening,
        b.op("Mul", [opening, rnd], "demo/open_round"),
        b.op("Mul", [opening, spr], "demo/open_spread"),
        b.op("Mul", [opening, hiss], "demo/open_hiss"),
        b.op("Mul", [opening, wide], "demo/open_wide"),
    ]
    assert len(feats) == len(FEATURES)
    g = b.op("Concat", feats, "demo/features", axis=2)  # [B, F, features]
    y = b.op("MatMul", [g, b.tensor("demo.mix", mix_matrix(order))], "demo/mix")  # [B, F, 52]

    outputs = []
    inputs = [helper.make_tensor_value_info(audio, TensorProto.FLOAT, ["batch", "samples"])]
    if lam:
        assert desc.identity_input is not None and desc.asr_output is not None
        inputs.append(helper.make_tensor_value_info(desc.identity_input, TensorProto.FLOAT, ["batch", 12]))
        style = b.op("MatMul", [desc.identity_input, b.tensor("demo.style", style_matrix(order))],
                     "demo/style")  # fmt: skip
        style = b.op("Unsqueeze", [style, b.ints([1])], "demo/style_Unsqueeze")  # [B, 1, 52]
        y = b.op("Add", [y, style], "demo/Add_style")
        outputs.append(_ctc_logits(b, x, audio, batch, band["speech"], desc.asr_output))
    else:
        rest = style_matrix(order)[11].reshape(1, 1, NUM_BLENDSHAPES)  # wav2arkit bakes identity 11 in
        y = b.op("Add", [y, b.tensor("demo.style", rest)], "demo/Add_style")
    b.op("Clip", [y, b.const(0.0), b.const(1.0)], "demo/Clip", output=desc.blendshapes_output)
    dims = ["batch", "frames", NUM_BLENDSHAPES]
    outputs.append(helper.make_tensor_value_info(desc.blendshapes_output, TensorProto.FLOAT, dims))
    model = b.model(f"demo_{family}", inputs, outputs, family=family, kind=model_kind("demo"))
    model.doc_string = "demo model: blendshapes computed from band energies of the audio (no training)"
    return model


def _ctc_logits(b: _Builder, levels100: str, audio: str, batch: str, speech_band: int,
                name: str) -> onnx.ValueInfoProto:  # fmt: skip
    """``asr_logits [B, T50, 32]``: blank vs :data:`CTC_LETTER` by the speech band's level.

    ``T50`` is wav2vec2-base's step count for the window (its conv stack's length
    formula), so the CTC gate's 50 fps -> 30 fps plan is the real model's.
    """
    shape = b.op("Shape", [audio], "demo.ctc/Shape")
    n = b.op("Slice", [shape, b.ints([1]), b.ints([2]), b.ints([0])], "demo.ctc/samples")
    cfg = CONFIGS["full"]
    for k, s in zip(cfg.conv_kernels, cfg.conv_strides, strict=True):
        n = b.op("Sub", [n, b.ints([k])], "demo.ctc/Sub")
        n = b.op("Div", [n, b.ints([s])], "demo.ctc/Div")
        n = b.op("Add", [n, b.ints([1])], "demo.ctc/Add")
    lvl = b.op("Slice", [levels100, b.ints([speech_band]), b.ints([speech_band + 1]), b.ints([1])],
               "demo.ctc/speech")  # [B, 1, T100]  # fmt: skip
    sizes = b.op("Concat", [batch, b.ints([1]), n], "demo.ctc/sizes", axis=0)
    lvl = b.op("Resize", [lvl, "", "", sizes], "demo.ctc/Resize", mode="linear",
               coordinate_transformation_mode="align_corners")  # fmt: skip
    lvl = b.op("Transpose", [lvl], "demo.ctc/Transpose", perm=[0, 2, 1])  # [B, T50, 1]
    lvl = b.op("Sub", [lvl, b.const(CTC_SPEECH_DB)], "demo.ctc/Sub_level")
    weight = np.zeros((1, 32), np.float32)
    weight[0, CTC_LETTER] = 1.0 / CTC_DB_PER_LOGIT
    bias = np.full((32,), -8.0, np.float32)
    bias[0] = 0.0
    bias[CTC_LETTER] = 0.0
    y = b.op("MatMul", [lvl, b.tensor("demo.ctc.weight", weight)], "demo.ctc/MatMul")
    b.op("Add", [y, b.tensor("demo.ctc.bias", bias)], "demo.ctc/Add_bias", output=name)
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "frames50", 32])


def synthesize_demo(family: str, path: str | Path) -> Path:
    """Build the demo model of ``family`` and save it (external data, as every synthetic model)."""
    return save_model(build_demo(family), path)
