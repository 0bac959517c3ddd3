"""The receiver-specific outputs (VRChat, VMC completed, iFacialMocap, show-control OSC over
UDP and TCP): encoders checked without sockets against formulas and parsers written here
from the public formats, then every output checked frame by frame, name by name on real
receivers on loopback (python-osc UDP and TCP servers, a plain UDP socket), last through
the whole bridge with the oracle model."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from pythonosc import slip
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_tcp_server import ThreadingOSCTCPServer

from bridge.blendshapes import ARKIT_NAMES, EPIC_NAMES, HEAD_EYE_NAMES
from bridge.config import OutputConfig, parse_config
from bridge.engine import Bridge
from bridge.errors import BridgeError
from bridge.frame import FaceFrame
from bridge.modeltools.synth import oracle_value
from bridge.outputs import (
    ConsoleEncoder,
    IFacialMocapEncoder,
    OscEncoder,
    Output,
    TcpTransport,
    VrchatEncoder,
    build_output,
)
from bridge.outputs.tcp import length_frame, slip_frame
from bridge.outputs.unified import UNIFIED_NAMES, UNIFIED_PARAMS
from bridge.signals import staircase, staircase_level
from tests.decoders import decode_osc_bundle, decode_osc_message
from tests.receivers import OscReceiver

# --- frames and independent references ------------------------------------------------


def make_frame(k: int = 0, head: np.ndarray | None = None) -> FaceFrame:
    """Frame k: every channel a distinct value in (0, 1), exact in float32, changing with k."""
    values = (((np.arange(52) + 3 * k) % 61 + 1) / 64).astype(np.float32)
    h = np.zeros(9, np.float32) if head is None else np.asarray(head, np.float32)
    return FaceFrame(number=k, values=values, capture_time=0.0, head=h, subject="t")


def arkit(frame: FaceFrame) -> dict[str, float]:
    """The frame's weights by ARKit name (lowerCamel)."""
    return {n: float(frame.values[i]) for i, n in enumerate(ARKIT_NAMES)}


def with_head(frame: FaceFrame) -> dict[str, float]:
    """The frame's weights by ARKit name and its 9 head/eye values by Live Link name."""
    return arkit(frame) | {n: float(frame.head[i]) for i, n in enumerate(HEAD_EYE_NAMES)}


def eye_open(a: dict[str, float], side: str) -> float:
    """VRCFT's Live Link eye openness: 1 - clamp(blink * (1 + squint), 0, 1)."""
    blink = a[f"eyeBlink{side}"]
    return 1 - max(0.0, min(1.0, blink + blink * a[f"eyeSquint{side}"]))


def suck_upper(a: dict[str, float], side: str) -> float:
    """VRCFT's Live Link upper lip suck: mouthRollUpper capped by 1 - mouthUpperUp^(1/6)."""
    return min(a["mouthRollUpper"], 1 - a[f"mouthUpperUp{side}"] ** (1 / 6))


def mirrored(a: dict[str, float]) -> dict[str, float]:
    """Left and Right swapped, by name."""

    def other(n: str) -> str:
        return n.replace("Left", "#").replace("Right", "Left").replace("#", "Right")

    return {n: a[other(n)] for n in a}


#: VRCFT Unified Expressions v2 from ARKit, written out by hand from protocols.md, receivers.md
#: and VRCFT's formulas (UnifiedExpressionsParameters.cs / UnifiedSimpleExpressions.cs and its
#: Live Link module); gaze needs the head values (with_head).
UNIFIED_BY_HAND = {
    "JawOpen": lambda a: a["jawOpen"],
    "JawX": lambda a: a["jawRight"] - a["jawLeft"],
    "MouthX": lambda a: a["mouthRight"] - a["mouthLeft"],
    "EyeClosedLeft": lambda a: 1 - eye_open(a, "Left"),
    "EyeClosedRight": lambda a: 1 - eye_open(a, "Right"),
    "LipFunnel": lambda a: a["mouthFunnel"],
    "LipPucker": lambda a: a["mouthPucker"],
    "LipSuckUpper": lambda a: (suck_upper(a, "Left") + suck_upper(a, "Right")) / 2,
    "MouthCornerPullLeft": lambda a: a["mouthSmileLeft"],
    "MouthRaiserUpper": lambda a: a["mouthShrugUpper"],
    "MouthClosed": lambda a: a["mouthClose"],
    "CheekPuffLeft": lambda a: a["cheekPuff"],
    "TongueOut": lambda a: a["tongueOut"],
    "EyeLidLeft": lambda a: 0.75 * eye_open(a, "Left") + 0.25 * a["eyeWideLeft"],
    "EyeOpenRight": lambda a: eye_open(a, "Right"),
    "EyeLeftX": lambda a: a["LeftEyeYaw"],
    "EyeY": lambda a: -(a["LeftEyePitch"] + a["RightEyePitch"]) / 2,
    "SmileFrownRight": lambda a: a["mouthSmileRight"] - a["mouthFrownRight"],
    "SmileSadLeft": lambda a: a["mouthSmileLeft"] - max(a["mouthFrownLeft"], a["mouthStretchLeft"]),
    "BrowUpLeft": lambda a: 0.6 * a["browOuterUpLeft"] + 0.4 * a["browInnerUp"],
    "BrowExpressionLeft": lambda a: 0.5 * a["browInnerUp"] + 0.5 * a["browOuterUpLeft"] - a["browDownLeft"],
    "MouthOpen": lambda a: (
        (a["mouthUpperUpLeft"] + a["mouthUpperUpRight"] + a["mouthLowerDownLeft"] + a["mouthLowerDownRight"])
        / 4
    ),
    "EyeWide": lambda a: max(a["eyeWideLeft"], a["eyeWideRight"]),
}


def declared(name: str, a: dict[str, float]) -> float:
    """A v2 parameter from its declared sources, in plain Python (not the encoder's matrix)."""
    p = next(p for p in UNIFIED_PARAMS if p.name == name)
    src = dict(a)
    for s in ("Left", "Right"):
        src[f"open{s}"], src[f"suckUpper{s}"] = eye_open(a, s), suck_upper(a, s)
        src[f"gaze{s}X"], src[f"gaze{s}Y"] = a[f"{s}EyeYaw"], -a[f"{s}EyePitch"]
    return p.offset + sum(w * src[n] for n, w in p.sources) + sum(c * max(a[x], a[y]) for c, x, y in p.maxes)


#: The 52 names as the iFacialMocap app writes them (copied from a captured datagram).
IFM_APP_NAMES = [
    "mouthSmile_R",
    "eyeLookOut_L",
    "mouthUpperUp_L",
    "eyeWide_R",
    "mouthClose",
    "mouthPucker",
    "mouthRollLower",
    "eyeBlink_R",
    "eyeLookDown_L",
    "cheekSquint_R",
    "eyeBlink_L",
    "tongueOut",
    "jawRight",
    "eyeLookIn_R",
    "cheekSquint_L",
    "mouthDimple_L",
    "mouthPress_L",
    "eyeSquint_L",
    "mouthRight",
    "mouthShrugLower",
    "eyeLookUp_R",
    "eyeLookOut_R",
    "mouthPress_R",
    "cheekPuff",
    "jawForward",
    "mouthLowerDown_L",
    "mouthFrown_L",
    "mouthShrugUpper",
    "browOuterUp_L",
    "browInnerUp",
    "mouthDimple_R",
    "browDown_R",
    "mouthUpperUp_R",
    "mouthRollUpper",
    "mouthFunnel",
    "mouthStretch_R",
    "mouthFrown_R",
    "eyeLookDown_R",
    "jawOpen",
    "jawLeft",
    "browDown_L",
    "mouthSmile_L",
    "noseSneer_R",
    "mouthLowerDown_R",
    "noseSneer_L",
    "eyeWide_L",
    "mouthStretch_L",
    "browOuterUp_R",
    "eyeLookIn_L",
    "eyeSquint_R",
    "eyeLookUp_L",
    "mouthLeft",
]


def parse_ifacialmocap(data: bytes, sep: str = "-") -> dict[str, Any]:
    """An iFacialMocap datagram, ``hapihapi-0|name-int|...|=head#6 floats|rightEye#3|leftEye#3|``
    (v2: ``&`` for ``-``); the lead field (the app's, no blendshape) must come first."""
    text = data.decode("ascii")
    lead, _, text_after = text.partition("|")
    assert lead == f"hapihapi{sep}0", lead
    shapes_text, eq, bones_text = text_after.partition("=")
    assert eq == "=", "no '=' before the bones"
    shapes: dict[str, int] = {}
    for item in shapes_text.split("|"):
        if item:
            name, dash, value = item.rpartition(sep)
            assert dash and name and name not in shapes, item
            shapes[name] = int(value)
    bones: dict[str, list[float]] = {}
    for item in bones_text.split("|"):
        if item:
            name, hash_, values = item.partition("#")
            bones[name] = [float(v) for v in values.split(",")]
    assert text.endswith("|")
    return {"shapes": shapes, "bones": bones}


def arkit_of_ifm(name: str) -> str:
    return name[:-2] + "Left" if name.endswith("_L") else name[:-2] + "Right" if name.endswith("_R") else name


# --- VRChat encoder ---------------------------------------------------------------------


def messages(packets: list[bytes]) -> list[tuple[str, list[Any]]]:
    out: list[tuple[str, list[Any]]] = []
    for p in packets:
        out += decode_osc_bundle(p) if p.startswith(b"#bundle") else [decode_osc_message(p)]
    return out


@pytest.mark.parametrize("bundle", [True, False])
def test_vrchat_arkit_names_every_parameter(bundle: bool) -> None:
    frame = make_frame(5)
    enc = VrchatEncoder("arkit", bundle=bundle)
    packets = enc.encode_packets(frame)
    msgs = messages(packets)
    assert [a for a, _ in msgs] == [f"/avatar/parameters/{n}" for n in ARKIT_NAMES]
    a = arkit(frame)
    for (addr, args), name in zip(msgs, ARKIT_NAMES, strict=True):
        assert args == [a[name]], addr
    if bundle:
        assert len(packets) == 1 and len(packets[0]) <= 4096
    else:
        assert len(packets) == 52 and not any(p.startswith(b"#bundle") for p in packets)
    epic = messages(VrchatEncoder("epic").encode_packets(frame))
    assert epic[17] == ("/avatar/parameters/JawOpen", [a["jawOpen"]])


def test_vrchat_unified_values_by_name() -> None:
    frame = make_frame(11, head=[0.01, 0.02, 0.03, 0.0625, -0.03125, 0.0, 0.046875, 0.015625, 0.0])
    enc = VrchatEncoder("unified")
    packets = enc.encode_packets(frame)
    assert all(p.startswith(b"#bundle") and len(p) <= 4096 for p in packets) and len(packets) >= 2
    got = dict((addr, args[0]) for addr, args in messages(packets))
    assert list(got) == [f"/avatar/parameters/FT/v2/{n}" for n in UNIFIED_NAMES]
    a = with_head(frame)
    assert got["/avatar/parameters/FT/v2/EyeLeftX"] == 0.0625  # gaze from the eye angles, as VRCFT
    for name, formula in UNIFIED_BY_HAND.items():
        assert got[f"/avatar/parameters/FT/v2/{name}"] == pytest.approx(formula(a), abs=1e-6), name
    for name in UNIFIED_NAMES:
        assert got[f"/avatar/parameters/FT/v2/{name}"] == pytest.approx(declared(name, a), abs=1e-6), name


def test_vrchat_unified_signed_axes_and_mirror() -> None:
    frame = make_frame(0)
    values = dict(zip(ARKIT_NAMES, frame.values, strict=True))
    values.update(jawLeft=0.75, jawRight=0.25, mouthLeft=0.125, mouthRight=0.5)
    frame.values[:] = [values[n] for n in ARKIT_NAMES]
    enc = VrchatEncoder("unified", parameters=["JawX", "MouthX", "v2/EyeClosedLeft"])
    got = dict(messages(enc.encode_packets(frame)))
    assert got == {
        "/avatar/parameters/FT/v2/JawX": [-0.5],
        "/avatar/parameters/FT/v2/MouthX": [0.375],
        "/avatar/parameters/FT/v2/EyeClosedLeft": [pytest.approx(1 - eye_open(arkit(frame), "Left"))],
    }
    flipped = dict(
        messages(VrchatEncoder("unified", parameters=["JawX", "MouthX"], mirror=True).encode_packets(frame))
    )
    assert flipped == {"/avatar/parameters/FT/v2/JawX": [0.5], "/avatar/parameters/FT/v2/MouthX": [-0.375]}


def test_vrchat_subset_order_prefix_rename() -> None:
    frame = make_frame(3)
    enc = VrchatEncoder(
        "unified", prefix="FT/v2/", parameters=["mouthx", "JawOpen"], rename={"JawOpen": "Jaw"}
    )
    msgs = messages(enc.encode_packets(frame))
    a = arkit(frame)
    assert msgs == [
        ("/avatar/parameters/FT/v2/MouthX", [pytest.approx(a["mouthRight"] - a["mouthLeft"])]),
        ("/avatar/parameters/FT/v2/Jaw", [a["jawOpen"]]),
    ]
    plain = messages(VrchatEncoder("arkit", parameters=["JawOpen", "eyeBlinkLeft"]).encode_packets(frame))
    assert plain == [
        ("/avatar/parameters/jawOpen", [a["jawOpen"]]),
        ("/avatar/parameters/eyeBlinkLeft", [a["eyeBlinkLeft"]]),
    ]


def test_vrchat_unknown_names_are_one_line_with_closest() -> None:
    with pytest.raises(BridgeError) as err:
        VrchatEncoder("unified", parameters=["JawOpen", "MouthCornerPul"])
    msg = str(err.value)
    assert "\n" not in msg and "'MouthCornerPul'" in msg and "MouthCornerPullLeft" in msg
    assert "output.parameters" in msg
    with pytest.raises(BridgeError, match="'TongueRoll' has no ARKit source"):
        VrchatEncoder("unified", parameters=["TongueRoll"])
    with pytest.raises(BridgeError, match=r"output\.rename.*'JawXX'.*closest: JawX"):
        VrchatEncoder("unified", rename={"JawXX": "a"})
    with pytest.raises(BridgeError, match="unknown blendshape name 'jawOpn'; closest: jawOpen"):
        VrchatEncoder("arkit", parameters=["jawOpn"])
    with pytest.raises(BridgeError, match="unknown blendshape name 'JawX'"):
        VrchatEncoder("arkit", parameters=["JawX"])  # a Unified name, but the scheme is arkit
    with pytest.raises(BridgeError, match="names JawX more than once"):
        VrchatEncoder("unified", parameters=["v2/JawX", "jawx"])


def test_vrchat_config_errors_name_file_and_key() -> None:
    doc = {"output": [{"kind": "vrchat", "names": "unified", "parameters": ["JawOpen", "SmileFrwnLeft"]}]}
    with pytest.raises(BridgeError) as err:
        parse_config(doc, "face.toml")
    msg = str(err.value)
    assert msg.startswith("face.toml: output[0].parameters = ") and "\n" not in msg
    assert "'SmileFrwnLeft'" in msg and "SmileFrownLeft" in msg
    doc = {"output": [{"kind": "vrchat", "scheme": "vmc"}]}
    with pytest.raises(BridgeError, match=r"face.toml: unknown key output\[0\]\.scheme"):
        parse_config(doc, "face.toml")


# --- VMC --------------------------------------------------------------------------------


def test_vmc_bundle_has_ok_and_time() -> None:
    enc = OscEncoder("vmc")
    for k in (0, 45, 90):
        msgs = decode_osc_bundle(enc.encode(make_frame(k)))
        assert [a for a, _ in msgs[52:]] == ["/VMC/Ext/OK", "/VMC/Ext/T", "/VMC/Ext/Blend/Apply"]
        assert msgs[52][1] == [1] and msgs[53][1] == [pytest.approx(k / 30)]
        assert [args[0] for _, args in msgs[:52]] == list(EPIC_NAMES)


# --- iFacialMocap encoder -------------------------------------------------------------------


def test_ifacialmocap_names_values_and_bones() -> None:
    head = np.array([0.05, -0.02, 0.01, 0.03, -0.04, 0.0, 0.025, -0.035, 0.0], np.float32)
    frame = make_frame(7, head)
    pkt = parse_ifacialmocap(IFacialMocapEncoder().encode(frame))
    assert sorted(pkt["shapes"]) == sorted(IFM_APP_NAMES)
    a = arkit(frame)
    for name, value in pkt["shapes"].items():
        assert value == round(a[arkit_of_ifm(name)] * 100), name
    for name in (
        "eyeBlink_L",
        "jawOpen",
        "mouthSmile_R",
        "jawLeft",
        "mouthRight",
        "browInnerUp",
        "tongueOut",
    ):
        assert name in pkt["shapes"]
    assert list(pkt["bones"]) == ["head", "rightEye", "leftEye"]
    deg = head.astype(np.float64) * 180
    assert pkt["bones"]["head"] == pytest.approx(
        [deg[1], deg[0], deg[2], 0, 0, 0], abs=1e-3
    )  # pitch yaw roll xyz
    assert pkt["bones"]["rightEye"] == pytest.approx([deg[7], deg[6], deg[8]], abs=1e-3)
    assert pkt["bones"]["leftEye"] == pytest.approx([deg[4], deg[3], deg[5]], abs=1e-3)


def test_ifacialmocap_clamps_rounds_and_mirrors() -> None:
    frame = make_frame(0)
    frame.values[ARKIT_NAMES.index("jawOpen")] = 1.7
    frame.values[ARKIT_NAMES.index("tongueOut")] = -0.3
    frame.values[ARKIT_NAMES.index("cheekPuff")] = np.nan
    frame.values[ARKIT_NAMES.index("mouthClose")] = 0.125  # 12.5 -> 12 (round half to even)
    shapes = parse_ifacialmocap(IFacialMocapEncoder().encode(frame))["shapes"]
    assert (shapes["jawOpen"], shapes["tongueOut"], shapes["cheekPuff"], shapes["mouthClose"]) == (
        100,
        0,
        0,
        12,
    )
    head = np.array([0, 0, 0, 0.1, 0.2, 0, -0.1, -0.2, 0], np.float32)
    frame = make_frame(4, head)
    m = parse_ifacialmocap(IFacialMocapEncoder(mirror=True).encode(frame))
    a = mirrored(arkit(frame))
    assert all(v == round(a[arkit_of_ifm(n)] * 100) for n, v in m["shapes"].items())
    assert m["bones"]["leftEye"][:2] == pytest.approx([-36.0, -18.0], abs=1e-3)  # was the right eye's


# --- console encoder -------------------------------------------------------------------------


def test_console_subset_rename_template_and_scaling() -> None:
    frame = make_frame(2)
    enc = ConsoleEncoder(
        channels=["jawOpen", "MouthSmileLeft", "eyeblinkright"],
        rename={"jawOpen": "jaw"},
        address="/cue/{index:02d}/{name}",
        value_range=[0, 255],
        value_type="int",
    )
    msgs = messages(enc.encode_packets(frame))
    a = arkit(frame)
    assert msgs == [
        ("/cue/17/jaw", [round(a["jawOpen"] * 255)]),
        ("/cue/23/MouthSmileLeft", [round(a["mouthSmileLeft"] * 255)]),
        ("/cue/07/EyeBlinkRight", [round(a["eyeBlinkRight"] * 255)]),
    ]
    inverted = ConsoleEncoder(channels=["jawOpen"], value_range=[100, 0])
    frame.values[17] = 0.25
    assert messages(inverted.encode_packets(frame)) == [("/face/JawOpen", [75.0])]
    frame.values[17] = 1.5  # beyond 1 (raw mode): clamped into the range
    assert messages(inverted.encode_packets(frame)) == [("/face/JawOpen", [0.0])]


def simulate_console(frames: list[FaceFrame], chans: list[str], lo: float, hi: float, threshold: float,
                     keep: int) -> list[list[tuple[str, float]]]:  # fmt: skip
    """Send-on-change as documented, written independently: per frame, the (name, value) sent."""
    last: dict[str, float] = {}
    last_full = None
    out = []
    for f in frames:
        a = arkit(f)
        vals = {c: min(max(lo + a[c] * (hi - lo), min(lo, hi)), max(lo, hi)) for c in chans}
        if last_full is None or f.number - last_full >= keep:
            sent = list(chans)
            last_full = f.number
        else:
            sent = [c for c in chans if abs(vals[c] - last[c]) > threshold]
        for c in sent:
            last[c] = vals[c]
        out.append([(c, vals[c]) for c in sent])
    return out


def changing_frames(n: int) -> list[FaceFrame]:
    """jawOpen ramps by 0.02 a frame, eyeBlinkLeft steps at frame 7, the rest stay put."""
    frames = []
    for k in range(n):
        f = make_frame(0)
        f.number = k
        f.values[ARKIT_NAMES.index("jawOpen")] = 0.02 * k
        f.values[ARKIT_NAMES.index("eyeBlinkLeft")] = 0.9 if k >= 7 else 0.1
        frames.append(f)
    return frames


CONSOLE_CHANS = ["jawOpen", "eyeBlinkLeft", "mouthSmileLeft"]


def console_kwargs(**extra: Any) -> dict[str, Any]:
    base = dict(
        channels=CONSOLE_CHANS, value_range=[0, 100], send_on_change=True, threshold=5.0, keepalive_s=0.5
    )
    return base | extra


def test_console_send_on_change_and_keepalive_by_frame_count() -> None:
    frames = changing_frames(40)
    enc = ConsoleEncoder(**console_kwargs())
    expected = simulate_console(frames, CONSOLE_CHANS, 0, 100, 5.0, 15)
    for f, want in zip(frames, expected, strict=True):
        got = messages(enc.encode_packets(f))
        assert [(a.removeprefix("/face/"), v[0]) for a, v in got] == [
            (EPIC_NAMES[ARKIT_NAMES.index(c)], pytest.approx(x, abs=1e-4)) for c, x in want
        ], f.number
    sizes = [len(w) for w in expected]
    assert sizes[0] == sizes[15] == sizes[30] == 3  # keep-alive: everything every 15 frames
    assert sizes[1:10] == [0, 0, 1, 0, 0, 1, 1, 0, 1]  # jaw every 3rd frame (+6 > 5); the blink at 7
    enc.resync()
    assert len(enc.encode_packets(frames[-1])) == 3


def test_console_bundle_of_the_changed_channels() -> None:
    frames = changing_frames(8)
    enc = ConsoleEncoder(**console_kwargs(bundle=True))
    packets = [enc.encode_packets(f) for f in frames]
    assert [len(p) for p in packets] == [1, 0, 0, 1, 0, 0, 1, 1]
    assert all(p[0].startswith(b"#bundle") for p in packets if p)
    assert [a for a, _ in decode_osc_bundle(packets[7][0])] == ["/face/EyeBlinkLeft"]
    assert len(decode_osc_bundle(packets[0][0])) == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"channels": ["jawOpen", "jawOpn"]},
            r"output\.channels: unknown blendshape name 'jawOpn'; closest: jawOpen",
        ),
        ({"rename": {"mouthSmile": "s"}}, r"output\.rename: unknown blendshape name 'mouthSmile'; closest"),
        ({"channels": ["jawOpen"], "rename": {"tongueOut": "t"}}, "which output.channels does not send"),
        ({"address": "/face/{nmae}"}, r"placeholder \{nmae\}; allowed: \{name\}, \{index\}"),
        ({"address": "/face/all"}, "same address"),
        ({"address": "face/{name}"}, "must start with '/'"),
        ({"rename": {"jawOpen": "jaw open"}}, "reserved in OSC addresses"),
        ({"value_range": [1, 1]}, "two different numbers"),
        ({"channels": []}, "is empty"),
    ],
)
def test_console_bad_settings_are_one_line(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(BridgeError, match=match) as err:
        ConsoleEncoder(**kwargs)
    assert "\n" not in str(err.value)


def test_console_config_errors_name_file_and_key() -> None:
    doc = {"output": [{"kind": "console", "channels": ["jawOpen", "mouthSmileLft"]}]}
    with pytest.raises(
        BridgeError, match=r"^face\.toml: output\[0\]\.channels = .*'mouthSmileLft'.*mouthSmileLeft"
    ):
        parse_config(doc, "face.toml")
    doc = {"output": [{"kind": "console", "address": "/x/{chan}"}]}
    with pytest.raises(
        BridgeError, match=r"^face\.toml: output\[0\]\.address = '/x/\{chan\}' is not allowed"
    ):
        parse_config(doc, "face.toml")
    doc = {"output": [{"kind": "console", "range": [0]}]}
    with pytest.raises(BridgeError, match=r"output\[0\]\.range = \[0\] must be two different numbers"):
        parse_config(doc, "face.toml")
    doc = {"output": [{"kind": "console", "transport": "serial"}]}
    with pytest.raises(
        BridgeError, match=r"output\[0\]\.transport = 'serial' is not allowed; expected 'udp' or 'tcp'"
    ):
        parse_config(doc, "face.toml")
    cfg = parse_config(
        {"output": [{"kind": "console", "range": [0, 255], "rename": {"jawOpen": "j"}}]}, "f.toml"
    )
    assert cfg.outputs[0].range == (0.0, 255.0) and cfg.outputs[0].rename == {"jawOpen": "j"}


# --- TCP framing --------------------------------------------------------------------------


def test_tcp_framing_matches_python_osc() -> None:
    awkward = bytes([0xC0, 1, 0xDB, 2, 0xDB, 0xDC, 0xC0])
    assert slip_frame(awkward) == slip.encode(awkward)
    assert slip.decode(slip_frame(awkward)) == awkward
    assert slip_frame(b"/a\0\0") == b"\xc0/a\0\0\xc0"
    assert length_frame(b"abcd") == b"\x00\x00\x00\x04abcd"


# --- real receivers: VRChat, VMC, console over UDP -----------------------------------------------


def publish_all(out: Output, frames: list[FaceFrame]) -> None:
    with out:
        for f in frames:
            out.publish(f)


def per_frame(msgs: list[tuple[str, tuple]], size: int) -> list[list[tuple[str, tuple]]]:
    assert len(msgs) % size == 0
    return [msgs[i : i + size] for i in range(0, len(msgs), size)]


@pytest.mark.parametrize("bundle", [True, False])
def test_vrchat_unified_on_python_osc_server(bundle: bool) -> None:
    rx = OscReceiver()
    frames = [make_frame(k) for k in range(16)]  # in frame 15 jawLeft (61/64) > jawRight (1/64)
    try:
        out = build_output(
            OutputConfig(kind="vrchat", names="unified", port=rx.port, bundle=bundle, listen_port=False)
        )
        assert out.name == f"vrchat unified 127.0.0.1:{rx.port}"
        publish_all(out, frames)
    finally:
        rx.close()
    blocks = per_frame(rx.messages, len(UNIFIED_NAMES))
    assert len(blocks) == len(frames)
    for f, block in zip(frames, blocks, strict=True):
        a = with_head(f)
        assert [addr for addr, _ in block] == [f"/avatar/parameters/FT/v2/{n}" for n in UNIFIED_NAMES]
        got = {addr.rsplit("/", 1)[1]: args for addr, args in block}
        assert all(len(args) == 1 and isinstance(args[0], float) for args in got.values())
        for name, formula in UNIFIED_BY_HAND.items():
            assert got[name][0] == pytest.approx(formula(a), abs=1e-6), (f.number, name)
    jaw_x = [dict(block)["/avatar/parameters/FT/v2/JawX"][0] for block in blocks]
    assert jaw_x[0] == 1 / 64 and jaw_x[15] == -60 / 64  # signed, as a float


def test_vrchat_arkit_and_vmc_on_python_osc_servers() -> None:
    vrc, vmc = OscReceiver(), OscReceiver()
    frames = [make_frame(k) for k in range(10)]
    try:
        publish_all(
            build_output(OutputConfig(kind="vrchat", port=vrc.port, mirror=True, listen_port=False)), frames
        )
        publish_all(build_output(OutputConfig(kind="osc", scheme="vmc", port=vmc.port)), frames)
    finally:
        vrc.close()
        vmc.close()
    for f, block in zip(frames, per_frame(vrc.messages, 52), strict=True):
        a = mirrored(arkit(f))
        assert block == [(f"/avatar/parameters/{n}", (a[n],)) for n in ARKIT_NAMES]
    for f, block in zip(frames, per_frame(vmc.messages, 55), strict=True):
        a = arkit(f)
        assert block[:52] == [
            ("/VMC/Ext/Blend/Val", (e, a[n])) for e, n in zip(EPIC_NAMES, ARKIT_NAMES, strict=True)
        ]
        assert block[52:] == [("/VMC/Ext/OK", (1,)), ("/VMC/Ext/T", (pytest.approx(f.number / 30),)),
                              ("/VMC/Ext/Blend/Apply", ())]  # fmt: skip


def expected_console_messages(frames: list[FaceFrame]) -> list[tuple[str, float]]:
    sim = simulate_console(frames, CONSOLE_CHANS, 0, 100, 5.0, 15)
    return [(f"/face/{EPIC_NAMES[ARKIT_NAMES.index(c)]}", x) for sent in sim for c, x in sent]


def test_console_udp_on_python_osc_server() -> None:
    rx = OscReceiver()
    frames = changing_frames(40)
    try:
        cfg = OutputConfig(kind="console", port=rx.port, channels=CONSOLE_CHANS, range=[0, 100],
                           send_on_change=True, threshold=5.0, keepalive_s=0.5)  # fmt: skip
        publish_all(build_output(cfg), frames)
    finally:
        rx.close()
    want = expected_console_messages(frames)
    assert [(a, args[0]) for a, args in rx.messages] == [(a, pytest.approx(x, abs=1e-4)) for a, x in want]


# --- real receivers: console over TCP ----------------------------------------------------------------


class TcpOscReceiver:
    """python-osc's threading TCP server (OSC 1.1 SLIP or 1.0 length framing)."""

    def __init__(self, mode: str = "1.1", port: int = 0) -> None:
        self.messages: list[tuple[str, tuple]] = []
        self._lock = threading.Lock()
        disp = Dispatcher()
        disp.set_default_handler(self._got)
        ThreadingOSCTCPServer.daemon_threads = True
        ThreadingOSCTCPServer.allow_reuse_address = True
        self.server = ThreadingOSCTCPServer(("127.0.0.1", port), disp, mode=mode)
        self.port = self.server.server_address[1]
        self._t = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._t.start()

    def _got(self, addr: str, *args: Any) -> None:
        with self._lock:
            self.messages.append((addr, args))

    def wait_for(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("framing", "mode"), [("slip", "1.1"), ("length", "1.0")])
def test_console_tcp_on_python_osc_tcp_server(framing: str, mode: str) -> None:
    rx = TcpOscReceiver(mode)
    frames = changing_frames(40)
    want = expected_console_messages(frames)
    try:
        cfg = OutputConfig(kind="console", transport="tcp", framing=framing, port=rx.port,
                           channels=CONSOLE_CHANS, range=[0, 100], send_on_change=True, threshold=5.0,
                           keepalive_s=0.5)  # fmt: skip
        out = build_output(cfg)
        assert out.name == f"console tcp 127.0.0.1:{rx.port}"
        with out:
            for f in frames:
                out.publish(f)
                time.sleep(0.002)  # well under a frame; keeps the 8-frame queue from filling on 2 cores
            rx.wait_for(len(want))
            stats = out.stats()
    finally:
        rx.close()
    assert [(a, args[0]) for a, args in rx.messages] == [(a, pytest.approx(x, abs=1e-4)) for a, x in want]
    assert stats == {"sent": len(want), "dropped": 0, "errors": 0, "connects": 1}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def timed_publishes(out: Output, frames: list[FaceFrame]) -> list[float]:
    took = []
    for f in frames:
        t0 = time.perf_counter()
        out.publish(f)
        took.append(time.perf_counter() - t0)
    return took


def test_tcp_absent_receiver_never_blocks_publish() -> None:
    port = free_port()
    enc = ConsoleEncoder()  # all 52 channels, every frame
    out = Output("console tcp", enc, TcpTransport("127.0.0.1", port, backoff=(0.05, 0.2)))
    frames = [make_frame(k) for k in range(600)]
    took = timed_publishes(out, frames)
    t0 = time.perf_counter()
    out.close()
    assert time.perf_counter() - t0 < 2.0
    stats = out.stats()
    assert max(took) < 0.05 and sum(took) / len(took) < 0.002
    assert stats["sent"] == 0 and stats["connects"] == 0 and stats["errors"] >= 1
    assert stats["dropped"] >= 52 * 500  # everything that was not still queued


def test_tcp_receiver_that_stops_reading_never_blocks_publish() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # the kernel completes the connection; nobody ever reads it
    try:
        transport = TcpTransport("127.0.0.1", listener.getsockname()[1], send_timeout=5.0)
        out = Output("console tcp", ConsoleEncoder(), transport)
        frames = [make_frame(k) for k in range(3000)]  # ~5 MB of OSC: far beyond every buffer
        took = timed_publishes(out, frames)
        deadline = time.monotonic() + 5.0  # the sender thread may not have run yet on a busy machine
        while transport.connects == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = out.stats()
        t0 = time.perf_counter()
        out.close()
        assert time.perf_counter() - t0 < 2.0  # close unblocks the stalled send
    finally:
        listener.close()
    assert max(took) < 0.05 and sum(took) / len(took) < 0.002, (max(took), sum(took) / len(took))
    assert stats["connects"] == 1 and stats["dropped"] > 0
    assert stats["sent"] + stats["dropped"] <= 52 * len(frames)


def test_tcp_reconnects_and_resends_everything() -> None:
    port = free_port()
    enc = ConsoleEncoder(channels=CONSOLE_CHANS, send_on_change=True, keepalive_s=0)  # never a keep-alive
    transport = TcpTransport("127.0.0.1", port, backoff=(0.02, 0.1))
    out = Output("console tcp", enc, transport)
    frame = make_frame(0)
    rx = None
    try:
        for k in range(20):  # nobody listens: frames dropped, connects fail
            frame.number = k
            out.publish(frame)
            time.sleep(0.01)
        assert transport.stats()["connects"] == 0 and transport.dropped > 0
        rx = TcpOscReceiver("1.1", port)
        for k in range(20, 300):  # the values never change: only a resync can send them
            frame.number = k
            out.publish(frame)
            if len(rx.messages) >= 3:
                break
            time.sleep(0.01)
        rx.wait_for(3, timeout=1.0)
    finally:
        out.close()
        if rx is not None:
            rx.close()
    a = arkit(frame)
    assert transport.stats()["connects"] == 1
    assert rx is not None and sorted(rx.messages) == sorted(
        (f"/face/{EPIC_NAMES[ARKIT_NAMES.index(c)]}", (a[c],)) for c in CONSOLE_CHANS
    )


# --- real receivers: iFacialMocap over UDP ----------------------------------------------------------------


def test_ifacialmocap_on_udp_socket() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2.0)
    frames = [make_frame(k, np.full(9, 0.01 * k, np.float32)) for k in range(10)]
    try:
        out = build_output(OutputConfig(kind="ifacialmocap", port=rx.getsockname()[1], listen_port=False))
        assert out.name == f"ifacialmocap 127.0.0.1:{rx.getsockname()[1]}"
        publish_all(out, frames)
        got = [parse_ifacialmocap(rx.recv(4096)) for _ in frames]
        assert out.stats() == {"sent": 10, "errors": 0}
    finally:
        rx.close()
    for f, pkt in zip(frames, got, strict=True):
        a = arkit(f)
        assert {n: v for n, v in pkt["shapes"].items()} == {
            n: round(a[arkit_of_ifm(n)] * 100) for n in IFM_APP_NAMES
        }
        assert pkt["bones"]["head"][:3] == pytest.approx([1.8 * f.number] * 3, abs=1e-3)


def test_default_ports() -> None:
    for cfg, port in [
        (OutputConfig(kind="vrchat", listen_port=False), 9000),
        (OutputConfig(kind="ifacialmocap", listen_port=False), 49983),
        (OutputConfig(kind="console"), 53000),
        (OutputConfig(kind="osc", scheme="vmc"), 39539),
    ]:
        with build_output(cfg) as out:
            assert out.transport.address == ("127.0.0.1", port)  # type: ignore[attr-defined]


# --- the whole bridge, oracle model --------------------------------------------------------------------

FRAMES = 45


def test_oracle_end_to_end_through_every_new_output(tmp_path: Path) -> None:
    wav = tmp_path / "stair.wav"
    soundfile.write(str(wav), staircase(FRAMES), 16000, subtype="FLOAT")
    vrc_u, vrc_a, console, vmc = OscReceiver(), OscReceiver(), OscReceiver(), OscReceiver()
    ifm = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ifm.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    ifm.bind(("127.0.0.1", 0))
    unified = ["JawOpen", "JawX", "MouthX", "EyeClosedLeft", "LipSuckUpper", "MouthCornerPullLeft",
               "MouthRaiserUpper", "SmileSadLeft", "EyeLidLeft"]  # fmt: skip
    doc = {
        "input": {"kind": "file", "file": str(wav), "realtime": False},
        "model": {"preset": "oracle", "output_order": "arkit", "providers": ["cpu"], "fallback": ""},
        "output": [
            {"kind": "vrchat", "names": "unified", "parameters": unified, "port": vrc_u.port,
             "listen_port": False},
            {"kind": "vrchat", "names": "arkit", "bundle": False, "mirror": True, "port": vrc_a.port,
             "listen_port": False},
            {"kind": "console", "channels": ["jawOpen", "mouthSmileLeft", "eyeBlinkRight"],
             "rename": {"jawOpen": "jaw"}, "address": "/cue/{name}/{index}", "range": [0, 100],
             "value_type": "int", "port": console.port},
            {"kind": "ifacialmocap", "port": ifm.getsockname()[1], "listen_port": False},
            {"kind": "osc", "scheme": "vmc", "port": vmc.port},
        ],
    }  # fmt: skip
    bridge = Bridge(parse_config(json.loads(json.dumps(doc)), "e2e.toml"), raw=True)
    try:
        stats = bridge.run().as_dict()
    finally:
        bridge.close()
        for r in (vrc_u, vrc_a, console, vmc):
            r.close()
    ifm.settimeout(0.5)
    datagrams = []
    try:
        while True:
            datagrams.append(ifm.recv(4096))
    except TimeoutError:
        pass
    finally:
        ifm.close()
    assert stats["frames_published"] == FRAMES

    def weights(k: int) -> dict[str, float]:
        return {n: oracle_value(staircase_level(k), j) for j, n in enumerate(ARKIT_NAMES)}

    for k, block in enumerate(per_frame(vrc_u.messages, len(unified))):
        a = weights(k)
        assert [addr for addr, _ in block] == [f"/avatar/parameters/FT/v2/{n}" for n in unified]
        for (_, args), name in zip(block, unified, strict=True):
            assert args[0] == pytest.approx(UNIFIED_BY_HAND[name](a), abs=3e-3), (k, name)
        assert dict(block)["/avatar/parameters/FT/v2/JawX"][0] == pytest.approx(
            1 / 128, abs=1e-4
        )  # jawRight - jawLeft
    assert len(vrc_u.messages) == FRAMES * len(unified)

    for k, block in enumerate(per_frame(vrc_a.messages, 52)):
        a = mirrored(weights(k))
        for (addr, args), name in zip(block, ARKIT_NAMES, strict=True):
            assert addr == f"/avatar/parameters/{name}" and args[0] == pytest.approx(a[name], abs=3e-3)
    assert len(vrc_a.messages) == FRAMES * 52

    for k, block in enumerate(per_frame(console.messages, 3)):
        a = weights(k)
        assert [addr for addr, _ in block] == [
            "/cue/jaw/17",
            "/cue/MouthSmileLeft/23",
            "/cue/EyeBlinkRight/7",
        ]
        for (_, args), name in zip(block, ["jawOpen", "mouthSmileLeft", "eyeBlinkRight"], strict=True):
            assert isinstance(args[0], int) and abs(args[0] - a[name] * 100) <= 1, (k, name)
    assert len(console.messages) == FRAMES * 3

    assert len(datagrams) == FRAMES
    for k, data in enumerate(datagrams):
        a = weights(k)
        shapes = parse_ifacialmocap(data)["shapes"]
        assert all(abs(v - a[arkit_of_ifm(n)] * 100) <= 1 for n, v in shapes.items()), k

    for k, block in enumerate(per_frame(vmc.messages, 55)):
        a = weights(k)
        assert block[52] == ("/VMC/Ext/OK", (1,)) and block[53][1][0] == pytest.approx(k / 30)
        for (_, (name, value)), lower in zip(block[:52], ARKIT_NAMES, strict=True):
            assert name == lower[0].upper() + lower[1:] and value == pytest.approx(a[lower], abs=3e-3)
    assert len(vmc.messages) == FRAMES * 55
