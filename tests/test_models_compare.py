"""Model comparison: the metrics, the fixed inputs, the table and the quality-table pipeline (tiny)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from bridge.cli.main import main
from bridge.modeltools.compare import (
    ALL_STRATEGIES,
    compare_models,
    cosine_and_ratio,
    default_probes,
    file_probes,
    format_table,
    quality_table,
)
from bridge.modeltools.synth import build_lam, save_model


def test_cosine_and_ratio() -> None:
    a = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    assert cosine_and_ratio(a, a) == pytest.approx((1.0, 1.0))
    assert cosine_and_ratio(a, 0.5 * a) == pytest.approx((1.0, 0.5))  # subdued: cosine cannot tell
    assert cosine_and_ratio([1.0, 0.0], [0.0, 2.0]) == pytest.approx((0.0, 2.0))
    assert cosine_and_ratio(np.zeros(3), np.zeros(3)) == (1.0, 1.0)
    assert cosine_and_ratio(np.ones(3), np.zeros(3))[0] == 0.0


def test_fixed_inputs_are_deterministic() -> None:
    a, b = default_probes(), default_probes()
    names = [p.name for p in a]
    assert names == ["speech-0", "speech-1", "speech-2", "speech-loud", "silence", "noise"]
    for x, y in zip(a, b, strict=True):
        assert x.audio.shape == (16000,) and x.audio.dtype == np.float32
        np.testing.assert_array_equal(x.audio, y.audio)
    assert np.abs(a[3].audio).max() == pytest.approx(0.95, abs=1e-3)
    assert not np.any(a[4].audio)


def test_audio_files_are_resampled_to_16k_windows(tmp_path: Path) -> None:
    t = np.arange(int(2.5 * 44100)) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], axis=1) * 0.3
    sf.write(tmp_path / "voice.wav", stereo, 44100)
    probes = file_probes(tmp_path / "voice.wav")
    assert len(probes) == 2 and all(p.audio.shape == (16000,) for p in probes)
    assert probes[0].name == "voice.wav@0.0s"


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("compare")
    ref = save_model(build_lam("tiny", seed=7), folder / "ref.onnx")
    same = folder / "same" / "ref.onnx"
    same.parent.mkdir()
    shutil.copy(ref, same)
    shutil.copy(folder / "ref.onnx.data", same.parent / "ref.onnx.data")
    other = save_model(build_lam("tiny", seed=8), folder / "other.onnx")
    return ref, same, other


def test_compare_identical_and_different_models(tiny_pair: tuple[Path, Path, Path]) -> None:
    ref, same, other = tiny_pair
    loaded, comps, probes = compare_models(ref, [same, other], providers=["cpu"], threads=1)
    assert loaded.provider == "CPUExecutionProvider"
    identical, different = comps
    assert [o.output for o in identical.outputs] == ["asr_logits", "blendshapes"]
    assert identical.passes and all(o.cosine_min == pytest.approx(1.0) for o in identical.outputs)
    assert all(o.ratio_min == pytest.approx(1.0) and o.max_abs_diff == 0 for o in identical.outputs)
    assert not different.passes
    assert set(identical.outputs[0].per_input) == {p.name for p in probes}
    table = format_table(loaded, comps, probes)
    assert (
        "| Model | Size | Provider | Output | Cosine vs ref (min-max) | worst 1-cos | Mag ratio (min-max) |"
        in table
    )
    assert "| ref.onnx |" in table and "| Pass |" in table and "| Fail |" in table


def test_cli_compare_with_audio_json_and_cuda_fallback(
    tiny_pair: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    ref, same, _ = tiny_pair
    sf.write(
        tmp_path / "a.flac", (0.2 * np.random.default_rng(0).standard_normal(24000)).astype(np.float32), 24000
    )
    out = tmp_path / "cmp.json"
    args = ["models", "compare", str(ref), str(same), "--audio", str(tmp_path / "a.flac"),
            "--providers", "cuda,cpu", "--threads", "1", "--json", str(out)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "| CPU |" in result.output  # asked for cuda, this build has none: the table says what ran
    doc = json.loads(out.read_text())
    assert doc["candidates"][0]["passes"] is True
    assert "a.flac@0.0s" in doc["inputs"]
    bad = CliRunner().invoke(
        main, ["models", "compare", str(ref), str(same), "--audio", str(tmp_path / "x.wav")]
    )
    assert bad.exit_code == 2 and "--audio file not found" in bad.output
    bad = CliRunner().invoke(main, ["models", "compare", str(ref), str(same), "--providers", "gpu"])
    assert bad.exit_code == 2 and "--providers" in bad.output


def test_quality_table_pipeline_on_tiny(tmp_path: Path) -> None:
    table, doc = quality_table("tiny", ["cpu"], tmp_path / "q", threads=1, say=lambda _m: None)
    assert doc["layernorm_chains"] == 12
    labels = [c["label"] for c in doc["candidates"]]
    assert labels == ALL_STRATEGIES
    by = {c["label"]: c for c in doc["candidates"]}
    assert by["fp16 surgical"]["passes"], table
    assert not by["int8 naive"]["passes"], table  # int8 fails the fp16 bar, as on the real model
    for c in doc["candidates"]:
        assert c["provider"] == "CPUExecutionProvider"
        assert {o["output"] for o in c["outputs"]} == {"blendshapes", "asr_logits"}
    # int8 weights are about a quarter, fp16 about half of fp32 (graph files aside)
    data = {d.name: (d / "model.onnx.data").stat().st_size for d in (tmp_path / "q").iterdir()}
    assert 0.45 < data["fp16-surgical"] / data["fp32"] < 0.55
    assert data["int8-naive"] / data["fp32"] < 0.35
    # A second run reuses the built variants.
    stamp = (tmp_path / "q" / "int8-naive" / "model.onnx").stat().st_mtime_ns
    quality_table("tiny", ["cpu"], tmp_path / "q", strategies=["int8 naive"], threads=1, say=lambda _m: None)
    assert (tmp_path / "q" / "int8-naive" / "model.onnx").stat().st_mtime_ns == stamp
