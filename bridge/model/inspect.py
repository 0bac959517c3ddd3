"""Looking at a model file before anything loads it: checks and ``models info``.

ONNX Runtime's own errors for a bad file are long, sometimes a crash, and
never name the external data file that is short.  :func:`check_model_files`
reads only the graph (weights stay on disk) and checks every external-data
reference against the files beside it, so a truncated download, a missing
``.onnx.data`` or a file that is not ONNX at all is one line naming the file.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import onnx
from onnx import TensorProto

from bridge.errors import BridgeError

#: Graph files larger than this are single-file models (weights inside): parsing
#: them just to check costs as much as loading, so ONNX Runtime checks them.
MAX_GRAPH_PARSE_BYTES = 256 * 1024 * 1024
_MAX_PROTOBUF = 2**31 - 1


def dtype_name(elem_type: int) -> str:
    """``float32``, ``float16``, ``int8`` ... for an ONNX tensor element type."""
    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)))
    except Exception:  # bfloat16 / float8 have no numpy dtype
        return TensorProto.DataType.Name(elem_type).lower()


def _itemsize(elem_type: int) -> float:
    if elem_type in (TensorProto.INT4, TensorProto.UINT4):
        return 0.5
    try:
        return float(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except Exception:
        return 1.0


@dataclass(frozen=True, slots=True)
class ExternalFile:
    """One external-data file a graph refers to."""

    location: str  #: as written in the graph (relative to the graph's folder)
    path: Path
    needed_bytes: int  #: the largest offset + length the graph reads from it
    tensors: int
    size: int | None  #: on disk, or None when missing


def _external_refs(model: onnx.ModelProto) -> dict[str, list[tuple[str, int, int | None]]]:
    """``location -> [(tensor, offset, length)]`` for every external initializer."""
    refs: dict[str, list[tuple[str, int, int | None]]] = {}
    tensors: list[TensorProto] = list(model.graph.initializer)
    tensors += [s.values for s in model.graph.sparse_initializer]
    for node in model.graph.node:  # Constant nodes may hold external tensors too
        tensors += [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    for t in tensors:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        length = int(info["length"]) if "length" in info else None
        if length is None:  # no explicit length: the tensor's own size
            length = int(math.prod(t.dims) * _itemsize(t.data_type))
        refs.setdefault(info.get("location", ""), []).append((t.name, int(info.get("offset", 0)), length))
    return refs


def load_graph(path: str | Path) -> onnx.ModelProto:
    """The graph of ``path`` without its external weights; a bad file is a one-line BridgeError."""
    p = Path(path)
    if not p.is_file():
        raise BridgeError(f"model file not found: {p}")
    size = p.stat().st_size
    if size == 0:
        raise BridgeError(f"model file {p} is empty (0 bytes): an interrupted copy or download? get it again")
    if size > _MAX_PROTOBUF:
        raise BridgeError(
            f"model file {p} is {size / 1e9:.1f} GB: ONNX files over 2 GB must keep their weights "
            "in external data; re-save it with external data"
        )
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BridgeError(
            f"model file {p} is not a valid ONNX model ({what}): truncated or not an .onnx file; "
            "download or copy it again"
        ) from None
    if not model.graph.output or not model.opset_import:
        raise BridgeError(
            f"model file {p} is not a valid ONNX model (no graph outputs or opset in it): truncated or "
            "not an .onnx file; download or copy it again"
        )
    return model


def external_files(model: onnx.ModelProto, graph_path: str | Path) -> list[ExternalFile]:
    """The external-data files ``model`` (loaded from ``graph_path``) refers to, with sizes."""
    base = Path(graph_path).parent
    out = []
    for location, refs in _external_refs(model).items():
        path = base / location
        size = path.stat().st_size if path.is_file() else None
        need = max((off + (ln or 0) for _, off, ln in refs), default=0)
        out.append(ExternalFile(location, path, need, len(refs), size))
    return out


def location_escapes(location: str) -> bool:
    """True when an external-data ``location`` is not a plain path inside the graph's folder.

    Absolute paths (POSIX or Windows: ``/x``, ``C:\\x``, ``\\\\host``), any ``..``
    component (either separator), an empty name and NUL bytes all count: a graph
    from a hub mirror or a stranger must not make the bridge read or write
    anywhere but beside it.  The one check for both loading and downloading.
    """
    if not location or "\0" in location:
        return True
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).anchor:
        return True
    return any(part == ".." for part in location.replace("\\", "/").split("/"))


def check_model_files(path: str | Path) -> list[ExternalFile]:
    """Check that ``path`` is an ONNX graph and its external data is all there.

    Returns the external files (empty for a single-file model).  Single-file
    models bigger than :data:`MAX_GRAPH_PARSE_BYTES` are left to ONNX Runtime.
    """
    p = Path(path)
    if not p.is_file():
        raise BridgeError(f"model file not found: {p}")
    if p.stat().st_size > MAX_GRAPH_PARSE_BYTES:
        return []
    model = load_graph(p)
    files = external_files(model, p)
    for f in files:
        if location_escapes(f.location):
            raise BridgeError(
                f"model file {p} refers to external data at {f.location!r}, outside its folder; "
                "re-save the model with its weights beside it"
            )
        if f.size is None:
            raise BridgeError(
                f"model {p} needs its weights file {f.path} ({f.needed_bytes} bytes), which is missing; "
                f"put {f.location} next to {p.name} (a model downloads as both files)"
            )
        if f.size < f.needed_bytes:
            raise BridgeError(
                f"weights file {f.path} is too short: {f.size} bytes, but {p.name} reads up to byte "
                f"{f.needed_bytes}; it is truncated or belongs to another model: download it again"
            )
    return files


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
    from bridge.model.graph import count_parameters, find_layernorm_chains

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


def file_size(path: str | Path) -> int:
    """Graph file plus its external data files, in bytes (0 if missing)."""
    p = Path(path)
    if not p.is_file():
        return 0
    total = p.stat().st_size
    if total <= MAX_GRAPH_PARSE_BYTES:
        try:
            model = onnx.load(str(p), load_external_data=False)
            total += sum(f.size or 0 for f in external_files(model, p))
        except Exception:
            pass
    return total


__all__ = [
    "ExternalFile",
    "ModelInfo",
    "check_model_files",
    "location_escapes",
    "external_files",
    "file_size",
    "format_info",
    "inspect_model",
    "load_graph",
]
