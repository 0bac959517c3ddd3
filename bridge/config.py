"""Configuration: TOML parsed once into typed, frozen objects.

Nothing downstream reads raw dicts.  Every problem is a :class:`BridgeError`
naming the file, the key and what is allowed.  The schema *is* the dataclasses
below: field types drive the type checks, ``metadata["check"]`` the value checks,
and unknown keys are refused with the closest known spelling.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bridge.errors import BridgeError

Check = typing.Callable[[Any], str | None]


def _opt(default: Any, check: Check | None = None, doc: str = "") -> Any:
    return field(default=default, metadata={"check": check, "doc": doc})


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _port(v: int) -> str | None:
    return None if 0 < v < 65536 else "must be a port number 1..65535"


def _window(v: float) -> str | None:
    tenths = v * 10
    if v <= 0 or v > 10 or abs(tenths - round(tenths)) > 1e-9:
        return "must be a multiple of 0.1 s (3 frames = 1600 samples) between 0.1 and 10"
    return None


def _identity(v: int) -> str | None:
    return None if 0 <= v < 12 else "must be an identity index 0..11 (0 = neutral)"


def _channel(v: int | str) -> str | None:
    if isinstance(v, str):
        return None if v == "mix" else 'must be a channel index (0 = first) or "mix"'
    return None if v >= 0 else "must be >= 0"


def _providers(v: list[str]) -> str | None:
    allowed = {"cuda", "tensorrt", "cpu", "coreml", "dml", "rocm", "openvino"}
    bad = [p for p in v if p.lower() not in allowed]
    if bad or not v:
        return f"must be a non-empty list of {', '.join(sorted(allowed))}"
    return None


@dataclass(frozen=True, slots=True)
class InputConfig:
    """Where audio comes from."""

    kind: Literal["device", "file"] = _opt("device", doc="`device` (a capture device) or `file`")
    device: str | int | None = _opt(None, doc="device name (substring) or index; default device if unset")
    file: str | None = _opt(None, doc="audio file for kind = file (WAV, FLAC, ... any rate/channels)")
    realtime: bool = _opt(True, doc="file input: pace at real time (true) or as fast as possible")
    channel: int | str = _opt("mix", _channel, 'channel index to take, or "mix" to average all')
    samplerate: int | None = _opt(None, lambda v: _positive(v), "device rate; default: the device's own")
    blocksize: int = _opt(256, _positive, "frames per capture callback / file block")
    ring_seconds: float = _opt(4.0, _positive, "capacity of the capture ring buffer in seconds")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Which model runs and how."""

    preset: str = _opt("lam", doc="model preset (see `a2e-bridge models list`)")
    path: str | None = _opt(None, doc="model file overriding the preset's file; keeps its interface")
    output_order: str | list[str] | None = _opt(None, doc='"arkit", "alphabetical" or 52 names')
    identity: int = _opt(0, _identity, "LAM identity index 0..11 (0 = neutral)")
    providers: list[str] = _opt(("cuda", "cpu"), _providers, "execution providers, in order")
    window_s: float = _opt(1.0, _window, "seconds of audio the model sees per call")
    threads: int = _opt(0, _non_negative, "ONNX Runtime intra-op threads; 0 = one per core")
    fallback: str | None = _opt("wav2arkit", doc='preset loaded when this one fails ("" = none)')


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """How hops are scheduled on the sample clock."""

    lookahead_frames: int = _opt(0, _non_negative, "frames held back for right-hand context")
    max_latency_ms: float = _opt(250.0, _positive, "skip ahead (and count drops) beyond this")


@dataclass(frozen=True, slots=True)
class PostConfig:
    """Post-processing after the model (bypassed entirely by ``--raw``)."""

    clamp: bool = _opt(True, doc="clamp every weight to [0, 1]")


OUTPUT_KINDS = ("livelink", "osc", "zmq")
DEFAULT_PORTS = {"livelink": 11111, "osc": 9000, "vmc": 39539}


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """One destination.  Fields that a kind does not use are refused for it."""

    kind: Literal["livelink", "osc", "zmq"] = _opt("livelink", doc="livelink, osc or zmq")
    host: str = _opt("127.0.0.1", doc="destination host (livelink, osc)")
    port: int | None = _opt(
        None, lambda v: _port(v), "destination port (livelink 11111, osc 9000, vmc 39539)"
    )
    endpoint: str = _opt("tcp://127.0.0.1:5555", doc="zmq: endpoint the PUB socket binds")
    subject: str = _opt("A2EBridge", doc="subject name (livelink, zmq json)")
    device_id: str = _opt("a2e-bridge", doc="livelink: stable device id")
    scheme: Literal["arkit", "vmc"] = _opt("arkit", doc="osc: arkit (/arkit/<Name>) or vmc")
    format: Literal["json", "livelink"] = _opt("json", doc="zmq: json or livelink packet bytes")
    topic: str = _opt("a2e", doc="zmq: topic prefix of every message")
    mirror: bool = _opt(False, doc="swap every Left/Right value")

    @property
    def resolved_port(self) -> int:
        if self.port is not None:
            return self.port
        if self.kind == "osc" and self.scheme == "vmc":
            return DEFAULT_PORTS["vmc"]
        return DEFAULT_PORTS.get(self.kind, 0)


_KIND_FIELDS = {
    "livelink": {"kind", "host", "port", "subject", "device_id", "mirror"},
    "osc": {"kind", "host", "port", "scheme", "mirror"},
    "zmq": {"kind", "endpoint", "subject", "device_id", "format", "topic", "mirror"},
}


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """The whole configuration of one daemon."""

    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    post: PostConfig = field(default_factory=PostConfig)
    outputs: tuple[OutputConfig, ...] = (
        OutputConfig(kind="livelink", port=DEFAULT_PORTS["livelink"]),
        OutputConfig(kind="osc", port=DEFAULT_PORTS["osc"]),
        OutputConfig(kind="zmq"),
    )
    source: str = "<defaults>"

    def replace(self, **changes: Any) -> BridgeConfig:
        return dataclasses.replace(self, **changes)


_SECTIONS = {"input": InputConfig, "model": ModelConfig, "schedule": ScheduleConfig,
             "post": PostConfig}  # fmt: skip


def load_config(path: str | Path | None) -> BridgeConfig:
    """Read a TOML file into a :class:`BridgeConfig` (defaults when ``path`` is None)."""
    if path is None:
        return BridgeConfig()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise BridgeError(f"cannot read config file {p}: {e.strerror or e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BridgeError(f"{p}: not valid TOML: {e}") from None
    return parse_config(data, str(p))


def parse_config(data: dict[str, Any], source: str = "<config>") -> BridgeConfig:
    """Validate a TOML document (already parsed) into a :class:`BridgeConfig`."""
    known = [*_SECTIONS, "output"]
    _refuse_unknown(data, known, source, "")
    parts: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise BridgeError(f"{source}: [{name}] must be a table")
        parts[name] = _build(cls, table, source, name)
    outputs = data.get("output")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise BridgeError(f"{source}: outputs are written as [[output]] tables")
        parts["outputs"] = tuple(_build_output(o, source, i) for i, o in enumerate(outputs))
    return BridgeConfig(**parts, source=source)


def _build_output(table: dict[str, Any], source: str, index: int) -> OutputConfig:
    where = f"output[{index}]"
    kind = table.get("kind")
    if kind not in OUTPUT_KINDS:
        raise BridgeError(f"{source}: {where}.kind = {kind!r}; allowed: {', '.join(OUTPUT_KINDS)}")
    _refuse_unknown(table, sorted(_KIND_FIELDS[kind]), source, where + ".")
    return _build(OutputConfig, table, source, where)


def _refuse_unknown(table: dict[str, Any], known: list[str], source: str, where: str) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BridgeError(f"{source}: unknown key {where}{key}{hint} (known: {', '.join(known)})")


def _build(cls: type, table: dict[str, Any], source: str, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if where in _SECTIONS:
        _refuse_unknown(table, names, source, where + ".")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in table:
            continue
        key = f"{where}.{f.name}"
        value = _coerce(table[f.name], hints[f.name], source, key)
        check = f.metadata.get("check")
        problem = check(value) if (check and value is not None) else None
        if problem:
            raise BridgeError(f"{source}: {key} = {table[f.name]!r} {problem}")
        values[f.name] = value
    return cls(**values)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    """Check ``value`` against the field type ``tp``; return it in that type."""
    ok, out = _match(value, tp)
    if not ok:
        raise BridgeError(f"{source}: {key} = {value!r} is not allowed; expected {_describe(tp)}")
    return out


def _match(value: Any, tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp), value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            ok, out = _match(value, arg)
            if ok:
                return True, out
        return False, None
    if origin is list:
        if not isinstance(value, list):
            return False, None
        (inner,) = typing.get_args(tp)
        items = [_match(v, inner) for v in value]
        return all(ok for ok, _ in items), tuple(out for _, out in items)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else None
    if tp is str:
        return isinstance(value, str), value
    return False, None


def describe_schema() -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) rows for docs/configuration.md."""
    rows = []
    for section, cls in [*_SECTIONS.items(), ("output", OutputConfig)]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            rows.append(
                (
                    f"{section}.{f.name}",
                    _describe(hints[f.name]),
                    repr(f.default),
                    f.metadata.get("doc", ""),
                )
            )
    return rows
