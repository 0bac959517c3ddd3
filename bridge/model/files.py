"""The files of an ONNX model as the running bridge needs them checked: present, whole,
beside their graph, and hashed once per process.

One place for these checks, shared by the runner (before ONNX Runtime sees a file), the
hub (before anything is downloaded or written) and the model tooling.
"""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import onnx
from onnx import TensorProto

from bridge.errors import BridgeError

#: Graph files larger than this are single-file models (weights inside): parsing
#: them just to check costs as much as loading, so ONNX Runtime checks them.
MAX_GRAPH_PARSE_BYTES = 256 * 1024 * 1024
_MAX_PROTOBUF = 2**31 - 1



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




# -- hashing ---------------------------------------------------------------------------------------

_hash_memo: dict[tuple[int, int, int, int, int], str] = {}
_hash_lock = threading.Lock()


def file_sha256(path: str | Path, chunk: int = 4 << 20) -> str:
    """sha256 of a file, remembered per process by (device, inode, size, mtime, ctime).

    Model files are hundreds of MB: the runner and the hub check each hash it
    once per process, not once per use.  ctime is part of the key because any
    write changes it, even one that puts mtime back.
    """
    p = Path(path)
    st = p.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _hash_lock:
        if key in _hash_memo:
            return _hash_memo[key]
    h = hashlib.sha256()
    with p.open("rb") as f:
        buf = bytearray(chunk)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    digest = h.hexdigest()
    with _hash_lock:
        _hash_memo[key] = digest
    return digest


def forget_hashes() -> None:
    """Drop the per-process hash memo (tests that rewrite files in place within one mtime tick)."""
    with _hash_lock:
        _hash_memo.clear()
