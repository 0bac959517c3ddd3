"""The demo model (``--model synthetic``): the face follows the voice.

Real ONNX Runtime sessions on the graph ``bridge.modeltools.demo`` builds, fed
``bridge.signals``' demo speech and vowel-like tones, through the same loader,
runner and renderers as the real model.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile

from bridge.blendshapes import ALPHABETICAL_NAMES, ARKIT_NAMES, canonical_index
from bridge.config import BridgeConfig, parse_config
from bridge.livelink_csv import read_livelink_csv
from bridge.model.ctc import SpeechProbability
from bridge.model.hub import locate_model
from bridge.model.presets import get_preset, home_dir
from bridge.modeltools.demo import build_demo
from bridge.modeltools.synth import (
    CONFIGS,
    DEMO_VERSION,
    build_lam,
    lam_frames,
    model_kind,
    save_model,
    wav2arkit_frames,
)
from bridge.offline import Audio, frames_for, render, render_streaming
from bridge.signals import VOWELS, speech_like, vowel_like

JAW = canonical_index("jawOpen")
MOUTH_NAMES = ("jawOpen", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthFunnel", "mouthPucker",
               "mouthStretchLeft", "mouthSmileLeft")  # fmt: skip
MOUTH = [canonical_index(n) for n in MOUTH_NAMES]
ROUND = [canonical_index(n) for n in ("mouthFunnel", "mouthPucker")]
SPREAD = [
    canonical_index(n) for n in ("mouthStretchLeft", "mouthStretchRight", "mouthSmileLeft", "mouthSmileRight")
]
RATE = 16_000


def config(post: dict | None = None) -> BridgeConfig:
    data: dict = {"model": {"preset": "synthetic", "providers": ["cpu"], "threads": 1, "fallback": ""}}
    if post is not None:
        data["post"] = post
    return parse_config(data, "test.toml")


def session(family: str = "lam") -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(
        build_demo(family).SerializeToString(), so, providers=["CPUExecutionProvider"]
    )


def envelope(x: np.ndarray, frames: int) -> np.ndarray:
    """The syllable envelope: RMS of the 100 Hz - 4 kHz band per 30 fps frame, 3-frame mean."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.size, 1 / RATE)
    band = np.fft.irfft(np.where((f >= 100) & (f < 4000), spec, 0), x.size)
    idx = np.minimum(np.arange(x.size) * 30 // RATE, frames - 1)
    rms = np.sqrt(np.bincount(idx, band**2, frames) / np.maximum(np.bincount(idx, None, frames), 1))
    return np.convolve(np.pad(rms, 1, mode="edge"), np.ones(3) / 3, mode="valid")


def vowel(name: str, seconds: float = 1.0, tilt: float = 1.0) -> np.ndarray:
    """A sustained vowel (``bridge.signals.vowel_like``): "a", "i", "o", "e" or "u"."""
    formants = next(v[1:] for v in VOWELS if v[0] == name)
    return vowel_like(formants, seconds, RATE, tilt=tilt, rms=0.1)


def test_interface_is_lams_for_every_batch_and_window() -> None:
    lam = session("lam")
    assert [i.name for i in lam.get_inputs()] == ["audio", "identity"]
    assert [o.name for o in lam.get_outputs()] == ["asr_logits", "blendshapes"]
    for batch, samples in ((1, 16000), (3, 8000), (2, 16001), (1, 1600), (4, 48000)):
        ident = np.zeros((batch, 12), np.float32)
        ident[:, 0] = 1
        asr, bs = lam.run(None, {"audio": np.zeros((batch, samples), np.float32), "identity": ident})
        assert bs.shape == (batch, lam_frames(samples), 52)
        assert asr.shape == (batch, CONFIGS["full"].conv_frames(samples), 32)  # wav2vec2's 50 fps steps
    w2a = session("wav2arkit")
    assert [i.name for i in w2a.get_inputs()] == ["audio_waveform"]
    (bs,) = w2a.run(None, {"audio_waveform": np.zeros((2, 16001), np.float32)})
    assert bs.shape == (2, wav2arkit_frames(16001), 52)


@pytest.mark.parametrize("vowels", [False, True], ids=["one-spectrum", "demo-wav-vowels"])
def test_jaw_follows_the_syllables_and_closes_in_pauses(vowels: bool) -> None:
    # talk 0-5 s, pause 5-7.5 s, talk 7.5-12.5 s, pause 12.5-15 s
    x = speech_like(15.0, RATE, vowels=vowels)
    n = frames_for(x.size, RATE)
    r = render(config(), Audio(x, n, RATE, 1, x.size / RATE, "speech_like"), raw=True)
    jaw = r.raw[:, JAW]
    env = envelope(x, n)
    assert np.corrcoef(jaw, env)[0, 1] > 0.8
    t = (np.arange(n) + 0.5) / 30
    pause = ((t % 7.5) > 5.2) & ((t % 7.5) < 7.3)
    assert pause.sum() > 100
    assert jaw[pause].max() < 0.05 and r.raw[pause][:, MOUTH].max() < 0.05
    talk = ~pause & ((t % 7.5) > 0.2) & ((t % 7.5) < 4.8)
    assert np.percentile(jaw[talk], 90) > 0.35  # the mouth opens on syllables
    assert (jaw[talk] < 0.1).mean() > 0.2  # ... and closes between them
    # The other channels stay small; the eyes are the post chain's (blinks), never the model's.
    others = [j for j in range(52) if ARKIT_NAMES[j].startswith(("eye", "tongue", "jawLeft", "jawRight"))]
    assert np.abs(r.raw[:, others]).max() == 0.0
    assert r.raw.min() >= 0.0 and r.raw.max() <= 1.0


def test_realtime_path_follows_the_syllables_too(tmp_path: Path) -> None:
    """The window's newest frames (lookahead 0, what ``run`` publishes) track the voice as well."""
    x = speech_like(6.0, RATE)
    wav = tmp_path / "speech.wav"
    soundfile.write(str(wav), x, RATE, subtype="FLOAT")
    streamed = render_streaming(config(), wav, lookahead=0, raw=True)
    n = streamed.shape[0]
    assert n == frames_for(x.size, RATE) and np.isfinite(streamed).all()
    assert np.corrcoef(streamed[:, JAW], envelope(x, n))[0, 1] > 0.8


@pytest.mark.parametrize("tilt", [0.75, 1.0, 1.25], ids=["bright-voice", "typical", "dark-voice"])
def test_rounded_vowels_pucker_and_front_ones_smile(tilt: float) -> None:
    """Sustained vowels whose source falls 4.5, 6 or 7.5 dB/octave (voices differ)."""
    lam = session()
    ident = np.eye(12, dtype=np.float32)[:1]
    out = {}
    for name in "uoiea":
        _, bs = lam.run(None, {"audio": vowel(name, tilt=tilt)[None], "identity": ident})
        out[name] = bs[0, 3:-3]  # away from the window's edges
    rnd = {k: v[:, ROUND].mean() for k, v in out.items()}
    spr = {k: v[:, SPREAD].mean() for k, v in out.items()}
    assert min(rnd["u"], rnd["o"]) > max(rnd["i"], rnd["e"]) + 0.1  # oo, oh: funnel and pucker
    assert min(spr["i"], spr["e"]) > max(spr["u"], spr["o"], spr["a"]) + 0.1  # ee, eh: stretch and smile
    jaw = {k: v[:, JAW].mean() for k, v in out.items()}
    assert jaw["a"] > max(jaw["u"], jaw["i"], jaw["e"]) + 0.05  # ah: the jaw opens wider
    for v in out.values():
        assert v[:, JAW].min() > 0.2  # voiced: the mouth is open
        assert v.std(axis=0).max() < 0.01  # a steady sound holds a steady face: nothing twitches


def test_a_low_tone_rounds_and_a_high_tone_spreads() -> None:
    """The issue's check, with plain tones: energy low in the spectrum vs high."""
    lam = session()
    t = np.arange(16000) / RATE
    low = (0.1 * np.sin(2 * np.pi * 300 * t) + 0.07 * np.sin(2 * np.pi * 900 * t)).astype(np.float32)
    high = (0.1 * np.sin(2 * np.pi * 300 * t) + 0.07 * np.sin(2 * np.pi * 2200 * t)).astype(np.float32)
    ident = np.eye(12, dtype=np.float32)[:1]
    (_, lo), (_, hi) = (lam.run(None, {"audio": x[None], "identity": ident}) for x in (low, high))
    assert lo[0, 3:-3][:, ROUND].mean() > hi[0, 3:-3][:, ROUND].mean() + 0.2
    assert hi[0, 3:-3][:, SPREAD].mean() > lo[0, 3:-3][:, SPREAD].mean() + 0.2


def test_the_demo_wavs_vowels_round_and_spread_the_lips() -> None:
    """``python -m bridge.signals``' demo speech cycles through vowels: the lips follow them."""
    x = speech_like(5.0, RATE, vowels=True)
    n = frames_for(x.size, RATE)
    raw = render(config(), Audio(x, n, RATE, 1, x.size / RATE, "demo"), raw=True).raw
    t = (np.arange(n) + 0.5) / 30
    syllable = np.floor(t * 4).astype(int)
    peak = (t * 4 % 1 > 0.05) & (t * 4 % 1 < 0.45)  # the voiced half of each 250 ms syllable
    kind = np.array([VOWELS[k % len(VOWELS)][0] for k in syllable])
    dark, bright = peak & np.isin(kind, ["o", "u"]), peak & np.isin(kind, ["i", "e"])
    assert raw[dark][:, ROUND].mean() > raw[bright][:, ROUND].mean() + 0.1
    assert raw[bright][:, SPREAD].mean() > raw[dark][:, SPREAD].mean() + 0.1
    wide = peak & (kind == "a")
    assert raw[wide][:, JAW].mean() > raw[peak & (kind == "i")][:, JAW].mean()


def test_ctc_speech_probability_is_the_voice() -> None:
    lam = session()
    x = speech_like(7.5, RATE)
    ident = np.eye(12, dtype=np.float32)[:1]
    frames = []
    prob = SpeechProbability()
    for start in range(0, x.size, RATE):
        asr, bs = lam.run(None, {"audio": x[None, start : start + RATE], "identity": ident})
        frames.append(np.array(prob(asr[0], bs.shape[1])))
    p = np.concatenate(frames)
    t = (np.arange(p.size) + 0.5) / 30
    assert p[(t > 5.3) & (t < 7.2)].max() < 0.2  # the pause
    assert np.percentile(p[t < 4.8], 90) > 0.9  # the syllables


def test_identity_picks_a_resting_expression_and_zero_is_neutral() -> None:
    lam = session()
    silence = np.zeros((12, 16000), np.float32)
    _, bs = lam.run(None, {"audio": silence, "identity": np.eye(12, dtype=np.float32)})
    assert np.abs(bs[0]).max() == 0.0  # identity 0, silence: the neutral face
    assert all(0 < bs[k].max() <= 0.1 for k in range(1, 12))  # a small resting expression each
    assert (bs[:, 0] == bs[:, -1]).all()  # constant through the window: nothing twitches


def test_wav2arkit_flavour_keeps_its_alphabetical_order() -> None:
    (bs,) = session("wav2arkit").run(None, {"audio_waveform": vowel("a")[None]})
    assert bs[0, 5:-5, ALPHABETICAL_NAMES.index("jawOpen")].min() > 0.2
    assert bs[0, :, ALPHABETICAL_NAMES.index("eyeBlinkLeft")].max() == 0.0


def test_a_cached_tiny_synthetic_model_is_rebuilt_as_the_demo() -> None:
    """Caches from before the rename hold the tiny random model as ``synthetic.onnx``."""
    path = home_dir() / "synthetic" / "synthetic.onnx"
    save_model(build_lam("tiny"), path)
    assert locate_model(get_preset("synthetic")) == path
    kinds = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert kinds["kind"] == model_kind("demo") == f"demo-{DEMO_VERSION}"
    older = build_demo("lam")  # a cache from an older demo graph: rebuilt as well
    onnx.helper.set_model_props(older, {"synthetic": "true", "family": "lam", "kind": "demo-0"})
    save_model(older, path)
    assert locate_model(get_preset("synthetic")) == path
    kinds = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert kinds["kind"] == f"demo-{DEMO_VERSION}"
    assert locate_model(get_preset("synthetic")) == path  # and reused once current
    assert get_preset("synthetic-tiny").synthetic == ("lam", "tiny", False)


def test_post_chain_keeps_the_lip_sync() -> None:
    """Through the default post chain (gate, smoothing, blinks) the jaw still follows the voice."""
    x = speech_like(7.5, RATE)
    n = frames_for(x.size, RATE)
    r = render(config(), Audio(x, n, RATE, 1, x.size / RATE, "speech_like"))
    assert np.corrcoef(r.values[:, JAW], envelope(x, n))[0, 1] > 0.7


def test_the_readme_quick_start_and_offline_example_show_lip_sync(tmp_path: Path) -> None:
    """``python3 -m bridge.signals demo.wav && python3 -m bridge run --model synthetic --input
    demo.wav`` (here 8 s, ``--fast``, into a Live Link receiver) and ``offline --plot``."""
    from tests.receivers import LiveLinkReceiver

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)  # fmt: skip

    assert cli("bridge.signals", "demo.wav", "8").returncode == 0
    rx = LiveLinkReceiver()
    try:
        (tmp_path / "c.toml").write_text(f'[[output]]\nkind = "livelink"\nport = {rx.port}\n')
        proc = cli("bridge", "run", "--model", "synthetic", "--input", "demo.wav", "--fast", "-c", "c.toml")
        assert proc.returncode == 0, proc.stderr
    finally:
        rx.close()
    assert len(rx.packets) == 240
    jaw = np.array([p["values"][JAW] for p in sorted(rx.packets, key=lambda p: p["frame"])])
    assert jaw[:150].max() > 0.35 and (jaw[:150] < 0.1).sum() > 20  # opens and closes with the syllables
    assert jaw[165:225].max() < 0.02  # shut in the pause

    proc = cli("bridge", "offline", "demo.wav", "--model", "synthetic", "-o", "out.csv", "--plot", "out.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rec = read_livelink_csv(tmp_path / "out.csv")
    assert rec.frames == 240
    np.testing.assert_allclose(rec.values[:, JAW], jaw, atol=0.15)  # offline has more context
    assert rec.values[:150, JAW].max() > 0.35 and rec.values[165:225, JAW].max() < 0.02


def test_models_synth_builds_the_demo(tmp_path: Path) -> None:
    out = tmp_path / "demo.onnx"
    args = [sys.executable, "-m", "bridge", "models", "synth", "--size", "demo", "-o", str(out)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    kinds = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert kinds["kind"] == model_kind("demo") and kinds["family"] == "lam"


def test_frames_are_aligned_with_the_audio_they_depict() -> None:
    """A vowel over frames 10..19 of a 1 s window (frame k = samples [k W/F, (k+1) W/F)) opens
    the mouth on those frames and no others."""
    x = np.zeros(16000, np.float32)
    lo, hi = 10 * 16000 // 30, 20 * 16000 // 30
    x[lo:hi] = vowel("a")[: hi - lo]
    _, bs = session().run(None, {"audio": x[None], "identity": np.eye(12, dtype=np.float32)[:1]})
    jaw = bs[0, :, JAW]
    assert jaw[10:20].min() > 0.3  # open on exactly the burst's frames ...
    assert jaw[:10].max() < 0.02 and jaw[20:].max() < 0.02  # ... and shut on the others
