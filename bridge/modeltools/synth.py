"""Synthetic ONNX models with the real models' interfaces, built with ``onnx`` + ``numpy`` only.

The real LAM / wav2arkit weights cannot be downloaded on the machines that test
and benchmark the bridge, and PyTorch is not a dependency.  So the bridge
writes its own graphs, node by node:

* :func:`build_lam` / :func:`build_wav2arkit` -- random-weight models with the
  real interface *and* the real compute shape (wav2vec2-base conv extractor,
  12 post-LN transformer layers, LAM decoder).  ``full`` is for timing and
  memory figures; ``tiny`` has the same topology with tiny dimensions, for tests.
  Every LayerNorm is the decomposed opset-14 9-op chain the real export has, so
  the surgical fp16 converter can be tested on them (:mod:`bridge.modeltools.graph`).
* :func:`build_oracle` -- a model whose every output value is known in closed
  form (:func:`oracle_value`), for tests that prove frame alignment and the
  by-name mapping of blendshape channels end to end.

Layouts: conv stacks run channels-first ``[batch, channels, time]``, the
transformer and the linear heads time-major ``[batch, time, channels]``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bridge.blendshapes import NUM_BLENDSHAPES, resolve_order
from bridge.model.description import LAM, WAV2ARKIT, ModelDescription

#: ai.onnx opset of every model built here (the real export's; LayerNormalization
#: does not exist yet, hence the decomposed chains).
OPSET = 14
#: IR version 8 loads in onnxruntime 1.17+ (the seed's minimum).
IR_VERSION = 8
SAMPLE_RATE = 16_000
FPS = 30
LN_EPS = 1e-5
#: The identity one-hot wav2arkit has baked in.
WAV2ARKIT_IDENTITY = 11

#: Oracle: per output-channel offset (exact in float32).
ORACLE_STEP: float = 1 / 128
#: Oracle: per identity-index offset (exact in float32).
ORACLE_IDENTITY_STEP: float = 1 / 1024

Family = Literal["lam", "wav2arkit"]
Size = Literal["tiny", "full"]
#: Bumped whenever the demo graph changes, so a cached build of an older one is rebuilt.
DEMO_VERSION = 2


def model_kind(size: str, oracle: bool = False) -> str:
    """The ``kind`` metadata a built synthetic model records (the cache checks it)."""
    if oracle:
        return "oracle"
    return f"demo-{DEMO_VERSION}" if size == "demo" else size


@dataclass(frozen=True, slots=True)
class SynthConfig:
    """Dimensions of one synthetic model; the topology is the same for every size."""

    conv_channels: int  #: feature-extractor channels (512 in wav2vec2-base)
    hidden: int  #: transformer width (768)
    layers: int  #: transformer layers (12)
    heads: int  #: attention heads (12)
    ffn: int  #: feed-forward width (3072)
    pos_kernel: int  #: positional conv kernel (128, even: padding kernel/2, last frame dropped)
    pos_groups: int  #: positional conv groups (16)
    decoder: int  #: LAM decoder width (512)
    identity_channels: int  #: identity embedding width (64)
    conv_kernels: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_strides: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    res_blocks: int = 3  #: decoder residual Conv+LN+ReLU blocks
    plain_blocks: int = 3  #: decoder plain Conv+LN+ReLU blocks
    vocab: int = 32  #: CTC vocabulary (LAM only)
    identity_classes: int = 12

    @property
    def layernorm_count(self) -> int:
        """Decomposed LayerNorm chains in the graph: projection + encoder + 2/layer + decoder."""
        return 2 + 2 * self.layers + self.res_blocks + self.plain_blocks

    def conv_frames(self, samples: int) -> int:
        """Frames out of the conv feature extractor (50 fps): the ``asr_logits`` length."""
        n = samples
        for k, s in zip(self.conv_kernels, self.conv_strides, strict=True):
            n = (n - k) // s + 1
        return n

    def parameter_count(self, family: Family = "lam") -> int:
        """Parameters the builder creates, from the dimensions alone (checks the builder)."""
        c, h, f = self.conv_channels, self.hidden, self.ffn
        d, ic = self.decoder, self.identity_channels
        n = 0
        c_in = 1
        for k in self.conv_kernels:  # conv stack, no bias (wav2vec2-base)
            n += c * c_in * k
            c_in = c
        n += 2 * c  # group norm of layer 0
        n += 2 * c + c * h + h  # feature projection
        n += h * (h // self.pos_groups) * self.pos_kernel + h  # positional conv
        n += 2 * h  # encoder LayerNorm
        n += self.layers * (4 * (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h)
        if family == "lam":
            n += h * self.vocab + self.vocab  # CTC head
        n += h * d + d  # decoder input projection
        n += self.identity_classes * ic + ic  # identity 1x1 conv
        n += (d + ic) * d * 3 + d + 2 * d  # first residual block
        n += (self.res_blocks - 1 + self.plain_blocks) * (d * d * 3 + d + 2 * d)
        n += d * NUM_BLENDSHAPES + NUM_BLENDSHAPES  # output projection
        return n


#: ``full`` is wav2vec2-base + the LAM decoder; ``tiny`` the same graph, small.
CONFIGS: dict[str, SynthConfig] = {
    "full": SynthConfig(
        conv_channels=512, hidden=768, layers=12, heads=12, ffn=3072,
        pos_kernel=128, pos_groups=16, decoder=512, identity_channels=64,
    ),
    "tiny": SynthConfig(
        conv_channels=32, hidden=64, layers=2, heads=2, ffn=128,
        pos_kernel=16, pos_groups=4, decoder=64, identity_channels=16,
    ),
}  # fmt: skip


def lam_frames(samples: int) -> int:
    """LAM's 30 fps output frames for ``samples`` at 16 kHz (floor)."""
    return samples * FPS // SAMPLE_RATE


def wav2arkit_frames(samples: int) -> int:
    """wav2arkit's 30 fps output frames for ``samples`` at 16 kHz (ceil)."""
    return -(-samples * FPS // SAMPLE_RATE)


class _Builder:
    """Collects nodes, initializers and shared constants for one graph.

    Weights become initializers (they are the parameters and go to external
    data); small non-parameter constants (eps, exponents, shapes) become
    ``Constant`` nodes, shared by value, so :func:`count_parameters` counts
    weights only.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.tensors: list[tuple[str, np.ndarray]] = []
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self._used: set[str] = set()

    def _unique(self, name: str) -> str:
        if name not in self._used:
            self._used.add(name)
            return name
        i = 1
        while f"{name}_{i}" in self._used:
            i += 1
        self._used.add(f"{name}_{i}")
        return f"{name}_{i}"

    def op(self, op_type: str, inputs: list[str], name: str, output: str | None = None,
           **attrs: object) -> str:  # fmt: skip
        """Add one single-output node; its output tensor is named after the node."""
        node_name = self._unique(name)
        out = output or node_name
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=node_name, **attrs))
        return out

    def weight(self, name: str, shape: tuple[int, ...], std: float) -> str:
        """A random-normal float32 initializer (float32 directly: building ``full`` stays fast)."""
        arr = self.rng.standard_normal(shape, dtype=np.float32)
        arr *= np.float32(std)
        return self.tensor(name, arr)

    def norm_weight(self, name: str, dim: int, center: float) -> str:
        """Norm gamma (~1) or beta (~0): near ``center``, with a little spread."""
        arr = self.rng.standard_normal((dim,), dtype=np.float32)
        arr *= np.float32(0.02)
        arr += np.float32(center)
        return self.tensor(name, arr)

    def tensor(self, name: str, arr: np.ndarray) -> str:
        self._used.add(name)
        self.tensors.append((name, arr))
        return name

    def const(self, value: float | list[int] | list[float] | np.ndarray,
              dtype: type = np.float32) -> str:  # fmt: skip
        """A shared ``Constant`` node holding ``value`` (a scalar stays 0-d)."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            tag = "x".join(map(str, arr.shape)) or "scalar"
            name = self._unique(f"const/{arr.dtype.name}_{tag}")
            self.nodes.append(
                helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(arr, name))
            )
            self._consts[key] = name
        return self._consts[key]

    def ints(self, value: list[int]) -> str:
        return self.const(value, np.int64)

    # -- layers -------------------------------------------------------------------------------

    def linear(self, x: str, fan_in: int, fan_out: int, name: str) -> str:
        """``x @ W + b`` on the last axis, as MatMul + Add (what the torch exporter writes)."""
        std = 1.0 / math.sqrt(fan_in)
        w = self.weight(f"{name}.weight", (fan_in, fan_out), std)
        b = self.weight(f"{name}.bias", (fan_out,), std)
        y = self.op("MatMul", [x, w], f"{name}/MatMul")
        return self.op("Add", [y, b], f"{name}/Add")

    def conv1d(self, x: str, c_in: int, c_out: int, kernel: int, name: str, *, stride: int = 1,
               pad: int = 0, group: int = 1, bias: bool = True) -> str:  # fmt: skip
        std = 1.0 / math.sqrt(c_in // group * kernel)
        inputs = [x, self.weight(f"{name}.weight", (c_out, c_in // group, kernel), std)]
        if bias:
            inputs.append(self.weight(f"{name}.bias", (c_out,), std))
        return self.op(
            "Conv", inputs, f"{name}/Conv", kernel_shape=[kernel], strides=[stride],
            pads=[pad, pad], group=group,
        )  # fmt: skip

    def layernorm(self, x: str, dim: int, name: str) -> str:
        """LayerNorm over the last axis as the exact 9-op opset-14 chain of the real export.

        ``ReduceMean -> Sub -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt -> Div -> Mul -> Add``;
        the Sub's output feeds both Pow and Div.
        """
        gamma = self.norm_weight(f"{name}.weight", dim, 1.0)
        beta = self.norm_weight(f"{name}.bias", dim, 0.0)
        mean = self.op("ReduceMean", [x], f"{name}/ReduceMean", axes=[-1], keepdims=1)
        centred = self.op("Sub", [x, mean], f"{name}/Sub")
        sq = self.op("Pow", [centred, self.const(2.0)], f"{name}/Pow")
        var = self.op("ReduceMean", [sq], f"{name}/ReduceMean_1", axes=[-1], keepdims=1)
        var_eps = self.op("Add", [var, self.const(LN_EPS)], f"{name}/Add")
        std = self.op("Sqrt", [var_eps], f"{name}/Sqrt")
        normed = self.op("Div", [centred, std], f"{name}/Div")
        scaled = self.op("Mul", [normed, gamma], f"{name}/Mul")
        return self.op("Add", [scaled, beta], f"{name}/Add_1")

    def layernorm_channels(self, x: str, dim: int, name: str) -> str:
        """LayerNorm over the channel axis of ``[B, C, T]``: Transpose, the 9-op chain, back."""
        t = self.op("Transpose", [x], f"{name}/Transpose", perm=[0, 2, 1])
        y = self.layernorm(t, dim, name)
        return self.op("Transpose", [y], f"{name}/Transpose_1", perm=[0, 2, 1])

    def gelu(self, x: str, name: str) -> str:
        """Exact GELU as ``x * 0.5 * (1 + erf(x / sqrt2))`` (ORT fuses it back)."""
        d = self.op("Div", [x, self.const(math.sqrt(2.0))], f"{name}/Div")
        e = self.op("Erf", [d], f"{name}/Erf")
        a = self.op("Add", [e, self.const(1.0)], f"{name}/Add")
        m = self.op("Mul", [x, a], f"{name}/Mul")
        return self.op("Mul", [m, self.const(0.5)], f"{name}/Mul_1")

    def transpose(self, x: str, perm: list[int], name: str) -> str:
        return self.op("Transpose", [x], name, perm=perm)

    def model(self, name: str, inputs: list[onnx.ValueInfoProto],
              outputs: list[onnx.ValueInfoProto], **metadata: str) -> onnx.ModelProto:  # fmt: skip
        """The finished model.  Weights are written straight into the model's own graph:
        ``make_graph``/``make_model`` would copy all ~400 MB of ``full`` twice."""
        graph = helper.make_graph(self.nodes, name, inputs, outputs)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
            producer_name="a2e-bridge.synth",
            doc_string="synthetic model (random or oracle weights)",
        )  # fmt: skip
        helper.set_model_props(model, {"synthetic": "true", **metadata})
        for tensor_name, arr in self.tensors:
            t = model.graph.initializer.add()
            t.name = tensor_name
            t.data_type = TensorProto.FLOAT
            t.dims.extend(arr.shape)
            t.raw_data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        self.tensors.clear()
        return model


def _frames_graph(b: _Builder, audio: str, ceil: bool) -> tuple[str, str]:
    """``(batch, frames)`` as int64 [1] tensors from ``Shape(audio)``: the 30 fps frame count."""
    shape = b.op("Shape", [audio], "frames/Shape")
    batch = b.op("Slice", [shape, b.ints([0]), b.ints([1]), b.ints([0])], "frames/batch")
    samples = b.op("Slice", [shape, b.ints([1]), b.ints([2]), b.ints([0])], "frames/samples")
    scaled = b.op("Mul", [samples, b.ints([FPS])], "frames/Mul")
    if ceil:
        scaled = b.op("Add", [scaled, b.ints([SAMPLE_RATE - 1])], "frames/Add")
    frames = b.op("Div", [scaled, b.ints([SAMPLE_RATE])], "frames/Div")
    return batch, frames


def _build_a2e(family: Family, size: Size, seed: int) -> onnx.ModelProto:
    """wav2vec2-base encoder + LAM decoder; ``family`` picks the interface."""
    if size not in CONFIGS:
        raise ValueError(f"size {size!r} is not known; allowed: {', '.join(CONFIGS)}")
    cfg = CONFIGS[size]
    desc: ModelDescription = LAM if family == "lam" else WAV2ARKIT
    lam = family == "lam"
    b = _Builder(seed)
    audio = desc.audio_input
    c, h, d, ic = cfg.conv_channels, cfg.hidden, cfg.decoder, cfg.identity_channels

    # Conv feature extractor [B, 1, S] -> [B, C, T50]: no bias, GroupNorm(C groups) on layer 0.
    x = b.op("Unsqueeze", [audio, b.ints([1])], "feature_extractor/Unsqueeze")
    c_in = 1
    for i, (k, s) in enumerate(zip(cfg.conv_kernels, cfg.conv_strides, strict=True)):
        name = f"feature_extractor.conv_layers.{i}"
        x = b.conv1d(x, c_in, c, k, f"{name}.conv", stride=s, bias=False)
        if i == 0:
            scale = b.norm_weight(f"{name}.layer_norm.weight", c, 1.0)
            shift = b.norm_weight(f"{name}.layer_norm.bias", c, 0.0)
            x = b.op(
                "InstanceNormalization", [x, scale, shift], f"{name}.layer_norm/GroupNorm",
                epsilon=LN_EPS,
            )  # fmt: skip
        x = b.gelu(x, f"{name}.activation")
        c_in = c

    # Feature projection [B, T50, C] -> [B, T50, H].
    x = b.transpose(x, [0, 2, 1], "feature_projection/Transpose")
    x = b.layernorm(x, c, "feature_projection.layer_norm")
    x = b.linear(x, c, h, "feature_projection.projection")

    # Positional conv embedding: grouped conv, drop the last frame (even kernel), GELU, add.
    t = b.transpose(x, [0, 2, 1], "encoder.pos_conv_embed/Transpose")
    pad = cfg.pos_kernel // 2
    pc = b.conv1d(t, h, h, cfg.pos_kernel, "encoder.pos_conv_embed.conv", pad=pad,
                  group=cfg.pos_groups)  # fmt: skip
    pc = b.op("Slice", [pc, b.ints([0]), b.ints([-1]), b.ints([2])], "encoder.pos_conv_embed/Slice")
    pc = b.gelu(pc, "encoder.pos_conv_embed.activation")
    pc = b.transpose(pc, [0, 2, 1], "encoder.pos_conv_embed/Transpose_1")
    x = b.op("Add", [x, pc], "encoder.pos_conv_embed/Add")
    x = b.layernorm(x, h, "encoder.layer_norm")

    outputs = []
    if lam:
        asr = b.linear(x, h, cfg.vocab, "lm_head")
        asr = b.op("Identity", [asr], "lm_head/Identity", output=desc.asr_output)
        outputs.append(
            helper.make_tensor_value_info(asr, TensorProto.FLOAT, ["batch", "frames50", cfg.vocab])
        )

    # 50 fps -> 30 fps: linear interpolation, align_corners, size from Shape(audio).
    batch, frames = _frames_graph(b, audio, ceil=not lam)
    t = b.transpose(x, [0, 2, 1], "resample/Transpose")
    sizes = b.op("Concat", [batch, b.ints([h]), frames], "resample/sizes", axis=0)
    t = b.op(
        "Resize", [t, "", "", sizes], "resample/Resize", mode="linear",
        coordinate_transformation_mode="align_corners",
    )  # fmt: skip
    x = b.transpose(t, [0, 2, 1], "resample/Transpose_1")

    # Post-LN transformer layers.
    hd = h // cfg.heads
    split = b.ints([0, 0, cfg.heads, hd])
    for i in range(cfg.layers):
        p = f"encoder.layers.{i}"
        q = b.linear(x, h, h, f"{p}.attention.q_proj")
        q = b.op("Mul", [q, b.const(1.0 / math.sqrt(hd))], f"{p}.attention/scale")
        k = b.linear(x, h, h, f"{p}.attention.k_proj")
        v = b.linear(x, h, h, f"{p}.attention.v_proj")
        q = b.op("Reshape", [q, split], f"{p}.attention/Reshape_q")
        k = b.op("Reshape", [k, split], f"{p}.attention/Reshape_k")
        v = b.op("Reshape", [v, split], f"{p}.attention/Reshape_v")
        q = b.transpose(q, [0, 2, 1, 3], f"{p}.attention/Transpose_q")  # [B, h, T, d]
        k = b.transpose(k, [0, 2, 3, 1], f"{p}.attention/Transpose_k")  # [B, h, d, T]
        v = b.transpose(v, [0, 2, 1, 3], f"{p}.attention/Transpose_v")
        s = b.op("MatMul", [q, k], f"{p}.attention/MatMul_qk")
        s = b.op("Softmax", [s], f"{p}.attention/Softmax", axis=-1)
        o = b.op("MatMul", [s, v], f"{p}.attention/MatMul_av")
        o = b.transpose(o, [0, 2, 1, 3], f"{p}.attention/Transpose_o")
        o = b.op("Reshape", [o, b.ints([0, 0, h])], f"{p}.attention/Reshape_o")
        o = b.linear(o, h, h, f"{p}.attention.out_proj")
        x = b.op("Add", [x, o], f"{p}/Add_attention")
        x = b.layernorm(x, h, f"{p}.layer_norm")
        f = b.linear(x, h, cfg.ffn, f"{p}.feed_forward.intermediate_dense")
        f = b.gelu(f, f"{p}.feed_forward.activation")
        f = b.linear(f, cfg.ffn, h, f"{p}.feed_forward.output_dense")
        x = b.op("Add", [x, f], f"{p}/Add_feed_forward")
        x = b.layernorm(x, h, f"{p}.final_layer_norm")

    # LAM decoder, channels-first [B, D, F].
    y = b.linear(x, h, d, "decoder.input_proj")
    y = b.transpose(y, [0, 2, 1], "decoder/Transpose")
    if lam:
        ident = b.op("Unsqueeze", [desc.identity_input, b.ints([2])], "decoder.identity/Unsqueeze")
    else:
        one_hot = np.zeros((1, cfg.identity_classes, 1), np.float32)
        one_hot[0, WAV2ARKIT_IDENTITY, 0] = 1.0
        ident = b.const(one_hot)
    ident = b.conv1d(ident, cfg.identity_classes, ic, 1, "decoder.identity_conv")
    shape = b.op("Concat", [batch, b.ints([ic]), frames], "decoder.identity/shape", axis=0)
    ident = b.op("Expand", [ident, shape], "decoder.identity/Expand")
    z = b.op("Concat", [y, ident], "decoder/Concat", axis=1)
    for i in range(cfg.res_blocks):
        p = f"decoder.res_blocks.{i}"
        r = b.conv1d(z, d + ic if i == 0 else d, d, 3, f"{p}.conv", pad=1)
        r = b.layernorm_channels(r, d, f"{p}.norm")
        r = b.op("Relu", [r], f"{p}/Relu")
        # The first block narrows 576 -> 512 channels: its skip is the audio part alone.
        z = b.op("Add", [r, y if i == 0 else z], f"{p}/Add")
    for i in range(cfg.plain_blocks):
        p = f"decoder.blocks.{i}"
        z = b.conv1d(z, d, d, 3, f"{p}.conv", pad=1)
        z = b.layernorm_channels(z, d, f"{p}.norm")
        z = b.op("Relu", [z], f"{p}/Relu")
    z = b.transpose(z, [0, 2, 1], "decoder/Transpose_1")
    z = b.linear(z, d, NUM_BLENDSHAPES, "decoder.output_proj")
    out = b.op("Sigmoid", [z], "decoder/Sigmoid", output=desc.blendshapes_output)
    outputs.append(
        helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", "frames", NUM_BLENDSHAPES])
    )

    inputs = [helper.make_tensor_value_info(audio, TensorProto.FLOAT, ["batch", "samples"])]
    if lam:
        inputs.append(
            helper.make_tensor_value_info(
                desc.identity_input, TensorProto.FLOAT, ["batch", cfg.identity_classes]
            )
        )
    return b.model(f"synthetic_{family}_{size}", inputs, outputs, family=family, kind=size,
                   seed=str(seed))  # fmt: skip


def build_lam(size: Size, seed: int = 0) -> onnx.ModelProto:
    """A random-weight model with LAM's interface (``audio``, ``identity`` -> ``asr_logits``,
    ``blendshapes``) and compute shape; ``full`` is ~100 M parameters."""
    return _build_a2e("lam", size, seed)


def build_wav2arkit(size: Size, seed: int = 0) -> onnx.ModelProto:
    """A random-weight model with wav2arkit's interface (``audio_waveform`` -> ``blendshapes``,
    ceil frame count, identity 11 baked in, no CTC head)."""
    return _build_a2e("wav2arkit", size, seed)


def oracle_value(frame_mean: float, channel_index: int, identity_index: int = 0) -> float:
    """What an oracle model outputs for a frame whose audio averages ``frame_mean``."""
    return frame_mean + ORACLE_STEP * channel_index + ORACLE_IDENTITY_STEP * identity_index


def build_oracle(family: Family = "lam", window_samples: int = 16000,
                 output_order: tuple[str, ...] | None = None) -> onnx.ModelProto:  # fmt: skip
    """A model whose outputs are known exactly, to prove frame alignment and channel mapping.

    ``blendshapes[0, i, j]`` is the mean of the window's samples ``s`` with
    ``floor(s * F / W) == i`` (a MatMul with a constant [W, F] averaging matrix),
    plus ``ORACLE_STEP * j``, plus ``ORACLE_IDENTITY_STEP * (identity @ arange(12))``
    for LAM.  No sigmoid.  Fixed batch 1 and window ``W``.  ``output_order`` is
    metadata only (``metadata_props["output_order"]``): channel ``j`` is ``j``.
    """
    if family not in ("lam", "wav2arkit"):
        raise ValueError(f"family {family!r} is not known; allowed: lam, wav2arkit")
    lam = family == "lam"
    desc = LAM if lam else WAV2ARKIT
    w = int(window_samples)
    f = lam_frames(w) if lam else wav2arkit_frames(w)
    t50 = CONFIGS["full"].conv_frames(w)
    if f < 1 or t50 < 1:
        raise ValueError(f"window_samples={w} is too short for one output frame")
    b = _Builder(0)

    average = np.zeros((w, f), np.float32)
    idx = np.arange(w, dtype=np.int64) * f // w
    average[np.arange(w), idx] = 1.0 / np.bincount(idx, minlength=f)[idx]
    avg = b.tensor("oracle.average", average)
    offsets = (np.arange(NUM_BLENDSHAPES, dtype=np.float32) * np.float32(ORACLE_STEP)).reshape(
        1, 1, NUM_BLENDSHAPES
    )
    off = b.tensor("oracle.channel_offset", offsets)

    m = b.op("MatMul", [desc.audio_input, avg], "oracle/frame_mean")  # [1, F]
    m = b.op("Unsqueeze", [m, b.ints([2])], "oracle/Unsqueeze")  # [1, F, 1]
    y = b.op("Add", [m, off], "oracle/Add_channel")  # [1, F, 52]
    inputs = [helper.make_tensor_value_info(desc.audio_input, TensorProto.FLOAT, [1, w])]
    outputs = []
    if lam:
        inputs.append(helper.make_tensor_value_info(desc.identity_input, TensorProto.FLOAT, [1, 12]))
        steps = np.arange(12, dtype=np.float32).reshape(12, 1) * np.float32(ORACLE_IDENTITY_STEP)
        ident_w = b.tensor("oracle.identity_offset", steps)
        ident = b.op("MatMul", [desc.identity_input, ident_w], "oracle/identity")  # [1, 1]
        ident = b.op("Unsqueeze", [ident, b.ints([2])], "oracle/Unsqueeze_1")  # [1, 1, 1]
        y = b.op("Add", [y, ident], "oracle/Add_identity")
        asr_shape = b.ints([1, t50, 32])
        b.op("ConstantOfShape", [asr_shape], "oracle/asr", output=desc.asr_output,
             value=numpy_helper.from_array(np.zeros(1, np.float32)))  # fmt: skip
        outputs.append(helper.make_tensor_value_info(desc.asr_output, TensorProto.FLOAT, [1, t50, 32]))
    b.op("Identity", [y], "oracle/Identity", output=desc.blendshapes_output)
    outputs.append(
        helper.make_tensor_value_info(desc.blendshapes_output, TensorProto.FLOAT, [1, f, NUM_BLENDSHAPES])
    )
    meta = {"family": family, "kind": "oracle", "window_samples": str(w)}
    if output_order is not None:
        meta["output_order"] = ",".join(resolve_order(tuple(output_order)))
    return b.model(f"oracle_{family}", inputs, outputs, **meta)


def save_model(model: onnx.ModelProto, path: str | Path, external_data: bool = True) -> Path:
    """Write ``model`` to ``path`` (+ ``path.name + ".data"`` with external data), atomically.

    Everything is first written into a fresh temporary folder beside ``path``
    and then moved into place with ``os.replace`` -- the weights first, the
    graph last -- so a reader never sees a half-written file nor a new graph
    without its weights.  ``model`` itself is left untouched (onnx's saver
    would otherwise strip the weights out of the in-memory proto).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_name = path.name + ".data"
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        tmp_graph = tmp / path.name
        if external_data:
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            onnx.save_model(
                copy, tmp_graph, save_as_external_data=True, all_tensors_to_one_file=True,
                location=data_name, size_threshold=1024,
            )  # fmt: skip
            del copy
            tmp_data = tmp / data_name
            tmp_data.touch()  # no tensor over the threshold: still write the (empty) pair
            # onnx writes the weights 0600; give them the graph file's (umask-default) mode.
            tmp_data.chmod(tmp_graph.stat().st_mode & 0o777)
            os.replace(tmp_data, path.parent / data_name)
        else:
            onnx.save_model(model, tmp_graph)
        os.replace(tmp_graph, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def synthesize(family: str, size: str, path: str | Path, *, oracle: bool = False,
               seed: int = 0) -> Path:  # fmt: skip
    """Build a synthetic model (or the 1 s oracle of ``family``) and save it with external data.

    ``size`` is ``tiny`` or ``full`` (random weights); the demo model is
    :func:`bridge.modeltools.demo.synthesize_demo`'s.
    """
    if family not in ("lam", "wav2arkit"):
        raise ValueError(f"family {family!r} is not known; allowed: lam, wav2arkit")
    if oracle:
        model = build_oracle(family, window_samples=SAMPLE_RATE)  # type: ignore[arg-type]
    elif family == "lam":
        model = build_lam(size, seed)  # type: ignore[arg-type]
    else:
        model = build_wav2arkit(size, seed)  # type: ignore[arg-type]
    return save_model(model, path)
