"""``models info``: what a model file holds (inputs, outputs, weights by type, operators).

The checks the running bridge makes on a model's files live in :mod:`bridge.model.files`.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from bridge.model.files import (
    ExternalFile,
    _itemsize,
    external_files,
    load_graph,
)


def dtype_name(elem_type: int) -> str:
    """``float32``, ``float16``, ``int8`` ... for an ONNX tensor element type."""
    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)))
    except Exception:  # bfloat16 / float8 have no numpy dtype
        return TensorProto.DataType.Name(elem_type).lower()


@dataclass(slots=True)
class TensorSummary:
    name: str
    dtype: str
    shape: tuple[int | str, ...]


@dataclass(slots=True)
class ModelInfo:
    """What ``a2e-bridge models info`` prints."""

    path: Path
    size: int
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[TensorSummary]
    outputs: list[TensorSummary]
    external: list[ExternalFile]
    parameters: int
    layernorm_chains: int
    layernorm_fp32: int  #: chains whose gamma is float32
    initializers: dict[str, tuple[int, int, int]] = field(default_factory=dict)  #: dtype -> (n, elems, bytes)
    constants: dict[str, tuple[int, int, int]] = field(default_factory=dict)  #: same, for Constant nodes
    ops: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def _value_summary(v: onnx.ValueInfoProto) -> TensorSummary:
    tt = v.type.tensor_type
    dims: tuple[int | str, ...] = tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim
    )
    return TensorSummary(v.name, dtype_name(tt.elem_type), dims)


def _tally(tensors: list[TensorProto]) -> dict[str, tuple[int, int, int]]:
    out: dict[str, list[int]] = {}
    for t in tensors:
        elems = math.prod(t.dims)
        row = out.setdefault(dtype_name(t.data_type), [0, 0, 0])
        row[0] += 1
        row[1] += elems
        row[2] += int(elems * _itemsize(t.data_type))
    return {k: (v[0], v[1], v[2]) for k, v in sorted(out.items(), key=lambda kv: -kv[1][2])}


def inspect_model(path: str | Path) -> ModelInfo:
    """Everything :func:`format_info` prints, from the graph alone (weights are not read)."""
    from bridge.modeltools.graph import count_parameters, find_layernorm_chains

    p = Path(path)
    model = load_graph(p)
    try:
        chains = find_layernorm_chains(model)
    except ValueError:
        chains = []
    inits = {t.name: t for t in model.graph.initializer}
    fp32 = sum(1 for c in chains if c.gamma in inits and inits[c.gamma].data_type == TensorProto.FLOAT)
    consts = [
        a.t
        for n in model.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.type == onnx.AttributeProto.TENSOR
    ]
    init_names = {t.name for t in model.graph.initializer}
    return ModelInfo(
        path=p,
        size=p.stat().st_size,
        ir_version=model.ir_version,
        opsets={(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        producer=" ".join(x for x in (model.producer_name, model.producer_version) if x),
        inputs=[_value_summary(v) for v in model.graph.input if v.name not in init_names],
        outputs=[_value_summary(v) for v in model.graph.output],
        external=external_files(model, p),
        parameters=count_parameters(model),
        layernorm_chains=len(chains),
        layernorm_fp32=fp32,
        initializers=_tally(list(model.graph.initializer)),
        constants=_tally(consts),
        ops=dict(Counter(n.op_type for n in model.graph.node).most_common()),
        metadata={p.key: p.value for p in model.metadata_props},
    )


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_info(info: ModelInfo) -> str:
    """A human-readable report of :func:`inspect_model`."""

    def shape(s: TensorSummary) -> str:
        return "[" + ", ".join(str(d) for d in s.shape) + "]"

    lines = [f"{info.path}  ({_human(info.size)} graph file)"]
    lines.append(
        f"  opset: {', '.join(f'{d} {v}' for d, v in info.opsets.items())}; IR version {info.ir_version}"
        + (f"; producer {info.producer}" if info.producer else "")
    )
    lines.append("  inputs:")
    lines += [f"    {s.name:<16} {s.dtype:<8} {shape(s)}" for s in info.inputs]
    lines.append("  outputs:")
    lines += [f"    {s.name:<16} {s.dtype:<8} {shape(s)}" for s in info.outputs]
    if info.external:
        lines.append("  external data:")
        for f in info.external:
            state = (
                "MISSING"
                if f.size is None
                else ("ok" if f.size >= f.needed_bytes else f"TOO SHORT (needs {f.needed_bytes} bytes)")
            )
            size = _human(f.size) if f.size is not None else "-"
            lines.append(f"    {f.location}  {size}, {f.tensors} tensors, {state}")
    else:
        lines.append("  external data: none (weights inside the graph file)")
    lines.append(f"  parameters: {info.parameters:,} ({info.parameters / 1e6:.1f} M)")
    ln = f"  decomposed LayerNorm chains: {info.layernorm_chains}"
    if info.layernorm_chains:
        ln += f" ({info.layernorm_fp32} with fp32 gamma/beta)"
    lines.append(ln)
    lines.append("  initialiser precision:")
    for dt, (n, elems, nbytes) in info.initializers.items():
        lines.append(f"    {dt:<8} {n:>5} tensors {elems:>13,} values {_human(nbytes):>10}")
    if info.constants:
        const = ", ".join(f"{n} {dt}" for dt, (n, _, _) in info.constants.items())
        lines.append(f"  Constant nodes: {const}")
    lines.append("  ops: " + ", ".join(f"{op} {n}" for op, n in info.ops.items()))
    if info.metadata:
        lines.append("  metadata: " + ", ".join(f"{k}={v}" for k, v in info.metadata.items()))
    return "\n".join(lines)


__all__ = ["ModelInfo", "format_info", "inspect_model"]
