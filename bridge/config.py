"""Configuration: TOML parsed once into typed, frozen objects.

Nothing downstream reads raw dicts.  Every problem is a :class:`BridgeError`
naming the file, the key and what is allowed.  The schema *is* the dataclasses
below: field types drive the type checks, ``metadata["check"]`` the value checks,
and unknown keys are refused with the closest known spelling.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bridge.errors import BridgeError
from bridge.post.head import HeadMotionConfig

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
    if not 0 < v <= 10 or abs(tenths - round(tenths)) > 1e-9:  # NaN fails the first test
        return "must be a multiple of 0.1 s (3 frames = 1600 samples) between 0.1 and 10"
    return None


def _identity(v: int) -> str | None:
    return None if 0 <= v < 12 else "must be an identity index 0..11 (0 = neutral)"


def _channel(v: int | str) -> str | None:
    if isinstance(v, str):
        return None if v == "mix" else 'must be a channel index (0 = first) or "mix"'
    return None  # an index: its range is in BOUNDS


def _providers(v: list[str]) -> str | None:
    allowed = {"cuda", "tensorrt", "cpu", "coreml", "dml", "rocm", "openvino"}
    bad = [p for p in v if p.lower() not in allowed]
    if bad or not v:
        return f"must be a non-empty list of {', '.join(sorted(allowed))}"
    return None


def _cores_x4() -> int:
    return 4 * (os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class Bound:
    """The allowed range of a numeric key, both ends included (NaN and infinities are outside)."""

    low: float
    high: float | typing.Callable[[], float] | None  #: None: no upper end; callable: this machine's
    unit: str = ""
    note: str = ""  #: said after the range, e.g. "0 = one per core"
    high_doc: str = ""  #: the docs' words for a machine-dependent upper end

    def text(self, for_docs: bool = False) -> str:
        """``0.1..60 s``; a machine-dependent end as its rule in the docs, as its value here."""
        unit = f" {self.unit}" if self.unit else ""
        notes = [self.note] if self.note else []
        if self.high is None:
            span = f">= {_num(self.low)}{unit}"
        elif callable(self.high):
            span = f"{_num(self.low)}..{self.high_doc if for_docs else _num(self.high())}{unit}"
            if not for_docs:
                notes.insert(0, f"{self.high_doc} on this machine")
        else:
            span = f"{_num(self.low)}..{_num(self.high)}{unit}"
        return f"{span} ({'; '.join(notes)})" if notes else span

    def contains(self, v: float) -> bool:
        high = self.high() if callable(self.high) else self.high
        return math.isfinite(v) and v >= self.low and (high is None or v <= high)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


#: Every numeric key's allowed range, by its key in docs/configuration.md.  A value outside
#: is refused naming the range (after the key's own check, if it has one, which says what
#: else it needs); a test checks that every numeric key has a row here.
BOUNDS: dict[str, Bound] = {
    "input.device": Bound(0, 1023, note="an index; or a name"),
    "input.channel": Bound(0, 255, note='or "mix"'),
    "input.samplerate": Bound(8000, 384000, "Hz"),
    "input.blocksize": Bound(32, 8192, "frames"),
    "input.ring_seconds": Bound(0.1, 60, "s"),
    "model.identity": Bound(0, 11, note="0 = neutral"),
    "model.window_s": Bound(0.1, 10, "s", "a multiple of 0.1 s"),
    "model.threads": Bound(0, _cores_x4, note="0 = one per core", high_doc="4 × cores"),
    "model.fallback_after_s": Bound(0, 600, "s", "0 = never"),
    "model.max_batch": Bound(0, 1024, note="0 = the number of performers"),
    "schedule.lookahead_frames": Bound(0, 30, "frames", "each adds 33 ms of latency"),
    "schedule.max_latency_ms": Bound(0.1, 10000, "ms"),
    "post.gate.open_db": Bound(-120, 0, "dBFS"),
    "post.gate.close_db": Bound(-120, 0, "dBFS"),
    "post.gate.hold_frames": Bound(0, 300, "frames"),
    "post.gate.attack_frames": Bound(1, 300, "frames"),
    "post.gate.release_frames": Bound(1, 300, "frames"),
    "post.gate.floor": Bound(0, 1),
    "post.gate.vad_threshold": Bound(0, 1),
    "post.smoothing.min_cutoff": Bound(0.01, 15, "Hz", "15 Hz is the Nyquist rate of 30 fps"),
    "post.smoothing.beta": Bound(0, 10),
    "post.smoothing.d_cutoff": Bound(0.01, 15, "Hz"),
    "post.smoothing.alpha": Bound(0.01, 1, note="1 = no smoothing"),
    "post.blink.min_interval_s": Bound(0.2, 60, "s"),
    "post.blink.max_interval_s": Bound(0.2, 60, "s"),
    "post.blink.strength": Bound(0, 1),
    "post.blink.seed": Bound(0, None),
    "post.curve.gain": Bound(0, 10),
    "post.curve.offset": Bound(-1, 1),
    "post.curve.gamma": Bound(0.1, 10),
    "post.head.seed": Bound(0, None),
    "post.head.yaw_deg": Bound(0, 45, "degrees"),
    "post.head.pitch_deg": Bound(0, 45, "degrees"),
    "post.head.roll_deg": Bound(0, 45, "degrees"),
    "post.head.period_s": Bound(0.1, 60, "s"),
    "post.head.idle": Bound(0, 1),
    "post.head.silence_db": Bound(-120, 0, "dBFS"),
    "post.head.speech_db": Bound(-120, 0, "dBFS"),
    "post.head.attack_s": Bound(0.01, 60, "s"),
    "post.head.release_s": Bound(0.01, 60, "s"),
    "post.head.saccade_yaw_deg": Bound(0, 30, "degrees"),
    "post.head.saccade_pitch_deg": Bound(0, 30, "degrees"),
    "post.head.saccade_min_s": Bound(0.05, 60, "s"),
    "post.head.saccade_max_s": Bound(0.05, 60, "s"),
    "console.port": Bound(0, 65535, note="0 = any free port"),
    "control.osc_port": Bound(0, 65535, note="0 = any free port"),
    "sync.passthrough_device": Bound(0, 1023, note="an index; or a name"),
    "sync.delay_ms": Bound(0, 2000, "ms", 'or "auto"'),
    "sync.receiver_ms": Bound(0, 2000, "ms"),
    "sync.channel": Bound(0, 255, note='or "mix"; default: the performer\'s own'),
    "sync.silence_db": Bound(-120, 0, "dBFS"),
    "sync.samplerate": Bound(8000, 384000, "Hz"),
    "output.port": Bound(1, 65535),
    "output.range": Bound(-1e6, 1e6),
    "output.threshold": Bound(0, 1e6, note="output units"),
    "output.keepalive_s": Bound(0, 3600, "s", "0 = never"),
    # Keys other branches add (ifacialmocap / vrchat listeners): their rows are ready for the merge.
    "output.listen_port": Bound(0, 65535, note="0 or false = do not listen"),
    "output.reply_port": Bound(0, 65535, note="0 = the port the request came from"),
    "output.request_timeout_s": Bound(0, 3600, "s", "0 = never"),
}


def _out_of_bounds(key: str, value: Any) -> str | None:
    """What in ``value`` (a number, or the numbers of a list or table) is outside its range."""
    bound = BOUNDS.get(re.sub(r"\[\d+\]", "", re.sub(r"^performer\[[^\]]*\]\.", "", key)))
    if bound is None:
        return None
    allowed = f"allowed: {bound.text()}"
    if isinstance(value, dict | tuple):
        items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        for name, v in items:
            if _is_number(v) and not bound.contains(v):
                what = f"{name} = {v!r}" if name is not None else repr(v)
                return f"has {what} out of range; {allowed}"
        return None
    return None if not _is_number(value) or bound.contains(value) else f"is out of range; {allowed}"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


@dataclass(frozen=True, slots=True)
class InputConfig:
    """Where audio comes from."""

    kind: Literal["device", "file"] = _opt("device", doc="`device` (a capture device) or `file`")
    device: str | int | None = _opt(None, doc="device name (substring) or index; default device if unset")
    file: str | None = _opt(None, doc="audio file for kind = file (WAV, FLAC, ... any rate/channels)")
    realtime: bool = _opt(True, doc="file input: pace at real time (true) or as fast as possible")
    channel: int | str = _opt("mix", _channel, 'channel index to take, or "mix" to average all')
    samplerate: int | None = _opt(None, doc="device rate; default: the device's own")
    blocksize: int = _opt(256, doc="frames per capture callback / file block")
    ring_seconds: float = _opt(4.0, doc="capacity of the capture ring buffer in seconds")
    reconnect: bool = _opt(
        True, doc="device lost: keep the outputs alive at rest, resume when it returns (false: end the run)"
    )


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Which model runs and how."""

    preset: str = _opt("lam", doc="model preset (see `a2e-bridge models list`)")
    path: str | None = _opt(None, doc="model file overriding the preset's file; keeps its interface")
    output_order: str | list[str] | None = _opt(None, doc='"arkit", "alphabetical" or 52 names')
    identity: int = _opt(0, doc="LAM identity index 0..11 (0 = neutral)")
    providers: list[str] = _opt(("cuda", "cpu"), _providers, "execution providers, in order")
    window_s: float = _opt(1.0, _window, "seconds of audio the model sees per call")
    threads: int = _opt(0, doc="ONNX Runtime intra-op threads; 0 = one per core")
    fallback: str | None = _opt("wav2arkit", doc='preset loaded when this one fails ("" = none)')
    fetch: bool = _opt(True, doc="download a missing hub model on first use (HF_HUB_OFFLINE=1 stops it)")
    cuda_graph: bool = _opt(True, doc="CUDA: replay the model as one captured CUDA graph (2x faster)")
    fallback_after_s: float = _opt(
        2.0, doc="switch to the fallback after missing deadlines this long (0 = never)"
    )
    max_batch: int = _opt(0, doc="most windows one model call takes (one per performer)")


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """How hops are scheduled on the sample clock."""

    lookahead_frames: int = _opt(0, doc="frames held back for right-hand context")
    max_latency_ms: float = _opt(250.0, doc="skip ahead (and count drops) beyond this")


@dataclass(frozen=True, slots=True)
class SyncConfig:
    """Voice passthrough: the captured voice played on an output device, as late as the face."""

    passthrough_device: str | int | None = _opt(
        None, doc="output device (name substring or index) the voice is played on; unset: no passthrough"
    )
    delay_ms: float | Literal["auto"] = _opt(
        "auto", doc='how far behind the capture the voice plays; "auto": latency p95 + receiver_ms'
    )
    receiver_ms: float = _opt(0.0, doc="auto: the avatar app's own delay, added to the bridge's latency")
    performer: str | None = _opt(None, doc="whose voice (a performer name); default the first")
    channel: int | str | None = _opt(
        None, _channel, "channel of that performer's input to play; default the performer's own"
    )
    silence_db: float = _opt(-50.0, None, "block level (dBFS) below which the delay may change")
    samplerate: int | None = _opt(
        None, doc="rate the output device is opened at; default the input's (another rate is resampled)"
    )


def _unit(v: float) -> str | None:
    return None if 0.0 <= v <= 1.0 else "must be between 0 and 1"


def _dbfs(v: float) -> str | None:
    return None if -120.0 <= v <= 0.0 else "must be a level in dBFS between -120 and 0"


def _at_least_one(v: int) -> str | None:
    return None if v >= 1 else "must be >= 1"


def _ema_alpha(v: float) -> str | None:
    return None if 0.0 < v <= 1.0 else "must be in (0, 1] (1 = no smoothing)"


def _blendshape_names(names: Any) -> str | None:
    """Every name must be one of the 52 ARKit names (either case); says the closest ones."""
    from bridge.blendshapes import canonical_index

    for name in names:
        try:
            canonical_index(str(name))
        except BridgeError as e:
            return f"names an {e}"
    return None


def _gate_channels(v: str | list[str]) -> str | None:
    if isinstance(v, str):
        sets = ("speech", "upstream", "mouth")
        return None if v in sets else f"must be one of {', '.join(map(repr, sets))} or a list of ARKit names"
    return _blendshape_names(v) if v else "must name at least one channel"


@dataclass(frozen=True, slots=True)
class GateConfig:
    """Silence gate: eases the mouth to rest in silence (the model's output never quite closes it)."""

    enabled: bool = _opt(True, doc="ease the mouth/jaw channels to rest in silence")
    open_db: float = _opt(-40.0, None, "frame RMS (dBFS) at or above which the gate opens")
    close_db: float = _opt(-46.0, None, "frame RMS (dBFS) below which it starts closing (<= open_db)")
    hold_frames: int = _opt(2, None, "quiet frames kept open before the release starts")
    attack_frames: int = _opt(2, None, "frames of the opening ramp (1 = a step)")
    release_frames: int = _opt(3, None, "frames of the closing ramp")
    floor: float = _opt(0.0, None, "gain left on the gated channels in silence (upstream: 0.1)")
    channels: str | list[str] = _opt(
        "speech", _gate_channels, '"speech" (upstream 29 + mouthClose), "upstream", "mouth" or names'
    )
    vad: Literal["off", "ctc", "silero"] = _opt(
        "off", doc="also require speech from the model's CTC head or the Silero VAD model"
    )
    vad_threshold: float = _opt(0.5, None, "speech probability at or above which a frame is speech")
    vad_model: str | None = _opt(None, doc="path to silero_vad.onnx (for vad = silero)")


@dataclass(frozen=True, slots=True)
class SmoothingConfig:
    """Per-channel smoothing; causal, so it always adds some delay (see docs/postprocessing.md)."""

    kind: Literal["off", "one_euro", "ema"] = _opt("one_euro", doc="one_euro, ema or off")
    min_cutoff: float = _opt(4.0, None, "One Euro: cut-off (Hz) when still; delay 30/(2 pi fc) frames")
    beta: float = _opt(0.3, None, "One Euro: cut-off increase per unit/s of speed (less lag)")
    d_cutoff: float = _opt(1.0, None, "One Euro: cut-off (Hz) of the speed estimate")
    alpha: float = _opt(0.5, None, "EMA: weight of the new frame; delay (1 - alpha) / alpha frames")


@dataclass(frozen=True, slots=True)
class BlinkConfig:
    """Procedural eye blinks: an audio model has no reason to blink."""

    enabled: bool = _opt(True, doc="add blinks on eyeBlinkLeft/Right at random intervals")
    min_interval_s: float = _opt(2.0, None, "shortest time between blink starts")
    max_interval_s: float = _opt(6.0, None, "longest time between blink starts (>= min)")
    strength: float = _opt(1.0, None, "peak blink weight (each blink varies 85-100 % of it)")
    replace_model: bool = _opt(True, doc="drop the model's own eyeBlink values first (upstream does)")
    seed: int | None = _opt(None, doc="random seed for repeatable blinks (default: random)")

    def __post_init__(self) -> None:
        if self.max_interval_s < self.min_interval_s:
            raise BridgeError(
                f"post.blink.max_interval_s = {self.max_interval_s!r} must be >= min_interval_s "
                f"({self.min_interval_s!r}); raise max_interval_s or lower min_interval_s"
            )


@dataclass(frozen=True, slots=True)
class CurveConfig:
    """Per-channel response: ``gain * x ** gamma + offset``, by ARKit name (either case)."""

    gain: dict[str, float] = field(
        default_factory=dict, metadata={"check": _blendshape_names, "doc": "e.g. { jawOpen = 1.3 }"}
    )
    offset: dict[str, float] = field(
        default_factory=dict, metadata={"check": _blendshape_names, "doc": "added after gain"}
    )
    gamma: dict[str, float] = field(
        default_factory=dict, metadata={"check": _blendshape_names, "doc": "< 1 lifts small values"}
    )


@dataclass(frozen=True, slots=True)
class PostConfig:
    """Post-processing after the model (bypassed entirely by ``--raw``)."""

    clamp: bool = _opt(True, doc="clamp every weight to [0, 1]")
    calibration: str | None = _opt(None, doc="neutral calibration file from `a2e-bridge calibrate`")
    calibration_rescale: bool = _opt(True, doc="stretch (x - floor) back to the full 0..1 range")
    symmetrize: Literal["off", "average", "max", "min"] = _opt(
        "off", doc="make the 20 left/right pairs equal (average, max or min)"
    )
    gate: GateConfig = field(default_factory=GateConfig, metadata={"doc": "[post.gate]"})
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig, metadata={"doc": "[post.smoothing]"})
    blink: BlinkConfig = field(default_factory=BlinkConfig, metadata={"doc": "[post.blink]"})
    curve: CurveConfig = field(default_factory=CurveConfig, metadata={"doc": "[post.curve]"})
    head: HeadMotionConfig = field(default_factory=HeadMotionConfig, metadata={"doc": "[post.head]"})


OUTPUT_KINDS = ("livelink", "osc", "zmq", "vrchat", "ifacialmocap", "console")
DEFAULT_PORTS = {"livelink": 11111, "osc": 9000, "vmc": 39539, "vrchat": 9000, "ifacialmocap": 49983,
                 "console": 53000}  # fmt: skip
#: Where an output listens by default: iFacialMocap start strings, VRChat's OSC output.
DEFAULT_LISTEN_PORTS = {"ifacialmocap": 49983, "vrchat": 9001}


def _listen_port(v: int | bool) -> str | None:
    if isinstance(v, bool):
        return None
    return None if 0 <= v < 65536 else "must be a port number 1..65535, or 0 / false to not listen"


def _reply_port(v: int) -> str | None:
    ok = 0 <= v < 65536
    return None if ok else "must be a port number 1..65535, or 0 for the port the request came from"


def _output_param_names(names: Any) -> str | None:
    """vrchat: each name is an ARKit or a Unified Expressions v2 name (which of the two the
    output's ``names`` wants is checked when the output is built)."""
    from bridge.blendshapes import canonical_index
    from bridge.outputs.unified import unified_name

    for name in names:
        try:
            canonical_index(str(name))
            continue
        except BridgeError:
            pass
        try:
            unified_name(str(name))
        except BridgeError as e:
            return f"is not allowed: {e}"
    return None


def _console_address(template: str) -> str | None:
    from bridge.outputs.console import format_address
    from bridge.outputs.osc_template import check_address

    try:
        check_address(format_address(template, "JawOpen", 17), "console output", "fix output.address")
    except BridgeError as e:
        return f"is not allowed: {str(e).removeprefix('console output: ')}"
    return None


def _value_range(v: list[float]) -> str | None:
    ok = len(v) == 2 and v[0] != v[1]
    return None if ok else "must be two different numbers [low, high], e.g. [0, 100] or [0, 255]"


@dataclass(frozen=True, slots=True)
class OutputConfig:
    """One destination.  Fields that a kind does not use are refused for it."""

    kind: Literal["livelink", "osc", "zmq", "vrchat", "ifacialmocap", "console"] = _opt(
        "livelink", doc="livelink, osc, zmq, vrchat, ifacialmocap or console"
    )
    host: str = _opt("127.0.0.1", doc="destination host (every kind but zmq)")
    port: int | None = _opt(
        None,
        None,
        "destination port (livelink 11111, osc 9000, vmc 39539, vrchat 9000, ifacialmocap 49983, "
        "console 53000)",
    )
    endpoint: str = _opt("tcp://127.0.0.1:5555", doc="zmq: endpoint the PUB socket binds")
    subject: str = _opt("A2EBridge", doc="subject name (livelink, zmq json)")
    device_id: str | None = _opt(
        None, doc="livelink: device id; default a UUID derived from this machine and the subject"
    )
    scheme: Literal["arkit", "vmc"] = _opt("arkit", doc="osc: arkit (/arkit/<Name>) or vmc")
    speech: bool = _opt(False, doc="osc arkit: also send /arkit/speech (1 - CTC blank probability)")
    latency_report: bool = _opt(
        False, doc="osc: also send /a2e/latency (p50, p95 ms of the last 10 s) once a second"
    )
    format: Literal["json", "livelink"] = _opt("json", doc="zmq: json or livelink packet bytes")
    topic: str = _opt("a2e", doc="zmq: topic prefix of every message")
    names: Literal["arkit", "epic", "unified"] = _opt(
        "arkit", doc="vrchat: ARKit names (jawOpen), epic (JawOpen) or unified (VRCFT v2: JawOpen, JawX)"
    )
    prefix: str | None = _opt(
        None, doc='vrchat: before each name; default "FT/v2/" for unified, else "" (an avatar config decides)'
    )
    parameters: list[str] | None = _opt(
        None, _output_param_names, "vrchat: the parameters to send, in order (default: all of the scheme)"
    )
    channels: list[str] | None = _opt(
        None, _blendshape_names, "console: the blendshapes to send, in order (default: all 52)"
    )
    rename: dict[str, str] = field(
        default_factory=dict,
        metadata={"check": _output_param_names, "doc": 'vrchat, console: { jawOpen = "Mouth" } name map'},
    )
    address: str = _opt("/face/{name}", _console_address, "console: address template; {name}, {index}")
    range: list[float] = _opt((0.0, 1.0), _value_range, "console: [low, high] a weight of 0..1 maps to")
    value_type: Literal["float", "int"] = _opt("float", doc="console: send floats or (rounded) ints")
    send_on_change: bool = _opt(False, doc="console: send a channel only when it moved > threshold")
    threshold: float = _opt(0.0, None, "console: change (output units) that counts as a change")
    keepalive_s: float = _opt(1.0, None, "console, send_on_change: resend all every N s (0 = never)")
    transport: Literal["udp", "tcp"] = _opt("udp", doc="console: OSC over UDP or TCP")
    framing: Literal["slip", "length"] = _opt("slip", doc="console, tcp: slip (OSC 1.1) or length (OSC 1.0)")
    bundle: bool | None = _opt(None, doc="vrchat (default true), console (default false): send bundles")
    listen_port: int | bool | None = _opt(
        None,
        _listen_port,
        "ifacialmocap: UDP port for start strings (49983); vrchat: VRChat's OSC output, for "
        "/avatar/change (9001); false or 0 = do not listen; unset = the default if it is free",
    )
    reply_port: int = _opt(
        49983, _reply_port, "ifacialmocap: port a requester's frames go to (0 = the port it asked from)"
    )
    request_timeout_s: float = _opt(
        0.0, _non_negative, "ifacialmocap: stop serving a requester silent this long (0 = never)"
    )
    avatar_config: str | None = _opt(None, doc="vrchat: the avatar's OSC config JSON; send what it declares")
    osc_folder: str | None = _opt(
        None, doc="vrchat: VRChat's OSC folder (default: this OS's, e.g. %LOCALAPPDATA%Low/VRChat/VRChat/OSC)"
    )
    timecode: Literal["stream", "system"] = _opt(
        "stream",
        doc="livelink: frame time sent: stream (frame numbers 0, 1, 2, ...) or system (capture time of "
        "day at 30 fps, frames since local midnight, as the phone app: for Take Recorder)",
    )
    mirror: bool = _opt(False, doc="swap every Left/Right value")
    performers: list[str] | None = _opt(
        None, doc="the performers this output serves, by name (default: all; kinds without a subject: one)"
    )

    @property
    def resolved_listen_port(self) -> tuple[int, bool]:
        """(port to listen on, 0 = none; whether the user chose it) for kinds that listen."""
        default = DEFAULT_LISTEN_PORTS.get(self.kind, 0)
        if self.listen_port is None or self.listen_port is True:
            return default, False
        if self.listen_port is False:
            return 0, True
        return self.listen_port, True

    @property
    def resolved_port(self) -> int:
        if self.port is not None:
            return self.port
        if self.kind == "osc" and self.scheme == "vmc":
            return DEFAULT_PORTS["vmc"]
        return DEFAULT_PORTS.get(self.kind, 0)


_KIND_FIELDS = {
    "livelink": {"kind", "host", "port", "subject", "device_id", "timecode", "mirror", "performers"},
    "osc": {"kind", "host", "port", "scheme", "speech", "latency_report", "mirror", "performers"},
    "zmq": {"kind", "endpoint", "subject", "device_id", "format", "topic", "mirror", "performers"},
    "vrchat": {"kind", "host", "port", "names", "prefix", "parameters", "rename", "bundle", "listen_port",
               "avatar_config", "osc_folder", "mirror", "performers"},
    "ifacialmocap": {"kind", "host", "port", "listen_port", "reply_port", "request_timeout_s", "mirror",
                     "performers"},
    "console": {"kind", "host", "port", "transport", "framing", "channels", "rename", "address", "range",
                "value_type", "send_on_change", "threshold", "keepalive_s", "bundle", "mirror", "performers"},
}  # fmt: skip


#: Output kinds whose receivers know no subject: each serves exactly one performer.
SINGLE_PERFORMER_KINDS = ("vrchat", "ifacialmocap", "console")
#: The name of the one performer a config without ``[[performer]]`` describes.
DEFAULT_PERFORMER = "main"


@dataclass(frozen=True, slots=True)
class PerformerConfig:
    """One voice driving one face: its input, its subject, its identity and post-processing.

    ``subject`` None (only for the one performer of a config without ``[[performer]]``)
    leaves each output's own ``subject`` key in charge, as before performers existed.
    """

    name: str = DEFAULT_PERFORMER
    subject: str | None = None
    identity: int | None = None  #: LAM identity; None = ``[model] identity``
    input: InputConfig = field(default_factory=InputConfig)
    post: PostConfig = field(default_factory=PostConfig)


def subjectless(out: OutputConfig) -> bool:
    """Whether ``out``'s receivers know no subject (VMC, VRChat, iFacialMocap, console OSC)."""
    return out.kind in SINGLE_PERFORMER_KINDS or (out.kind == "osc" and out.scheme == "vmc")


def _token(v: str) -> str | None:
    if v and (len(v) < 16 or not all(c.isalnum() or c in "-_." for c in v)):
        return "must be at least 16 letters, digits, '-', '_' or '.' (or empty: one is generated)"
    return None


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """The live web console (docs/console.md): a page, its WebSocket, /api, /metrics, /health."""

    enabled: bool = _opt(False, doc="serve the console while running (or `run --console [PORT]`)")
    host: str = _opt("127.0.0.1", doc="address it listens on; anything but loopback requires the token")
    port: int = _opt(8766, doc="HTTP port (0 = any free port)")
    token: str = _opt(
        "", _token, "access token off loopback; empty: one is generated and printed once at start"
    )


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """OSC control: the console's command set from QLab, TouchDesigner, a lighting desk."""

    enabled: bool = _opt(False, doc="listen for OSC commands /a2e/... (`run --console` turns it on too)")
    host: str = _opt("127.0.0.1", doc="address it listens on; anything but loopback requires the token")
    osc_port: int = _opt(9002, doc="UDP port of the OSC command server (0 = any free port)")


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """The whole configuration of one daemon."""

    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    post: PostConfig = field(default_factory=PostConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    outputs: tuple[OutputConfig, ...] = (
        OutputConfig(kind="livelink", port=DEFAULT_PORTS["livelink"]),
        OutputConfig(kind="osc", port=DEFAULT_PORTS["osc"]),
        OutputConfig(kind="zmq"),
    )
    #: empty: one performer made of ``input`` and ``post`` (see :attr:`cast`)
    performers: tuple[PerformerConfig, ...] = ()
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    source: str = "<defaults>"

    def replace(self, **changes: Any) -> BridgeConfig:
        return dataclasses.replace(self, **changes)

    @property
    def cast(self) -> tuple[PerformerConfig, ...]:
        """Every performer: the ``[[performer]]`` entries, or the one ``[input]`` describes."""
        if self.performers:
            return self.performers
        return (PerformerConfig(input=self.input, post=self.post),)

    def served_by(self, out: OutputConfig) -> tuple[PerformerConfig, ...]:
        """The performers ``out`` sends frames of."""
        cast = self.cast
        if out.performers is None:
            return cast
        return tuple(p for p in cast if p.name in out.performers)


_SECTIONS = {"input": InputConfig, "model": ModelConfig, "schedule": ScheduleConfig,
             "post": PostConfig, "console": ConsoleConfig, "control": ControlConfig,
             "sync": SyncConfig}  # fmt: skip


def load_config(path: str | Path | None) -> BridgeConfig:
    """Read a TOML file into a :class:`BridgeConfig` (defaults when ``path`` is None)."""
    if path is None:
        return BridgeConfig()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise BridgeError(f"cannot read config file {p}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:  # TOML is UTF-8 by definition
        line = e.object[: e.start].count(b"\n") + 1
        raise BridgeError(
            f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} on line {line}); "
            "TOML files are UTF-8: save it as UTF-8 in your editor"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BridgeError(f"{p}: not valid TOML: {e}") from None
    return parse_config(data, str(p))


def parse_config(data: dict[str, Any], source: str = "<config>") -> BridgeConfig:
    """Validate a TOML document (already parsed) into a :class:`BridgeConfig`."""
    known = [*_SECTIONS, "output", "performer"]
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
    performers = data.get("performer")
    if performers is not None:
        if not isinstance(performers, list) or not all(isinstance(p, dict) for p in performers):
            raise BridgeError(f"{source}: performers are written as [[performer]] tables")
        parts["performers"] = _build_performers(performers, data, source)
    cfg = BridgeConfig(**parts, source=source)
    _check_outputs_serve(cfg)
    _check_sync(cfg)
    return cfg


_PERFORMER_KEYS = ["name", "subject", "identity", "input", "post"]


def _merged(base: Any, over: Any) -> dict[str, Any]:
    """``over`` on top of ``base``, nested tables merged key by key (``[performer.post.gate]``)."""
    out = dict(base) if isinstance(base, dict) else {}
    for key, value in (over or {}).items():
        out[key] = _merged(out.get(key), value) if isinstance(value, dict) else value
    return out


def _build_performers(
    tables: list[dict[str, Any]], data: dict[str, Any], source: str
) -> tuple[PerformerConfig, ...]:
    """``[[performer]]`` entries; each ``input``/``post`` table is laid over ``[input]``/``[post]``."""
    out: list[PerformerConfig] = []
    for i, table in enumerate(tables):
        name = table.get("name")
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise BridgeError(
                f"{source}: performer[{i}].name = {name!r}: every performer needs a name "
                "(a word without '/', used in control addresses), e.g. name = \"alice\""
            )
        where = f"performer[{name}]"
        for key in table:
            for sub, cls in (("input", InputConfig), ("post", PostConfig)):
                if key not in _PERFORMER_KEYS and key in {f.name for f in dataclasses.fields(cls)}:
                    raise BridgeError(f"{source}: {where}.{key}: {key} belongs in the performer's {sub} "
                                      f"table: {sub} = {{ {key} = {table[key]!r} }}")  # fmt: skip
        _refuse_unknown(table, _PERFORMER_KEYS, source, where + ".")
        if any(p.name == name for p in out):
            raise BridgeError(f"{source}: two performers are named {name!r}; names must be unique")
        subject = table.get("subject", name)
        if not isinstance(subject, str) or not subject:
            raise BridgeError(f"{source}: {where}.subject = {subject!r} must be a non-empty string")
        identity = table.get("identity")
        if identity is not None and (type(identity) is not int or _identity(identity)):
            raise BridgeError(f"{source}: {where}.identity = {identity!r} must be an identity index 0..11 "
                              "(0 = neutral)")  # fmt: skip
        for key in ("input", "post"):
            if key in table and not isinstance(table[key], dict):
                raise BridgeError(f"{source}: [{where}.{key}] must be a table")
        inp = _merged(data.get("input"), table.get("input"))
        post = _merged(data.get("post"), table.get("post"))
        inp_cfg = _build_table(InputConfig, inp, source, f"{where}.input")
        post_cfg = _build_table(PostConfig, post, source, f"{where}.post")
        out.append(PerformerConfig(name, subject, identity, inp_cfg, post_cfg))
    _check_shared_devices(out, source)
    return tuple(out)


#: Input keys that performers capturing from one device must agree on (one stream serves them all).
_SHARED_INPUT_KEYS = ("samplerate", "blocksize", "ring_seconds", "realtime")


def _capture_key(inp: InputConfig) -> tuple[Any, ...]:
    """Performers with equal keys share one capture stream (one device, or one file)."""
    return (inp.kind, inp.device if inp.kind == "device" else inp.file)


def _check_shared_devices(performers: list[PerformerConfig], source: str) -> None:
    """Performers on one device share its stream: they must agree on how it is opened, and
    take different channels."""
    groups: dict[tuple[Any, ...], list[PerformerConfig]] = {}
    for p in performers:
        groups.setdefault(_capture_key(p.input), []).append(p)
    for members in groups.values():
        first = members[0]
        for p in members[1:]:
            for key in _SHARED_INPUT_KEYS:
                a, b = getattr(first.input, key), getattr(p.input, key)
                if a != b:
                    raise BridgeError(
                        f"{source}: performers {first.name!r} and {p.name!r} share one input but set "
                        f"input.{key} to {a!r} and {b!r}; one stream serves both: give them the same value"
                    )
            other = next((q for q in members if q is not p and q.input.channel == p.input.channel), None)
            if other is not None and len(members) > 1:
                raise BridgeError(
                    f"{source}: performers {other.name!r} and {p.name!r} both take channel "
                    f"{p.input.channel!r} of one input; give each performer its own input.channel"
                )


def _check_outputs_serve(cfg: BridgeConfig) -> None:
    """Every ``performers`` name exists; outputs whose receivers know no subject serve one."""
    names = [p.name for p in cfg.cast]
    for i, out in enumerate(cfg.outputs):
        where = f"{cfg.source}: output[{i}] ({out.kind})"
        for name in out.performers or ():
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise BridgeError(f"{where}.performers names {name!r}, who is not a performer{hint} "
                                  f"(performers: {', '.join(names)})")  # fmt: skip
        served = cfg.served_by(out)
        if not served:
            raise BridgeError(f"{where}.performers = [] serves nobody; name one of: {', '.join(names)}")
        if subjectless(out) and len(served) > 1:
            raise BridgeError(
                f"{where} serves {len(served)} performers, but its receivers know no subject: "
                f'it takes exactly one; add performers = ["{served[0].name}"] (one output per performer)'
            )


def _check_sync(cfg: BridgeConfig) -> None:
    """``[sync] performer`` names a performer."""
    name = cfg.sync.performer
    names = [p.name for p in cfg.cast]
    if name is not None and name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise BridgeError(f"{cfg.source}: sync.performer = {name!r} is not a performer{hint} "
                          f"(performers: {', '.join(names)})")  # fmt: skip


def _build_output(table: dict[str, Any], source: str, index: int) -> OutputConfig:
    where = f"output[{index}]"
    kind = table.get("kind")
    if kind not in OUTPUT_KINDS:
        raise BridgeError(f"{source}: {where}.kind = {kind!r}; allowed: {', '.join(OUTPUT_KINDS)}")
    _refuse_unknown(table, sorted(_KIND_FIELDS[kind]), source, where + ".")
    out = _build(OutputConfig, table, source, where)
    span = abs(out.range[1] - out.range[0])
    if out.send_on_change and out.threshold >= span:
        raise BridgeError(
            f"{source}: {where}.threshold = {out.threshold:g} would never count a change: it must be "
            f"smaller than the output range {list(out.range)} spans ({span:g})"
        )
    return out


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
        if dataclasses.is_dataclass(hints[f.name]):  # a nested table, e.g. [post.gate]
            values[f.name] = _build_table(hints[f.name], table[f.name], source, key)
            continue
        value = _coerce(table[f.name], hints[f.name], source, key)
        check = f.metadata.get("check")
        problem = check(value) if (check and value is not None) else None
        problem = problem or (_out_of_bounds(key, value) if value is not None else None)
        if problem:
            raise BridgeError(f"{source}: {key} = {table[f.name]!r} {problem}")
        values[f.name] = value
    try:
        return cls(**values)
    except BridgeError as e:  # a check across keys (e.g. post.head: max >= min)
        raise BridgeError(f"{source}: {e}") from None


def _build_table(cls: type, table: Any, source: str, where: str) -> Any:
    """A nested table such as ``[post.gate]``: unknown keys refused like a section's."""
    if not isinstance(table, dict):
        raise BridgeError(f"{source}: [{where}] must be a table")
    _refuse_unknown(table, [f.name for f in dataclasses.fields(cls)], source, where + ".")
    return _build(cls, table, source, where)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a table of name = {_describe(typing.get_args(tp)[1])}"
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
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return False, None
        inner = typing.get_args(tp)[1]
        entries = {k: _match(v, inner) for k, v in value.items()}
        return all(ok for ok, _ in entries.values()), {k: out for k, (_, out) in entries.items()}
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


def describe_schema() -> list[tuple[str, str, str, str, str]]:
    """(key, type, default, allowed range, meaning) rows for docs/configuration.md."""
    rows = []
    tables: list[tuple[str, type]] = [*_SECTIONS.items(), ("output", OutputConfig)]
    for section, cls in tables:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):  # nested table: its keys follow
                tables.append((f"{section}.{f.name}", hints[f.name]))
                continue
            rows.append(
                (
                    f"{section}.{f.name}",
                    _describe(hints[f.name]),
                    repr(f.default if f.default is not dataclasses.MISSING else f.default_factory()),
                    bound.text(for_docs=True) if (bound := BOUNDS.get(f"{section}.{f.name}")) else "",
                    f.metadata.get("doc", ""),
                )
            )
    return rows
