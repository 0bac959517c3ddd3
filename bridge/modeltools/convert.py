"""fp32 -> fp16 conversion of ONNX models: *surgical* (LayerNorm chains kept fp32) and *naive*.

The seed card's point: LAM has no LayerNormalization op -- all 32 LayerNorms
are the opset-14 9-op chain (:mod:`bridge.modeltools.graph`) -- so a converter's
``op_block_list=["LayerNormalization"]`` matches nothing and every
mean/variance/divide runs in fp16, which subdues the output.  The surgical
conversion keeps exactly those chains (their 9 ops, gamma/beta, eps and the
exponent) in fp32 and converts everything else.

Written on ``onnx`` directly rather than onnxconverter-common: the rule is
"these nodes by name stay fp32", which is a small pass over the graph, and it
keeps the bridge free of a dependency whose fp16 pass rewrites graphs in ways
(value_info, Cast placement) that would need their own checking anyway.

The pass: shape inference gives every tensor's element type; each node gets a
precision (fp32 if it is in a kept chain, has subgraphs, is in a custom domain
or is an op without fp16 in the spec; fp16 otherwise); every float input that
arrives in the other precision gets a ``Cast`` (one per tensor and direction,
shared by all consumers); float constants (initializers and ``Constant``
nodes) are stored in the precision their consumers need -- converted in place
when all consumers are fp16, duplicated when both need them.  Graph inputs and
outputs stay float32 (Casts after the inputs and before the outputs).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bridge.errors import BridgeError
from bridge.modeltools.graph import constant_value

log = logging.getLogger(__name__)

Mode = Literal["surgical", "naive"]
FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)

#: Inputs that are float32 whatever the node's data type (Resize roi/scales, Upsample scales).
FP32_ONLY_INPUTS: dict[str, frozenset[int]] = {
    "Resize": frozenset({1, 2}),
    "Upsample": frozenset({1}),
}
#: Ops with no float16 in the ONNX spec, or that compute indices/ranges: always fp32.
FP32_OPS = frozenset(
    {
        "Range", "CumSum", "NonMaxSuppression", "TopK", "RoiAlign", "RandomNormal", "RandomUniform",
        "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli", "Einsum", "STFT", "DFT",
        "ArrayFeatureExtractor", "Binarizer", "CategoryMapper", "DictVectorizer", "FeatureVectorizer",
        "Imputer", "LabelEncoder", "LinearClassifier", "LinearRegressor", "Normalizer", "OneHotEncoder",
        "SVMClassifier", "SVMRegressor", "Scaler", "TreeEnsembleClassifier", "TreeEnsembleRegressor",
        "ZipMap",
    }
)  # fmt: skip


@dataclass(slots=True)
class ConvertReport:
    """What a conversion did."""

    mode: str
    chains: int = 0  #: LayerNorm chains kept in fp32 (surgical)
    fp32_nodes: int = 0  #: nodes left in fp32 (chains + ops that must stay fp32)
    fp16_nodes: int = 0
    casts: int = 0  #: Cast nodes inserted
    converted_tensors: int = 0  #: initializers / Constant values stored as fp16
    duplicated_tensors: int = 0  #: constants kept in both precisions
    clipped_values: int = 0  #: weights beyond +-65504, clipped to the fp16 range
    flushed_values: int = 0  #: non-zero weights that became 0 in fp16
    fp32_ops: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        s = f"{self.mode} fp16: {self.fp16_nodes} nodes fp16, {self.fp32_nodes} fp32"
        if self.mode == "surgical":
            s += f" ({self.chains} LayerNorm chains, {9 * self.chains} ops)"
        s += f", {self.casts} Casts inserted, {self.converted_tensors} tensors to fp16"
        if self.clipped_values:
            s += f"; {self.clipped_values} weights clipped to +-65504"
        if self.flushed_values:
            s += f"; {self.flushed_values} tiny weights flushed to 0"
        return s


def _strip_weights(model: onnx.ModelProto) -> list[tuple[TensorProto, bytes]]:
    """Take the bytes out of big initializers (shape inference needs types, not values)."""
    stash = []
    for t in model.graph.initializer:
        if t.raw_data and len(t.raw_data) > 4096:
            stash.append((t, t.raw_data))
            t.ClearField("raw_data")
    return stash


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor, by ONNX shape inference on a weightless view."""
    stash = _strip_weights(model)
    saved_loc = [(t, t.data_location) for t, _ in stash]
    try:
        for t, _ in saved_loc:
            t.data_location = TensorProto.DEFAULT
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception as e:
        raise BridgeError(
            f"cannot infer tensor types of the model ({e}); is it a valid ONNX graph?"
        ) from None
    finally:
        for (t, raw), (_, loc) in zip(stash, saved_loc, strict=True):
            t.raw_data = raw
            t.data_location = loc
    g = inferred.graph
    types: dict[str, int] = {}
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in model.graph.initializer:
        types[t.name] = t.data_type
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
                elif a.name in ("value_float", "value_floats"):
                    types[node.output[0]] = FLOAT
    return types


def _to_fp16(arr: np.ndarray, report: ConvertReport) -> np.ndarray:
    a = np.asarray(arr, dtype=np.float32)
    over = np.abs(a) > FP16_MAX
    report.clipped_values += int(np.count_nonzero(over & np.isfinite(a)))
    a16 = np.clip(a, -FP16_MAX, FP16_MAX).astype(np.float16)
    report.flushed_values += int(np.count_nonzero((a16 == 0) & (a != 0)))
    return a16


def _fp16_tensor(t: TensorProto, name: str, report: ConvertReport) -> TensorProto:
    return numpy_helper.from_array(_to_fp16(numpy_helper.to_array(t), report), name)


def _const_value(node: onnx.NodeProto) -> np.ndarray:
    """A float Constant node's value, whichever attribute holds it."""
    value = constant_value(node)
    if value is None:
        raise BridgeError(f"Constant node {node.name!r} has no float value")
    return value


class _Names:
    def __init__(self, used: set[str]) -> None:
        self.used = used

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def convert_fp16(model: onnx.ModelProto, mode: Mode = "surgical",
                 source: str = "model") -> tuple[onnx.ModelProto, ConvertReport]:  # fmt: skip
    """Convert ``model`` (weights loaded) in place to fp16 and return it with a report.

    ``surgical`` raises a BridgeError when the graph has no decomposed
    LayerNorm chain (there would be nothing to keep: use ``naive``).
    """
    from bridge.modeltools.graph import find_layernorm_chains

    if mode not in ("surgical", "naive"):
        raise BridgeError(f"unknown fp16 mode {mode!r}; allowed: surgical, naive")
    report = ConvertReport(mode)
    g = model.graph
    keep: set[str] = set()
    if mode == "surgical":
        try:
            chains = find_layernorm_chains(model)
        except ValueError as e:
            raise BridgeError(f"{source}: {e}") from None
        if not chains:
            raise BridgeError(
                f"{source} has no decomposed LayerNorm chains (ReduceMean -> Sub -> Pow -> ReduceMean -> "
                "Add -> Sqrt -> Div -> Mul -> Add): surgical fp16 has nothing to keep in fp32; "
                "use --fp16 naive"
            )
        report.chains = len(chains)
        keep = {n for c in chains for n in c.nodes}
    if any(t.data_type == FLOAT16 for t in g.initializer):
        raise BridgeError(f"{source} already has fp16 weights; convert the fp32 model instead")

    types = _elem_types(model)
    inits = {t.name: t for t in g.initializer}
    const_nodes = {
        n.output[0]: n for n in g.node if n.op_type == "Constant" and types.get(n.output[0]) == FLOAT
    }
    graph_inputs = {i.name for i in g.input}
    producer = {o: n for n in g.node for o in n.output}
    used = {n.name for n in g.node} | {t for n in g.node for t in [*n.input, *n.output]}
    used |= set(inits) | graph_inputs
    names = _Names(used)

    def is16(node: onnx.NodeProto) -> bool:
        if node.op_type == "Constant":
            return False
        if node.name in keep or node.op_type in FP32_OPS or node.domain not in ("", "ai.onnx"):
            return False
        return not any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
        )

    def wants(node: onnx.NodeProto, idx: int) -> int:
        if is16(node) and idx not in FP32_ONLY_INPUTS.get(node.op_type, ()):
            return FLOAT16
        return FLOAT

    # Which precision(s) each float constant is needed in.
    need: dict[str, set[int]] = defaultdict(set)
    for node in g.node:
        for i, name in enumerate(node.input):
            if name and types.get(name) == FLOAT and (name in inits or name in const_nodes):
                need[name].add(wants(node, i))
    for o in g.output:
        if o.name in inits or o.name in const_nodes:
            need[o.name].add(FLOAT)

    def const16_name(name: str) -> str:
        return name if need[name] == {FLOAT16} else f"{name}/fp16"

    # Float graph outputs produced by fp16 nodes: the node writes NAME/fp16, a Cast writes NAME.
    out_renames: dict[str, str] = {}
    for o in g.output:
        p = producer.get(o.name)
        if p is not None and is16(p) and types.get(o.name) == FLOAT:
            out_renames[o.name] = names.fresh(f"{o.name}/fp16")

    cast_memo: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def cast(tensor: str, to: int) -> str:
        key = (tensor, to)
        if key not in cast_memo:
            tag = "fp16" if to == FLOAT16 else "fp32"
            out = names.fresh(f"{tensor}/to_{tag}")
            new_nodes.append(
                helper.make_node("Cast", [tensor], [out], name=names.fresh(f"{out}/Cast"), to=to)
            )
            report.casts += 1
            cast_memo[key] = out
        return cast_memo[key]

    current: dict[str, int] = {name: FLOAT for name in graph_inputs if types.get(name) == FLOAT}
    for node in g.node:
        if node.op_type == "Constant" and node.output[0] in const_nodes:
            out = node.output[0]
            new_nodes.append(node)
            if FLOAT16 not in need[out]:
                continue
            value16 = numpy_helper.from_array(_to_fp16(_const_value(node), report), const16_name(out))
            report.converted_tensors += 1
            if need[out] == {FLOAT16}:
                node.ClearField("attribute")
                node.attribute.append(helper.make_attribute("value", value16))
            else:
                name16 = names.fresh(f"{node.name}/fp16")
                new_nodes.append(
                    helper.make_node("Constant", [], [const16_name(out)], name=name16, value=value16)
                )
                report.duplicated_tensors += 1
            continue
        half = is16(node)
        if half:
            report.fp16_nodes += 1
        elif node.op_type != "Constant":
            report.fp32_nodes += 1
            if node.name not in keep:
                report.fp32_ops[node.op_type] = report.fp32_ops.get(node.op_type, 0) + 1
        for i, name in enumerate(node.input):
            if not name or types.get(name) != FLOAT:
                continue
            want = wants(node, i)
            if name in inits or name in const_nodes:
                if want == FLOAT16:
                    node.input[i] = const16_name(name)
                continue
            have = current.get(name, FLOAT)
            if have != want:
                node.input[i] = cast(name, want)
        if half:
            for a in node.attribute:
                if node.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
                    a.i = FLOAT16
                elif node.op_type == "ConstantOfShape" and a.name == "value" and a.t.data_type == FLOAT:
                    a.t.CopyFrom(_fp16_tensor(a.t, a.t.name, report))
        for j, out in enumerate(node.output):
            if out in out_renames:
                node.output[j] = out_renames[out]
                current[out_renames[out]] = FLOAT16
            if types.get(out) == FLOAT or (node.op_type == "Cast" and half):
                current[out] = FLOAT16 if half else FLOAT
        new_nodes.append(node)

    # Readers of a renamed graph output read the fp16 tensor (or the Cast, if they want fp32).
    for node in new_nodes:
        for i, name in enumerate(node.input):
            if name in out_renames:
                node.input[i] = out_renames[name]
    for o, renamed in out_renames.items():
        new_nodes.append(
            helper.make_node("Cast", [renamed], [o], name=names.fresh(f"{o}/Cast_fp32"), to=FLOAT)
        )
        report.casts += 1
    for o in g.output:
        if o.name in current and current[o.name] == FLOAT16 and o.name not in out_renames:
            raise BridgeError(f"{source}: internal error: output {o.name} would be fp16")

    # Initializers in the precision(s) their readers need.
    extra: list[TensorProto] = []
    for t in g.initializer:
        if t.data_type != FLOAT or FLOAT16 not in need.get(t.name, set()):
            continue
        t16 = _fp16_tensor(t, const16_name(t.name), report)
        report.converted_tensors += 1
        if need[t.name] == {FLOAT16}:
            t.CopyFrom(t16)
        else:
            extra.append(t16)
            report.duplicated_tensors += 1
    g.initializer.extend(extra)

    g.ClearField("node")
    g.node.extend(new_nodes)
    g.ClearField("value_info")  # stale float types; ORT infers its own
    props = {p.key: p.value for p in model.metadata_props}
    props.update({"fp16": mode, "fp16_layernorm_chains_fp32": str(report.chains)})
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    return model, report


def convert_file(src: str | Path, dst: str | Path, mode: Mode = "surgical") -> ConvertReport:
    """Convert the model at ``src`` and write ``dst`` + ``dst.data`` (atomically)."""
    from bridge.model.files import check_model_files
    from bridge.modeltools.synth import save_model

    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise BridgeError(f"convert: output {dst} is the input; write the fp16 model to a new file")
    if dst.suffix != ".onnx":
        raise BridgeError(f"convert: output {dst} should end in .onnx (its weights go to {dst.name}.data)")
    check_model_files(src)
    try:
        model = onnx.load(str(src))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BridgeError(f"cannot read model {src}: {first}") from None
    model, report = convert_fp16(model, mode, source=str(src))
    try:
        save_model(model, dst)
    except OSError as e:
        raise BridgeError(f"cannot write {dst}: {e.strerror or e}") from None
    return report


__all__ = ["ConvertReport", "convert_file", "convert_fp16"]
