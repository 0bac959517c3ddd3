"""The fp16 converter on the tiny synthetic LAM: what stays fp32, where the Casts go, how close it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto

from bridge.cli.main import main
from bridge.errors import BridgeError
from bridge.modeltools.compare import cosine_and_ratio
from bridge.modeltools.convert import convert_file
from bridge.modeltools.graph import find_layernorm_chains
from bridge.modeltools.synth import CONFIGS, build_lam, build_oracle, save_model
from bridge.signals import speech_like


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("convert") / "lam.onnx"
    return save_model(build_lam("tiny", seed=5), path)


@pytest.fixture(scope="module")
def surgical(fp32: Path) -> Path:
    out = fp32.with_name("lam_surgical.onnx")
    convert_file(fp32, out, "surgical")
    return out


@pytest.fixture(scope="module")
def naive(fp32: Path) -> Path:
    out = fp32.with_name("lam_naive.onnx")
    convert_file(fp32, out, "naive")
    return out


def _run(path: Path) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ident = np.zeros((1, 12), np.float32)
    ident[0, 0] = 1
    return s.run(["blendshapes", "asr_logits"], {"audio": speech_like(1.0, seed=2)[None], "identity": ident})


def _types(path: Path) -> dict[str, int]:
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True)
    types = {
        v.name: v.type.tensor_type.elem_type for v in [*m.graph.value_info, *m.graph.input, *m.graph.output]
    }
    types.update({t.name: t.data_type for t in m.graph.initializer})
    return types


def test_surgical_keeps_every_layernorm_chain_in_fp32(fp32: Path, surgical: Path) -> None:
    model = onnx.load(str(surgical))
    chains = find_layernorm_chains(model)
    assert len(chains) == CONFIGS["tiny"].layernorm_count == 12
    types = _types(surgical)  # strict shape inference also proves the graph type-checks
    nodes = {n.name: n for n in model.graph.node}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for c in chains:
        for name in c.nodes:  # all 9 ops compute in fp32
            n = nodes[name]
            assert all(types[t] == TensorProto.FLOAT for t in [*n.input, *n.output] if t), name
        assert types[c.gamma] == TensorProto.FLOAT and types[c.beta] == TensorProto.FLOAT
        # fp16 -> fp32 Cast in front, fp32 -> fp16 Cast behind (the rest of the graph is fp16).
        cast_in = producer[c.input]
        assert cast_in.op_type == "Cast" and cast_in.attribute[0].i == TensorProto.FLOAT
        assert types[cast_in.input[0]] == TensorProto.FLOAT16
        outs = consumers[c.output]
        assert [n.op_type for n in outs] == ["Cast"] and outs[0].attribute[0].i == TensorProto.FLOAT16
    # Everything else: weights in fp16; graph inputs/outputs float32.
    for t in model.graph.initializer:
        if t.name not in {x for c in chains for x in (c.gamma, c.beta)}:
            assert t.data_type == TensorProto.FLOAT16, t.name
    assert all(
        v.type.tensor_type.elem_type == TensorProto.FLOAT for v in [*model.graph.input, *model.graph.output]
    )
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Conv")]
    assert matmuls and all(types[n.output[0]] == TensorProto.FLOAT16 for n in matmuls)


def test_surgical_output_is_close_and_weights_halve(fp32: Path, surgical: Path) -> None:
    ref, got = _run(fp32), _run(surgical)
    for r, g in zip(ref, got, strict=True):
        assert g.dtype == np.float32
        cos, ratio = cosine_and_ratio(r, g)
        assert cos > 0.999 and abs(ratio - 1) < 0.01
    data32 = fp32.with_name(fp32.name + ".data").stat().st_size
    data16 = surgical.with_name(surgical.name + ".data").stat().st_size
    assert 0.45 < data16 / data32 < 0.55


def test_naive_converts_everything(fp32: Path, naive: Path) -> None:
    model = onnx.load(str(naive))
    types = _types(naive)
    assert all(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert len(casts) == 4, "one Cast per graph input (audio, identity) and output (2)"
    for c in find_layernorm_chains(model):  # the chains are there, in fp16
        assert types[c.gamma] == TensorProto.FLOAT16
    ref, got = _run(fp32), _run(naive)
    for r, g in zip(ref, got, strict=True):
        assert cosine_and_ratio(r, g)[0] > 0.999


def test_no_layernorm_chains_is_one_line(tmp_path: Path) -> None:
    oracle = save_model(build_oracle("lam"), tmp_path / "oracle.onnx")
    with pytest.raises(BridgeError) as e:
        convert_file(oracle, tmp_path / "out.onnx", "surgical")
    msg = str(e.value)
    assert "\n" not in msg and "no decomposed LayerNorm chains" in msg and "--fp16 naive" in msg
    assert not (tmp_path / "out.onnx").exists()
    convert_file(oracle, tmp_path / "out.onnx", "naive")  # naive has no such requirement
    assert (tmp_path / "out.onnx").is_file()


def test_bad_inputs(fp32: Path, surgical: Path, tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"this is not a protobuf at all \xff\xfe")
    (tmp_path / "lonely.onnx").write_bytes(fp32.read_bytes())  # its .data is not next to it
    cases = {
        "junk.onnx": "not a valid ONNX model",
        "lonely.onnx": "put lam.onnx.data next to lonely.onnx",
        "missing.onnx": "not found",
    }
    for name, expected in cases.items():
        with pytest.raises(BridgeError) as e:
            convert_file(tmp_path / name, tmp_path / "out.onnx", "surgical")
        assert expected in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BridgeError, match="is the input"):
        convert_file(fp32, fp32, "surgical")
    with pytest.raises(BridgeError, match="already has fp16 weights"):
        convert_file(surgical, tmp_path / "again.onnx", "naive")


def test_short_external_data_is_caught_before_loading(fp32: Path, tmp_path: Path) -> None:
    graph = tmp_path / "lam.onnx"
    graph.write_bytes(fp32.read_bytes())
    data = fp32.with_name(fp32.name + ".data").read_bytes()
    (tmp_path / "lam.onnx.data").write_bytes(data[: len(data) // 2])
    with pytest.raises(BridgeError) as e:
        convert_file(graph, tmp_path / "out.onnx", "naive")
    assert "too short" in str(e.value) and "lam.onnx.data" in str(e.value)


def test_cli_convert_and_info(fp32: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli_fp16.onnx"
    runner = CliRunner()
    result = runner.invoke(main, ["models", "convert", "--fp16", "surgical", str(fp32), str(out)])
    assert result.exit_code == 0, result.output
    assert "12 LayerNorm chains" in result.output and out.is_file()
    info = runner.invoke(main, ["models", "info", str(out)])
    assert info.exit_code == 0
    needles = ["audio", "identity", "blendshapes", "asr_logits", "ai.onnx 14", "cli_fp16.onnx.data"]
    needles += ["decomposed LayerNorm chains: 12 (12 with fp32 gamma/beta)", "float16", "float32"]
    for needle in needles:
        assert needle in info.output, needle
    bad = runner.invoke(
        main, ["models", "convert", "--fp16", "surgical", str(tmp_path / "nope.onnx"), str(out)]
    )
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines()[-1].startswith("a2e-bridge: error: model file not found")
