"""Unified Expressions with VRCFaceTracking's own Live Link formulas: values computed by hand
from VRCFT's Live Link module (receivers.md: eye openness from blink and squint, the upper
lip suck capped by mouthUpperUp, gaze from the eye angles), the same face read by a
VRCFT-style Live Link reader over a real UDP socket, and the docs table in step."""

from __future__ import annotations

import math
import re
import socket
import struct
from pathlib import Path

import numpy as np
import pytest

from bridge.blendshapes import ARKIT_NAMES, LIVELINK_NAMES, NUM_BLENDSHAPES, mirror_permutation
from bridge.config import OutputConfig
from bridge.errors import BridgeError
from bridge.frame import FaceFrame
from bridge.outputs import build_output
from bridge.outputs.unified import (
    FEATURES,
    UNIFIED_NAMES,
    UNIFIED_PARAMS,
    UnifiedMap,
    unified_matrix,
)

ROOT = Path(__file__).resolve().parent.parent
AT = {n: i for i, n in enumerate(ARKIT_NAMES)}


def face(**weights: float) -> np.ndarray:
    """52 weights, 1/16 everywhere but the ones named (all exact in float32)."""
    v = np.full(NUM_BLENDSHAPES, 1 / 16, dtype=np.float32)
    for name, w in weights.items():
        v[AT[name]] = w
    return v


def head(left_yaw: float = 0.0, left_pitch: float = 0.0, right_yaw: float = 0.0,
         right_pitch: float = 0.0) -> np.ndarray:  # fmt: skip
    """The 9 Live Link head/eye values (degrees / 180) with the eye angles given."""
    h = np.zeros(9, dtype=np.float32)
    h[3], h[4], h[6], h[7] = left_yaw, left_pitch, right_yaw, right_pitch
    return h


#: A face where every VRCFT special case shows, with numbers that come out exact:
#: (1/4096)^(1/6) = 1/4 and (1/64)^(1/6) = 1/2.
CASE = face(
    eyeBlinkLeft=0.375, eyeSquintLeft=0.5, eyeBlinkRight=0.75, eyeSquintRight=0.5,
    eyeWideLeft=0.25, eyeWideRight=0.125,
    mouthRollUpper=0.625, mouthUpperUpLeft=1 / 4096, mouthUpperUpRight=1 / 64,
    mouthRollLower=0.25, mouthFunnel=0.125,
    eyeLookInLeft=0.5, eyeLookOutRight=0.5, eyeLookUpLeft=0.5, eyeLookUpRight=0.5,
)  # fmt: skip
CASE_HEAD = head(left_yaw=0.0625, left_pitch=-0.03125, right_yaw=0.046875, right_pitch=0.015625)

#: Worked out by hand from VRCFT's formulas for CASE:
#: openLeft = 1 - min(1, 0.375 * 1.5) = 0.4375; openRight = 1 - min(1, 0.75 * 1.5) = 0
#: suckUpperLeft = min(0.625, 1 - 1/4) = 0.625; suckUpperRight = min(0.625, 1 - 1/2) = 0.5
#: gaze: X = yaw, Y = -pitch (the eyeLook shapes play no part)
BY_HAND = {
    "EyeOpenLeft": 0.4375, "EyeOpenRight": 0.0, "EyeOpen": 0.21875,
    "EyeClosedLeft": 0.5625, "EyeClosedRight": 1.0, "EyeClosed": 0.78125,
    "EyeLidLeft": 0.75 * 0.4375 + 0.25 * 0.25,  # 0.390625
    "EyeLidRight": 0.25 * 0.125,  # 0.03125
    "EyeLid": 0.75 * 0.21875 + 0.25 * 0.1875,  # 0.2109375
    "LipSuckUpperLeft": 0.625, "LipSuckUpperRight": 0.5, "LipSuckUpper": 0.5625,
    "LipSuckLowerLeft": 0.25, "LipSuck": (0.625 + 0.5 + 0.25 + 0.25) / 4,  # 0.40625
    "LipSuckFunnelUpper": 0.5625 - 0.125, "LipSuckFunnelUpperLeft": 0.5, "LipSuckFunnelUpperRight": 0.375,
    "LipSuckFunnelLower": 0.125,
    "EyeLeftX": 0.0625, "EyeLeftY": 0.03125, "EyeRightX": 0.046875, "EyeRightY": -0.015625,
    "EyeX": 0.0546875, "EyeY": 0.0078125,
    "EyeWide": 0.25, "EyeSquintLeft": 0.5, "EyeSquintRight": 0.5,
}  # fmt: skip


def test_vrcft_formulas_by_hand() -> None:
    names = list(BY_HAND)
    got = dict(zip(names, UnifiedMap(names)(CASE, CASE_HEAD).tolist(), strict=True))
    assert got == pytest.approx(BY_HAND, abs=1e-6)
    # The plain mapping (unified_matrix, ARKit only) is not VRCFT's here.
    m, bias, _ = unified_matrix(tuple(names))
    plain = dict(zip(names, (m @ CASE + bias).tolist(), strict=True))
    assert plain["LipSuckUpperRight"] == pytest.approx(0.625) and plain["EyeOpenLeft"] == pytest.approx(0.625)
    assert plain["EyeLeftX"] == pytest.approx(0.4375)  # eyeLookInLeft - eyeLookOutLeft


def vrcft_base(v: dict[str, float], h: dict[str, float]) -> dict[str, float]:
    """What VRCFT's Live Link module makes of one packet (written from the formulas in
    receivers.md and the module's mapping), plus the combined parameters VRCFT derives."""
    open_ = {s: 1 - max(0.0, min(1.0, v[f"EyeBlink{s}"] + v[f"EyeBlink{s}"] * v[f"EyeSquint{s}"]))
             for s in ("Left", "Right")}  # fmt: skip
    sides = ("Left", "Right")
    suck = {s: min(1 - math.pow(v[f"MouthUpperUp{s}"], 1 / 6), v["MouthRollUpper"]) for s in sides}
    gaze = {"Left": (h["LeftEyeYaw"], -h["LeftEyePitch"]), "Right": (h["RightEyeYaw"], -h["RightEyePitch"])}
    out: dict[str, float] = {}
    for s in ("Left", "Right"):
        out[f"EyeOpen{s}"] = open_[s]
        out[f"EyeClosed{s}"] = 1 - open_[s]
        out[f"EyeLid{s}"] = open_[s] * 0.75 + v[f"EyeWide{s}"] * 0.25
        out[f"LipSuckUpper{s}"] = suck[s]
        out[f"LipSuckFunnelUpper{s}"] = suck[s] - v["MouthFunnel"]
        out[f"Eye{s}X"], out[f"Eye{s}Y"] = gaze[s]
    out["EyeOpen"] = (open_["Left"] + open_["Right"]) / 2
    out["EyeClosed"] = 1 - out["EyeOpen"]
    out["EyeLid"] = out["EyeOpen"] * 0.75 + (v["EyeWideLeft"] + v["EyeWideRight"]) / 2 * 0.25
    out["LipSuckUpper"] = (suck["Left"] + suck["Right"]) / 2
    out["LipSuck"] = (suck["Left"] + suck["Right"] + 2 * v["MouthRollLower"]) / 4
    out["EyeX"] = (gaze["Left"][0] + gaze["Right"][0]) / 2
    out["EyeY"] = (gaze["Left"][1] + gaze["Right"][1]) / 2
    out["JawX"] = v["JawRight"] - v["JawLeft"]
    out["MouthX"] = v["MouthRight"] - v["MouthLeft"]
    out["JawOpen"] = v["JawOpen"]
    return out


def read_like_vrcft(packet: bytes) -> tuple[dict[str, float], dict[str, float]]:
    """VRCFT's Live Link module reading a packet: the last 244 bytes are the 61 big-endian
    floats, taken by position as the Live Link names."""
    floats = struct.unpack(">61f", packet[-244:])
    named = dict(zip(LIVELINK_NAMES, floats, strict=True))
    return {n: named[n] for n in LIVELINK_NAMES[:NUM_BLENDSHAPES]}, {n: named[n] for n in LIVELINK_NAMES[52:]}


def test_same_face_fed_through_vrcft_live_link_or_directly() -> None:
    """The bridge's Live Link packets read by a VRCFT-style reader over a real socket give the
    same parameters as the bridge's own Unified Expressions, for random faces."""
    rng = np.random.default_rng(8)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    frames = []
    for k in range(20):
        values = rng.random(NUM_BLENDSHAPES).astype(np.float32)
        h = ((rng.random(9) - 0.5) * 0.2).astype(np.float32)
        frames.append(FaceFrame(number=k, values=values, capture_time=0.0, head=h, subject="t"))
    try:
        with build_output(OutputConfig(kind="livelink", port=sock.getsockname()[1], subject="iPhone")) as out:
            for f in frames:
                out.publish(f)
            packets = [sock.recv(4096) for _ in frames]
    finally:
        sock.close()
    names = list(vrcft_base(*read_like_vrcft(packets[0])))
    ours = UnifiedMap(names)
    worst = 0.0
    for f, packet in zip(frames, packets, strict=True):
        expected = vrcft_base(*read_like_vrcft(packet))
        got = dict(zip(names, ours(f.values, f.head).tolist(), strict=True))
        assert got == pytest.approx(expected, abs=1e-5)
        worst = max(worst, abs(got["LipSuckUpperLeft"] - float(f.values[AT["mouthRollUpper"]])))
    assert worst > 0.05  # the cap did something: the plain mapping would not have matched


def test_other_parameters_are_the_plain_mapping() -> None:
    """Only the parameters built on VRCFT's features differ from the linear table."""
    featured = {f.name for f in FEATURES}
    plain_names = tuple(p.name for p in UNIFIED_PARAMS if not {n for n, _ in p.sources} & featured)
    assert len(plain_names) == len(UNIFIED_NAMES) - 22
    m, bias, maxes = unified_matrix(plain_names)
    ours = UnifiedMap(plain_names)
    for seed in range(3):
        v = np.random.default_rng(seed).random(NUM_BLENDSHAPES).astype(np.float32)
        expected = m @ v + bias
        for row, c, a, b in maxes:
            expected[row] += c * max(v[a], v[b])
        np.testing.assert_allclose(ours(v, head(0.1, 0.1, 0.1, 0.1)), expected, atol=1e-6)


def test_mirror_swaps_sides_and_turns_the_gaze() -> None:
    names = ["EyeOpenLeft", "EyeOpenRight", "LipSuckUpperLeft", "LipSuckUpperRight",
             "EyeLeftX", "EyeLeftY", "EyeRightX", "EyeRightY", "EyeX", "JawX"]  # fmt: skip
    values = CASE.copy()
    values[AT["jawLeft"]], values[AT["jawRight"]] = 0.5, 0.125
    got = dict(zip(names, UnifiedMap(names, mirror=True)(values, CASE_HEAD).tolist(), strict=True))
    assert got == pytest.approx({
        "EyeOpenLeft": 0.0, "EyeOpenRight": 0.4375, "LipSuckUpperLeft": 0.5, "LipSuckUpperRight": 0.625,
        "EyeLeftX": -0.046875, "EyeLeftY": -0.015625, "EyeRightX": -0.0625, "EyeRightY": 0.03125,
        "EyeX": -0.0546875, "JawX": 0.375,
    }, abs=1e-6)  # fmt: skip
    # The same as mirroring the input by hand.
    h = CASE_HEAD.copy()
    h[3], h[4], h[6], h[7] = -CASE_HEAD[6], CASE_HEAD[7], -CASE_HEAD[3], CASE_HEAD[4]
    by_hand = UnifiedMap(names)(values[mirror_permutation(ARKIT_NAMES)], h)
    np.testing.assert_allclose(UnifiedMap(names, mirror=True)(values, CASE_HEAD), by_hand, atol=1e-7)


def test_edge_inputs() -> None:
    names = ["LipSuckUpperLeft", "EyeOpenLeft", "EyeLeftX", "EyeY"]
    ours = UnifiedMap(names)
    v = face(mouthUpperUpLeft=-0.01, mouthRollUpper=0.5, eyeBlinkLeft=0.0, eyeSquintLeft=1.0)
    got = ours(v, None).tolist()  # no head values: gaze 0
    assert got == pytest.approx([0.5, 1.0, 0.0, 0.0])  # a slightly negative mouthUpperUp is no NaN
    v = face(mouthUpperUpLeft=1.0, mouthRollUpper=0.5, eyeBlinkLeft=1.0)
    assert ours(v, head()).tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0])
    with pytest.raises(BridgeError, match="unknown Unified Expressions name 'EyeLidd'"):
        UnifiedMap(["EyeLidd"])
    assert UnifiedMap(["v2/eyelidleft"]).names == ("EyeLidLeft",)


def test_docs_table_is_in_step() -> None:
    """docs/wire-formats.md lists every parameter with the formula and range the code uses."""
    text = (ROOT / "docs" / "wire-formats.md").read_text(encoding="utf-8")
    start = text.index("| v2 parameter |")
    rows = re.findall(r"^\| `([A-Za-z]+)` \| (.+?) \| (-?\d+)\.\.(-?\d+) \|$", text[start:], re.M)
    expected = [(p.name, p.formula, f"{p.range[0]:g}", f"{p.range[1]:g}") for p in UNIFIED_PARAMS]
    assert rows[: len(expected)] == expected, (
        'regenerate the table rows: python3 -c "from bridge.outputs.unified import UNIFIED_PARAMS as P; '
        "print('\\n'.join(f'| `{p.name}` | {p.formula} | {p.range[0]:g}..{p.range[1]:g} |' for p in P))\""
    )
    for feature in FEATURES:  # and says how each feature is computed
        assert f"`{feature.name} = {feature.formula}`" in text, feature.name
