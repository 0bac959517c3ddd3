"""Synthetic models: real onnxruntime sessions on the ``tiny`` builds and the oracles.

The bridge's runner, alignment and name-mapping tests all stand on these
models, so the interface (names, shapes, frame counts), the LayerNorm chains
the fp16 converter will look for, and the oracle's closed form are pinned here.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bridge.blendshapes import ALPHABETICAL_NAMES
from bridge.model.description import LAM, WAV2ARKIT
from bridge.modeltools.graph import CHAIN_OPS, count_parameters, find_layernorm_chains
from bridge.modeltools.synth import (
    CONFIGS,
    build_lam,
    build_oracle,
    build_wav2arkit,
    oracle_value,
    save_model,
    synthesize,
)

SR = 16_000


def _session(model: onnx.ModelProto | str | Path) -> ort.InferenceSession:
    """One intra-op thread: the test machine is small and shared."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def _speech(samples: int, batch: int = 1, seed: int = 1) -> np.ndarray:
    """Speech-like test audio: voiced harmonics under a syllable-rate envelope, peak ~0.3."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / SR
    out = np.empty((batch, samples), np.float32)
    for b in range(batch):
        f0 = rng.uniform(100, 220)
        voiced = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))
        noise = 0.05 * rng.standard_normal(samples)
        sig = envelope * voiced + noise
        out[b] = 0.3 * sig / np.abs(sig).max()
    return out


def _one_hot(index: int, batch: int = 1) -> np.ndarray:
    ident = np.zeros((batch, 12), np.float32)
    ident[:, index] = 1.0
    return ident


def _conv_frames(samples: int) -> int:
    """wav2vec2's conv stack (kernels 10,3,3,3,3,2,2; strides 5,2,...): the 50 fps frames."""
    n = samples
    for k, s in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2), strict=True):
        n = (n - k) // s + 1
    return n


@pytest.fixture(scope="module")
def tiny_lam() -> onnx.ModelProto:
    return build_lam("tiny")


@pytest.fixture(scope="module")
def lam_session(tiny_lam: onnx.ModelProto) -> ort.InferenceSession:
    return _session(tiny_lam)


@pytest.fixture(scope="module")
def w2a_session() -> ort.InferenceSession:
    return _session(build_wav2arkit("tiny"))


def _check_blendshapes(values: np.ndarray) -> None:
    assert values.dtype == np.float32
    assert np.isfinite(values).all()
    assert ((values > 0) & (values < 1)).all()
    assert values.std() > 0.02, "sigmoid outputs should be spread, not saturated or constant"


def test_lam_interface(lam_session: ort.InferenceSession) -> None:
    assert [i.name for i in lam_session.get_inputs()] == [LAM.audio_input, LAM.identity_input]
    assert [o.name for o in lam_session.get_outputs()] == [LAM.asr_output, LAM.blendshapes_output]


@pytest.mark.parametrize(("samples", "frames", "frames50"), [(16000, 30, 49), (8000, 15, 24)])
def test_lam_shapes_and_values(
    lam_session: ort.InferenceSession, samples: int, frames: int, frames50: int
) -> None:
    assert frames50 == _conv_frames(samples)
    asr, bs = lam_session.run(None, {"audio": _speech(samples), "identity": _one_hot(0)})
    assert asr.shape == (1, frames50, 32)
    assert bs.shape == (1, frames, 52)
    assert np.isfinite(asr).all()
    _check_blendshapes(bs)


def test_lam_dynamic_batch(lam_session: ort.InferenceSession) -> None:
    """Batch rows are independent: row 1 of a batch equals the same row run alone."""
    audio = _speech(16000, batch=2)
    ident = np.concatenate([_one_hot(0), _one_hot(3)])
    asr, bs = lam_session.run(None, {"audio": audio, "identity": ident})
    assert asr.shape == (2, 49, 32) and bs.shape == (2, 30, 52)
    _, alone = lam_session.run(None, {"audio": audio[1:], "identity": ident[1:]})
    np.testing.assert_allclose(bs[1:], alone, atol=1e-5)


def test_lam_identity_changes_output(lam_session: ort.InferenceSession) -> None:
    audio = _speech(16000)
    outs = [lam_session.run(None, {"audio": audio, "identity": _one_hot(k)})[1] for k in (0, 5)]
    assert np.abs(outs[0] - outs[1]).max() > 1e-3


@pytest.mark.parametrize(("samples", "frames"), [(16000, 30), (8000, 15), (8100, 16)])
def test_wav2arkit_shapes_and_values(w2a_session: ort.InferenceSession, samples: int, frames: int) -> None:
    assert frames == math.ceil(30 * samples / SR)
    assert [i.name for i in w2a_session.get_inputs()] == [WAV2ARKIT.audio_input]
    assert [o.name for o in w2a_session.get_outputs()] == [WAV2ARKIT.blendshapes_output]
    (bs,) = w2a_session.run(None, {"audio_waveform": _speech(samples)})
    assert bs.shape == (1, frames, 52)
    _check_blendshapes(bs)


def _expected_layernorms(size: str) -> int:
    cfg = CONFIGS[size]
    # feature projection + encoder + (attention, feed-forward) per layer + one per decoder block
    return 1 + 1 + 2 * cfg.layers + cfg.res_blocks + cfg.plain_blocks


def test_layernorm_chains_tiny(tiny_lam: onnx.ModelProto) -> None:
    chains = find_layernorm_chains(tiny_lam)
    assert len(chains) == _expected_layernorms("tiny")
    assert len(find_layernorm_chains(build_wav2arkit("tiny"))) == _expected_layernorms("tiny")
    ops = {n.name: n.op_type for n in tiny_lam.graph.node}
    inits = {t.name for t in tiny_lam.graph.initializer}
    all_nodes = [n for c in chains for n in c.nodes]
    assert len(set(all_nodes)) == len(all_nodes) == 9 * len(chains)
    for chain in chains:
        assert tuple(ops[n] for n in chain.nodes) == CHAIN_OPS
        assert chain.gamma in inits and chain.beta in inits
        assert chain.epsilon == pytest.approx(1e-5)


def test_layernorm_matcher_rejects_broken_chain(tiny_lam: onnx.ModelProto) -> None:
    """A chain whose Pow exponent is not 2 is not a LayerNorm; the others still match."""
    model = onnx.ModelProto()
    model.CopyFrom(tiny_lam)
    first = find_layernorm_chains(model)[0]
    pow_node = next(n for n in model.graph.node if n.name == first.nodes[2])
    three = onnx.helper.make_node(
        "Constant", [], ["three"], name="three", value=onnx.numpy_helper.from_array(np.float32(3))
    )
    model.graph.node.insert(0, three)
    pow_node.input[1] = "three"
    chains = find_layernorm_chains(model)
    assert len(chains) == _expected_layernorms("tiny") - 1
    assert first.nodes not in [c.nodes for c in chains]


def test_parameter_count_matches_config(tiny_lam: onnx.ModelProto) -> None:
    assert count_parameters(tiny_lam) == CONFIGS["tiny"].parameter_count("lam")


def test_oracle_has_no_layernorm() -> None:
    assert find_layernorm_chains(build_oracle("lam")) == []
    assert find_layernorm_chains(build_oracle("wav2arkit")) == []


@pytest.mark.parametrize(
    ("family", "window", "identity"),
    [("lam", 16000, 0), ("lam", 16000, 5), ("wav2arkit", 16000, 0), ("wav2arkit", 8100, 0)],
)
def test_oracle_staircase(family: str, window: int, identity: int) -> None:
    """Each 1/30 s frame a different constant: every output equals oracle_value exactly."""
    frames = window * 30 // SR if family == "lam" else math.ceil(window * 30 / SR)
    levels = np.linspace(-0.4, 0.45, frames).astype(np.float32)
    frame_of_sample = np.arange(window) * frames // window
    audio = levels[frame_of_sample][None, :]
    session = _session(build_oracle(family, window_samples=window))  # type: ignore[arg-type]
    if family == "lam":
        outs = session.run(None, {"audio": audio, "identity": _one_hot(identity)})
        assert [o.name for o in session.get_outputs()] == ["asr_logits", "blendshapes"]
        assert outs[0].shape == (1, _conv_frames(window), 32) and np.isfinite(outs[0]).all()
    else:
        outs = session.run(None, {"audio_waveform": audio})
    bs = outs[-1]
    assert bs.shape == (1, frames, 52)
    expected = np.array(
        [[oracle_value(float(levels[i]), j, identity) for j in range(52)] for i in range(frames)]
    )
    np.testing.assert_allclose(bs[0], expected, rtol=0, atol=1e-5)


def test_oracle_output_order_metadata() -> None:
    model = build_oracle("lam", output_order=ALPHABETICAL_NAMES)
    meta = {p.key: p.value for p in model.metadata_props}
    assert tuple(meta["output_order"].split(",")) == ALPHABETICAL_NAMES
    assert "output_order" not in {p.key for p in build_oracle("lam").metadata_props}


def test_save_model_external_data_round_trip(tiny_lam: onnx.ModelProto, tmp_path: Path) -> None:
    path = save_model(tiny_lam, tmp_path / "nested" / "model.onnx")
    data = path.with_name("model.onnx.data")
    assert path.is_file() and data.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert path.stat().st_size < data.stat().st_size / 4
    assert path.stat().st_size < 200_000
    assert data.stat().st_mode & 0o044 == path.stat().st_mode & 0o044, "same permissions"
    feed = {"audio": _speech(16000), "identity": _one_hot(2)}
    from_file = _session(path).run(None, feed)
    # The in-memory model still has its weights after saving.
    in_memory = _session(tiny_lam).run(None, feed)
    for a, b in zip(from_file, in_memory, strict=True):
        np.testing.assert_array_equal(a, b)
    # Saving again over the pair replaces it cleanly.
    save_model(tiny_lam, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    # Parameters are counted from dims, with the weights loaded or not.
    shallow = onnx.load(str(path), load_external_data=False)
    assert count_parameters(shallow) == count_parameters(tiny_lam)
    assert len(find_layernorm_chains(shallow)) == _expected_layernorms("tiny")


def test_save_model_single_file(tmp_path: Path) -> None:
    path = save_model(build_oracle("wav2arkit"), tmp_path / "oracle.onnx", external_data=False)
    assert [p.name for p in tmp_path.iterdir()] == ["oracle.onnx"]
    assert [o.name for o in _session(path).get_outputs()] == ["blendshapes"]


def test_synthesize_oracle(tmp_path: Path) -> None:
    path = synthesize("lam", "tiny", tmp_path / "lam.onnx", oracle=True)
    assert path.with_name("lam.onnx.data").is_file()
    session = _session(path)
    audio = np.full((1, 16000), 0.25, np.float32)
    bs = session.run(["blendshapes"], {"audio": audio, "identity": _one_hot(0)})[0]
    assert bs[0, 0, 3] == pytest.approx(oracle_value(0.25, 3), abs=1e-5)


def test_runner_with_bound_buffers_matches_plain_runs(tmp_path: Path) -> None:
    """IOBinding (used on CUDA) gives the same frames as session.run, call after call."""
    from bridge.model.description import LAM
    from bridge.model.runner import ModelRunner

    path = synthesize("lam", "tiny", tmp_path / "t.onnx")
    plain = ModelRunner(path, LAM, providers=["cpu"], threads=1, cache_optimized=False)
    bound = ModelRunner(path, LAM, providers=["cpu"], threads=1, cache_optimized=False, bind_device="cpu")
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = (rng.standard_normal(16000) * 0.2).astype(np.float32)
        np.testing.assert_array_equal(plain.infer(x), bound.infer(x))
        np.testing.assert_array_equal(plain.last_asr_logits, bound.last_asr_logits)
