"""Nothing non-finite leaves the bridge: models built with ``onnx`` that emit NaN (0/0) and
Inf, run through the real bridge (ONNX Runtime, hop loop, post chain) into real receivers on
loopback (a Live Link UDP socket, a python-osc server, a ZeroMQ SUB parsed with a strict JSON
parser), and through ``a2e-bridge run`` as a subprocess; plus every post stage fed huge
finite values."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import soundfile
from onnx import helper, numpy_helper

from bridge.blendshapes import EPIC_NAMES, LIVELINK_NAMES, NUM_BLENDSHAPES, canonical_index
from bridge.config import parse_config
from bridge.engine import Bridge
from bridge.errors import BridgeError
from bridge.frame import FPS
from bridge.modeltools.synth import build_oracle, oracle_value, save_model
from bridge.post import Clamp, build_post_chain
from bridge.post.base import FrameContext
from bridge.post.blink import Blinks
from bridge.post.calibration import Calibration
from bridge.post.finite import END_AFTER_FRAMES, LIMIT, LastFinite, OutputGuard
from bridge.post.gate import SilenceGate
from bridge.post.head import HeadMotion, HeadMotionConfig
from bridge.post.shape import Curve, Symmetrize
from bridge.post.smoothing import Ema, OneEuro
from tests.receivers import LiveLinkReceiver, OscReceiver, ZmqReceiver, wait_connected

F32_MAX = float(np.finfo(np.float32).max)


# --- models that emit NaN / Inf -------------------------------------------------------------


def nan_model(path: Path, *, silence_nan: bool = False, bad_channels: bool = False,
              nan_speech: bool = False) -> Path:  # fmt: skip
    """The 1 s LAM oracle (``blendshapes[i, j] = mean of frame i + j/128``), edited:

    * ``silence_nan``: times ``s / s`` with ``s = relu(mean - 0.01)``, so a silent frame is
      0/0 = NaN in all 52 channels (a sample of a loud neighbour included) and a loud one
      keeps its oracle values;
    * ``bad_channels``: plus ``[+Inf, -Inf, 0/0, 0, ...]``: channels 0-2 never finite;
    * ``nan_speech``: CTC logits ``0/0``, so the speech probability is NaN.
    """
    model = build_oracle("lam")
    g = model.graph
    last = next(n for n in g.node if n.output[0] == "blendshapes")
    y = last.input[0]
    nodes = []
    if silence_nan:
        g.initializer.append(numpy_helper.from_array(np.array(0.01, np.float32), "t.quiet"))
        nodes += [helper.make_node("Sub", ["oracle/Unsqueeze", "t.quiet"], ["t/above"]),
                  helper.make_node("Relu", ["t/above"], ["t/s"]),
                  helper.make_node("Div", ["t/s", "t/s"], ["t/ratio"]),
                  helper.make_node("Mul", [y, "t/ratio"], ["t/silence_nan"])]  # fmt: skip
        y = "t/silence_nan"
    if bad_channels:
        inf = np.zeros((1, 1, NUM_BLENDSHAPES), np.float32)
        inf[0, 0, 0], inf[0, 0, 1] = np.inf, -np.inf
        den = np.ones((1, 1, NUM_BLENDSHAPES), np.float32)
        den[0, 0, 2] = 0.0
        g.initializer.extend([numpy_helper.from_array(inf, "t.inf"), numpy_helper.from_array(den, "t.den"),
                              numpy_helper.from_array(np.zeros_like(den), "t.zero")])  # fmt: skip
        nodes += [helper.make_node("Div", ["t.zero", "t.den"], ["t/nan"]),  # 0/0 in channel 2
                  helper.make_node("Add", [y, "t.inf"], ["t/with_inf"]),
                  helper.make_node("Add", ["t/with_inf", "t/nan"], ["t/bad_channels"])]  # fmt: skip
        y = "t/bad_channels"
    last.input[0] = y
    index = list(g.node).index(last)
    for k, node in enumerate(nodes):
        g.node.insert(index + k, node)
    if nan_speech:
        asr = next(n for n in g.node if n.output[0] == "asr_logits")
        asr.output[0] = "t/asr_zero"
        g.node.append(helper.make_node("Div", ["t/asr_zero", "t/asr_zero"], ["asr_logits"]))
    onnx.checker.check_model(model)
    return save_model(model, path)


def levels_wav(path: Path, levels: list[float], rate: int = 16000) -> Path:
    """Frame k holds the constant ``levels[k]`` (0 = digital silence)."""
    lv = np.asarray(levels, np.float32)
    n = -((-len(levels) * rate) // FPS)
    soundfile.write(str(path), lv[(np.arange(n) * FPS) // rate], rate, subtype="FLOAT")
    return path


def loud(k: int) -> float:
    return 0.1 + 0.01 * ((7 * k) % 41)


#: 0-9 silent (NaN, nothing finite yet), 10-29 loud, 30-44 silent (NaN), 45-89 loud.
SILENT = set(range(10)) | set(range(30, 45))
LEVELS = [0.0 if k in SILENT else loud(k) for k in range(90)]


def oracle_frame(level: float) -> np.ndarray:
    """The oracle's 52 values in ARKit order for a frame of constant ``level``."""
    return np.array([oracle_value(level, j) for j in range(NUM_BLENDSHAPES)], np.float32)


def expected_held(levels: list[float]) -> list[np.ndarray]:
    """A silent (NaN) frame sends the last loud frame's values, or rest before any."""
    out, last = [], np.zeros(NUM_BLENDSHAPES, np.float32)
    for level in levels:
        if level:
            last = oracle_frame(level)
        out.append(last)
    return out


def strict_json(payload: bytes) -> dict[str, Any]:
    """What a standard parser accepts: no NaN, Infinity or -Infinity."""

    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(payload, parse_constant=refuse)


def config(model: Path, wav: Path, ll: int, osc: int) -> dict[str, Any]:
    return {
        "input": {"kind": "file", "file": str(wav), "realtime": False},
        "model": {"preset": "oracle", "path": str(model), "providers": ["cpu"], "threads": 1,
                  "fallback": ""},
        "output": [
            {"kind": "livelink", "port": ll, "subject": "T"},
            {"kind": "osc", "port": osc, "scheme": "arkit", "speech": True},
            {"kind": "zmq", "endpoint": "tcp://127.0.0.1:*", "format": "json", "topic": "face"},
            {"kind": "vrchat", "port": 0, "names": "unified"},  # sums of weighted channels
        ],
    }  # fmt: skip


def run_through_receivers(cfg: dict[str, Any], raw: bool) -> tuple[Bridge, dict, LiveLinkReceiver,
                                                                    OscReceiver, ZmqReceiver]:  # fmt: skip
    """Run ``cfg``; the VRChat receiver's values are checked finite here, the rest returned."""
    ll, osc, vrc = LiveLinkReceiver(), OscReceiver(), OscReceiver()
    cfg["output"][0]["port"], cfg["output"][1]["port"], cfg["output"][3]["port"] = ll.port, osc.port, vrc.port
    bridge = Bridge(parse_config(cfg, "t.toml"), raw=raw)
    zq = ZmqReceiver(bridge.outputs[2].transport.last_endpoint, "face")  # type: ignore[attr-defined]
    wait_connected()
    try:
        stats = bridge.run().as_dict()
    finally:
        bridge.close()
        for r in (ll, osc, zq, vrc):
            r.close()
    assert vrc.messages and all(np.isfinite(args[0]) for _, args in vrc.messages)
    return bridge, stats, ll, osc, zq


def osc_frames(osc: OscReceiver) -> list[dict[str, float]]:
    """The /arkit/* values of each bundle, in arrival order (55 messages a frame with speech)."""
    msgs = osc.messages
    return [{a: v[0] for a, v in msgs[i : i + 55]} for i in range(0, len(msgs), 55)]


def livelink_as_arkit(packet: dict[str, Any]) -> np.ndarray:
    out = np.zeros(NUM_BLENDSHAPES, np.float32)
    for i, name in enumerate(LIVELINK_NAMES[:NUM_BLENDSHAPES]):
        out[canonical_index(name)] = packet["values"][i]
    return out


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# --- end to end: real bridge, real receivers -------------------------------------------------


def test_nan_frames_hold_the_last_finite_values_at_every_receiver(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = nan_model(tmp_path / "silence_nan.onnx", silence_nan=True)
    wav = levels_wav(tmp_path / "gaps.wav", LEVELS)
    caplog.set_level(logging.INFO)
    bridge, stats, ll, osc, zq = run_through_receivers(config(model, wav, 0, 0), raw=True)

    assert stats["frames_published"] == 90 and stats["nonfinite_frames"] == len(SILENT)
    want = expected_held(LEVELS)
    assert [p["frame"] for p in ll.packets] == list(range(90))
    for k, p in enumerate(ll.packets):
        np.testing.assert_allclose(livelink_as_arkit(p), want[k], atol=2e-3, err_msg=f"frame {k}")
        assert np.isfinite(p["values"]).all()
    frames = osc_frames(osc)
    assert [int(f["/arkit/frame"]) for f in frames] == list(range(90))
    for k, f in enumerate(frames):
        got = [f[f"/arkit/{name}"] for name in EPIC_NAMES]
        np.testing.assert_allclose(got, want[k], atol=2e-3, err_msg=f"frame {k}")
    # ZeroMQ: every message strict JSON.  PUB drops what a subscriber has not taken within its
    # high-water mark on a run faster than real time, so only the frames received are checked.
    docs = [strict_json(p) for p in zq.payloads()]
    assert len(docs) >= 1 and docs[0]["frame"] == 0
    for d in docs:
        got = [d["values"][d["names"].index(EPIC_NAMES[j])] for j in range(NUM_BLENDSHAPES)]
        np.testing.assert_allclose(got, want[d["frame"]], atol=2e-3)

    # Said once when it starts and once when it ends, not per frame or per gap; counted in the
    # progress line, which also carries every output's state.
    started = messages(caplog, "NaN/Inf in")
    assert len(started) == 1 and "52 blendshape channel(s) from frame 0" in started[0]
    ended = messages(caplog, "finite again")
    assert ended == ["model output is finite again from frame 45 (25 frame(s) had NaN/Inf and were held)"]
    caplog.clear()
    bridge._log_status()
    status = caplog.records[-1].getMessage()
    assert "(dropped 0, non-finite frames 25)" in status
    assert f"outputs: livelink 127.0.0.1:{ll.port} ok, osc arkit 127.0.0.1:{osc.port} ok, zmq json" in status
    assert status.endswith(" ok")  # the VRChat output too


def test_inf_channels_and_nan_speech_send_rest_and_valid_json(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = nan_model(tmp_path / "bad.onnx", bad_channels=True, nan_speech=True)
    levels = [loud(k) for k in range(45)]  # 24000 samples: whole frames
    wav = levels_wav(tmp_path / "loud.wav", levels)
    caplog.set_level(logging.INFO)
    _, stats, ll, osc, zq = run_through_receivers(config(model, wav, 0, 0), raw=True)

    assert stats["frames_published"] == 45 == stats["nonfinite_frames"]
    for k, p in enumerate(ll.packets):
        want = oracle_frame(levels[k])
        want[:3] = 0.0  # +Inf, -Inf and 0/0 were never finite: rest
        np.testing.assert_allclose(livelink_as_arkit(p), want, atol=2e-3)
    frames = osc_frames(osc)
    assert len(frames) == 45 and all(f["/arkit/speech"] == 0.0 for f in frames)
    docs = [strict_json(p) for p in zq.payloads()]
    assert len(docs) >= 1 and all(d["speech"] == 0.0 for d in docs)
    assert all(np.isfinite(d["values"]).all() for d in docs)
    started = messages(caplog, "NaN/Inf in")
    assert started and "3 blendshape channel(s) and the speech probability from frame 0" in started[0]
    assert len(started) == 1
    assert len(messages(caplog, "still NaN/Inf when the run ended (45 frame(s)")) == 1


@pytest.mark.parametrize("raw", [False, True])
def test_huge_audio_through_the_oracle_stays_finite(tmp_path: Path, raw: bool) -> None:
    """A float WAV of constant 3e38: the oracle's means and the post chain's arithmetic
    overflow unless each stage bounds its values."""
    wav = tmp_path / "huge.wav"
    soundfile.write(str(wav), np.full(16000, 3e38, np.float32), 16000, subtype="FLOAT")
    cfg = config(Path("unused"), wav, 0, 0)
    del cfg["model"]["path"]
    cfg["post"] = {"symmetrize": "average", "curve": {"gain": {"jawOpen": 2.0}, "gamma": {"mouthClose": 3.0}},
                   "smoothing": {"kind": "one_euro", "beta": 10.0}}  # fmt: skip
    with np.errstate(over="ignore"):  # the hop loop's RMS of 3e38 overflows to Inf: harmless
        _, stats, ll, osc, zq = run_through_receivers(cfg, raw=raw)
    assert stats["frames_published"] == 30
    assert all(np.isfinite(p["values"]).all() for p in ll.packets) and len(ll.packets) == 30
    assert all(np.isfinite(args).all() for _, args in osc.messages if args and not isinstance(args[0], str))
    docs = [strict_json(p) for p in zq.payloads()]
    assert len(docs) >= 1 and all(np.isfinite(d["values"]).all() for d in docs)
    if not raw:  # the chain's clamp: every weight in [0, 1]
        assert all(0.0 <= v <= 1.0 for p in ll.packets for v in p["values"][:52])


def test_run_subprocess_counts_nonfinite_frames_in_stats(tmp_path: Path) -> None:
    """``a2e-bridge run`` with the default post chain: a NaN model's frames are held, counted in
    --stats and said in one line when the fault starts and one when it ends."""
    model = nan_model(tmp_path / "silence_nan.onnx", silence_nan=True)
    wav = levels_wav(tmp_path / "gaps.wav", LEVELS)
    ll = LiveLinkReceiver()
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[model]\npreset = "oracle"\nproviders = ["cpu"]\nthreads = 1\nfallback = ""\n'
        f'[[output]]\nkind = "livelink"\nport = {ll.port}\n'
    )
    stats_path = tmp_path / "stats.json"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bridge", "run", "-c", str(cfg), "--model", str(model),
             "--input", str(wav), "--fast", "--stats", str(stats_path)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        ll.close()
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    stats = json.loads(stats_path.read_text())
    assert stats["nonfinite_frames"] == len(SILENT) and stats["frames_published"] == 90
    assert proc.stderr.count("NaN/Inf in") == 1 and proc.stderr.count("finite again from frame 45") == 1
    values = np.array([p["values"] for p in ll.packets])
    assert values.shape == (90, 61) and np.isfinite(values).all()
    assert ((values[:, :52] >= 0.0) & (values[:, :52] <= 1.0)).all()
    # Post state never saw a NaN: the first loud frame after the silence moves off rest.
    assert values[10:30, :52].max() > 0.1


def test_offline_render_holds_nan_frames_like_the_hop_loop(tmp_path: Path) -> None:
    from bridge.offline import render

    model = nan_model(tmp_path / "silence_nan.onnx", silence_nan=True, nan_speech=True)
    wav = levels_wav(tmp_path / "gaps.wav", LEVELS)
    cfg = parse_config({"model": {"preset": "oracle", "path": str(model), "providers": ["cpu"],
                                  "threads": 1, "fallback": ""}}, "t.toml")  # fmt: skip
    r = render(cfg, wav, raw=True)
    assert np.isfinite(r.values).all() and r.speech_prob is not None and (r.speech_prob == 0.0).all()
    np.testing.assert_allclose(r.values, np.array(expected_held(LEVELS)), atol=2e-3)


# --- the guard on its own ---------------------------------------------------------------------


def test_last_finite_matches_a_per_frame_reference() -> None:
    """Random blocks of any size with NaN/+Inf/-Inf and huge values anywhere: the vectorised
    fill equals a frame-by-frame loop, bounds huge values to the limit, and counts the rows
    that had a non-finite value."""
    rng = np.random.default_rng(7)
    guard, last = LastFinite(5, max_frames=4), np.zeros(5, np.float32)
    for _ in range(1500):
        n = int(rng.integers(0, 9))  # beyond max_frames too: the buffers grow
        block = rng.normal(size=(n, 5)).astype(np.float32)
        mask = rng.random((n, 5)) < rng.random() ** 2
        block[mask] = rng.choice([np.nan, np.inf, -np.inf, 3e38, -F32_MAX], size=int(mask.sum()))
        want, bad = block.copy(), 0
        for row in want:
            missing = ~np.isfinite(row)
            bad += bool(missing.any())
            row[missing] = last[missing]
            np.clip(row, -LIMIT, LIMIT, out=row)
            last = row.copy()
        assert guard.fix(block) == bad
        assert np.array_equal(block, want) and np.array_equal(guard.last, last)


def test_guard_episodes_are_said_once_each(caplog: pytest.LogCaptureFixture) -> None:
    """A model that flickers (NaN every other frame) is one episode, not a line per frame; it
    ends after a second of finite frames."""
    caplog.set_level(logging.WARNING)
    guard = OutputGuard()
    block = np.ones((1, NUM_BLENDSHAPES), np.float32)
    for k in range(100):
        block[0] = np.nan if k % 2 == 0 and k < 40 else 0.5
        guard.check(block, None, k)
        assert np.isfinite(block).all()
    assert guard.frames == 20 and guard.episodes == 1 and not guard.active
    assert len(messages(caplog, "NaN/Inf in")) == 1
    assert messages(caplog, "finite again") == [
        "model output is finite again from frame 39 (20 frame(s) had NaN/Inf and were held)"
    ]
    assert 39 + END_AFTER_FRAMES <= 100


# --- post stages: finite for any finite input -------------------------------------------------


def huge_blocks() -> list[np.ndarray]:
    """Blocks of the largest finite values, alternating signs and extremes, then normal ones."""
    rng = np.random.default_rng(3)
    blocks = []
    for k in range(40):
        n = 1 + k % 3
        b = rng.choice([F32_MAX, -F32_MAX, 3e38, -3e38, 1e30, 0.0, 0.5], size=(n, NUM_BLENDSHAPES))
        blocks.append(b.astype(np.float32))
    blocks += [np.full((1, NUM_BLENDSHAPES), 0.5, np.float32)] * 5
    return blocks


def stages() -> list[Any]:
    offsets = np.full(NUM_BLENDSHAPES, 0.9, np.float32)
    return [
        Calibration(offsets, rescale=True),
        Ema(0.3),
        OneEuro(4.0, 0.3, 1.0),
        OneEuro(1e30, 1e30, 1e30),  # cut-offs so high that w overflows: a = 1, not inf / inf
        SilenceGate(floor=0.1),
        Blinks(seed=1),
        Symmetrize("average"),
        Symmetrize("max"),
        Curve({"jawOpen": 1e9, "mouthClose": 0.0}, {"jawOpen": -1e18}, {"mouthClose": 3.0, "jawOpen": 0.2}),
        HeadMotion(HeadMotionConfig(enabled=True)),
        Clamp(),
    ]


@pytest.mark.parametrize("stage", stages(), ids=lambda s: type(s).__name__)
def test_every_post_stage_stays_finite_for_huge_inputs(stage: Any) -> None:
    first = 0
    with np.errstate(over="raise", invalid="raise"):  # any overflow fails, not just a NaN at the end
        for block in huge_blocks():
            n = block.shape[0]
            rms = np.full(n, 0.3 if first % 2 else 1e-6, np.float32)
            ctx = FrameContext(first, rms, None, np.zeros((n, 9), np.float32))
            stage.process(block, ctx)
            assert np.isfinite(block).all(), (type(stage).__name__, first)
            assert np.isfinite(ctx.head).all()  # type: ignore[arg-type]
            first += n
    if isinstance(stage, Ema | OneEuro):  # and it recovers: the smoothing state stayed finite
        block = np.full((1, NUM_BLENDSHAPES), 0.5, np.float32)
        for k in range(300):
            block[:] = 0.5
            stage.process(block, FrameContext(first + k, np.ones(1, np.float32)))
        np.testing.assert_allclose(block, 0.5, atol=1e-3)


def test_default_chain_on_huge_inputs_ends_in_range() -> None:
    from bridge.config import PostConfig

    chain = build_post_chain(PostConfig())
    for k, block in enumerate(huge_blocks()):
        chain.process(block, FrameContext(k, np.full(block.shape[0], 0.3, np.float32)))
        assert np.isfinite(block).all() and (block >= 0).all() and (block <= 1).all()


def test_clamp_turns_nan_into_rest() -> None:
    v = np.array([[np.nan, -1.0, 0.5, 2.0]], np.float32)
    Clamp().process(v, FrameContext(0, np.zeros(1, np.float32)))
    assert v.tolist() == [[0.0, 0.0, 0.5, 1.0]]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e30])
def test_curve_refuses_non_finite_settings(bad: float) -> None:
    with pytest.raises(BridgeError, match=r"^post\.curve\.gain\.jawOpen = .* must be a finite number within"):
        Curve(gain={"jawOpen": bad})
    assert LIMIT < 1e30
