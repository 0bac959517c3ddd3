"""VRChat with VRCFaceTracking avatars: the bridge sends exactly what the avatar's OSC config
declares, floats as floats and VRCFT's binary bools as VRCFT would, follows
``/avatar/change`` over a real OSC message, and keeps its bundles under VRChat's limit.

The avatars are JSON files written here the way VRChat writes them (UTF-8 with a BOM,
``parameters`` with ``name``/``input``/``output``); what arrives is read by a python-osc
server and decoded by ``tests.decoders.decode_vrcft_binary``, written from VRCFT's docs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from pythonosc.udp_client import SimpleUDPClient

from bridge.blendshapes import ARKIT_NAMES
from bridge.config import OutputConfig, parse_config
from bridge.errors import BridgeError
from bridge.frame import FaceFrame
from bridge.outputs import VrchatOutput, build_output
from bridge.outputs.osc_template import MAX_BUNDLE_BYTES
from bridge.outputs.unified import UNIFIED_NAMES
from bridge.outputs.vrchat import VrchatEncoder
from bridge.outputs.vrchat_avatar import (
    bind_avatar,
    find_avatar_file,
    load_avatar_config,
    parse_avatar_config,
)
from bridge.signals import speech_like
from tests.decoders import decode_osc_bundle, decode_osc_message, decode_vrcft_binary
from tests.receivers import OscReceiver

PREFIX = "FT/v2/"


# --- avatars, written as VRChat writes them ----------------------------------------------------


def entry(name: str, kind: str, settable: bool = True) -> dict[str, Any]:
    address = "/avatar/parameters/" + name
    e: dict[str, Any] = {"name": name, "output": {"address": address, "type": kind}}
    if settable:
        e["input"] = {"address": address, "type": kind}
    return e


def binary(name: str, bits: int, negative: bool) -> list[dict[str, Any]]:
    """VRCFT's binary parameter: ``<name>1``, ``<name>2``, ... (+ ``<name>Negative``)."""
    out = [entry(f"{name}{2**i}", "Bool") for i in range(bits)]
    return out + ([entry(f"{name}Negative", "Bool")] if negative else [])


def write_avatar(path: Path, avatar_id: str, entries: list[dict[str, Any]], name: str = "Test") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"id": avatar_id, "name": name, "parameters": entries}
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8-sig")  # VRChat writes a BOM
    return path


#: (parameter, float?, bits, sign flag?) of a face-tracking avatar in the style of the common
#: templates: a few network-synced floats, the rest as binary bools.
TEMPLATE: list[tuple[str, bool, int, bool]] = [
    ("JawOpen", True, 0, False),
    ("MouthClosed", True, 0, False),
    ("EyeLidLeft", True, 0, False),
    ("EyeLeftX", True, 0, False),
    ("JawX", False, 4, True),
    ("MouthX", False, 3, False),  # signed, but no sign flag: negative values send all bits false
    ("SmileFrownLeft", True, 4, True),  # a float and bools for the same parameter: both are sent
    ("LipFunnel", False, 3, False),
    ("CheekPuffSuck", False, 2, True),
    ("BrowExpressionRight", False, 8, True),
    ("TongueOut", False, 1, False),
]


def template_entries() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, has_float, bits, negative in TEMPLATE:
        if has_float:
            out.append(entry(PREFIX + name, "Float"))
        out += binary(PREFIX + name, bits, negative) if bits else []
    out += [
        entry(PREFIX + "EyeClosedRight", "Bool"),  # VRCFT's plain bool: true below 0.5
        entry(PREFIX + "MouthUpperUp", "Int"),  # ints: VRCFT sends none
        entry(PREFIX + "TongueX", "Float"),  # a v2 name with no ARKit source
        entry(PREFIX + "EyeTrackingActive", "Bool"),
        entry("JawOpen", "Float"),  # an unprefixed v1 name: not a v2 parameter
        entry(PREFIX + "JawOpen3", "Bool"),  # 3 is no power of two
        entry("VelocityZ", "Float", settable=False),  # VRChat's own, read-only
        entry("GestureLeft", "Int"),
    ]
    return out


def make_frame(k: int, **weights: float) -> FaceFrame:
    values = (((np.arange(52) * 5 + 11 * k) % 89 + 1) / 90).astype(np.float32)
    for n, w in weights.items():
        values[ARKIT_NAMES.index(n)] = w
    return FaceFrame(number=k, values=values, capture_time=0.0, head=np.zeros(9, np.float32), subject="t")


#: Frames that push the signed parameters to both ends and through zero.
FRAMES = [
    make_frame(0),
    make_frame(1, jawLeft=1.0, jawRight=0.0, mouthLeft=0.8, mouthRight=0.1),  # JawX = -1, MouthX < 0
    make_frame(2, jawLeft=0.0, jawRight=1.0, mouthSmileLeft=1.0, mouthFrownLeft=0.0),  # JawX = +1
    make_frame(3, jawLeft=0.3, jawRight=0.3, cheekPuff=0.0, mouthFunnel=0.0, tongueOut=0.55),
    make_frame(4, eyeBlinkRight=0.2, mouthSmileLeft=0.0, mouthFrownLeft=0.9),
    *[make_frame(k) for k in range(5, 12)],
]


def reference(names: list[str], frame: FaceFrame) -> dict[str, float]:
    """The float each parameter carries (the bridge's plain float path, no avatar)."""
    enc = VrchatEncoder("unified", parameters=names)
    return {n: float(v) for n, v in zip(enc.parameters, enc.values(frame), strict=True)}


def vrcft_bits(value: float, n: int, signed: bool) -> float:
    """The value an avatar decodes from VRCFT's bits (BinaryBaseParameter.cs, written out)."""
    if value < 0 and not signed:
        return 0.0
    a = abs(value)
    big = 2**n - 1 if a > 0.99999 else int(np.float32(a) * np.float32(2**n))
    return (-1 if value < 0 else 1) * big / 2**n


def per_frame(messages: list[tuple[str, tuple]], size: int) -> list[dict[str, Any]]:
    assert len(messages) % size == 0, (len(messages), size)
    return [{a: args[0] for a, args in messages[i : i + size]} for i in range(0, len(messages), size)]


# --- sending what the avatar declares ---------------------------------------------------------


@pytest.mark.parametrize("bundle", [True, False])
def test_sends_exactly_what_the_avatar_declares(tmp_path: Path, bundle: bool) -> None:
    entries = template_entries()
    path = write_avatar(tmp_path / "avtr_t.json", "avtr_t", entries)
    rx = OscReceiver()
    try:
        cfg = OutputConfig(kind="vrchat", names="unified", port=rx.port, avatar_config=str(path),
                           listen_port=False, bundle=bundle)  # fmt: skip
        out = build_output(cfg)
        assert out.name == f"vrchat unified 127.0.0.1:{rx.port}"
        with out:
            for f in FRAMES:
                out.publish(f)
    finally:
        rx.close()
    expected = [e["input"]["address"] for e in entries[:-8]] + ["/avatar/parameters/FT/v2/EyeClosedRight"]
    assert [a for a, _ in rx.messages[: len(expected)]] == expected  # the file's order, nothing else
    names = [n for n, *_ in TEMPLATE] + ["EyeClosedRight"]
    for f, got in zip(FRAMES, per_frame(rx.messages, len(expected)), strict=True):
        ref = reference(names, f)
        floats, decoded = decode_vrcft_binary(entries, got)
        for name, has_float, bits, negative in TEMPLATE:
            if has_float:
                assert floats[PREFIX + name] == np.float32(ref[name]), (f.number, name)  # exact
            if bits:
                value = decoded[PREFIX + name]
                assert value == vrcft_bits(ref[name], bits, negative), (f.number, name, ref[name])
                if ref[name] >= 0 or negative:
                    assert abs(value - ref[name]) <= 1 / 2**bits, (f.number, name)  # within the resolution
        assert got["/avatar/parameters/FT/v2/EyeClosedRight"] is (ref["EyeClosedRight"] < 0.5)
    first = per_frame(rx.messages, len(expected))
    assert first[1]["/avatar/parameters/FT/v2/JawXNegative"] is True  # JawX = -1: every bit and the sign
    assert all(first[1][f"/avatar/parameters/FT/v2/JawX{w}"] is True for w in (1, 2, 4, 8))
    assert first[2]["/avatar/parameters/FT/v2/JawXNegative"] is False
    assert not any(first[1][f"/avatar/parameters/FT/v2/MouthX{w}"] for w in (1, 2, 4))  # negative, no flag


def test_binary_edges_follow_vrcft() -> None:
    cfg = parse_avatar_config(
        json.dumps({"id": "a", "name": "n", "parameters": binary("v2/JawX", 3, True)}), "m"
    )
    enc = VrchatEncoder("unified", avatar=cfg)
    plan = enc.plan
    for value, bits in [
        (0.0, [0, 0, 0, 0]),
        (0.124, [0, 0, 0, 0]),
        (0.125, [1, 0, 0, 0]),
        (0.5, [0, 0, 1, 0]),
        (0.99999, [1, 1, 1, 0]),  # 7.99992 -> 7
        (0.999995, [1, 1, 1, 0]),  # above VRCFT's 0.99999: every bit
        (1.0, [1, 1, 1, 0]),
        (3.0, [1, 1, 1, 0]),
        (-0.375, [1, 1, 0, 1]),
        (-1.0, [1, 1, 1, 1]),
        (float("nan"), [0, 0, 0, 0]),
    ]:
        flags = plan.bool_flags(np.array([value], np.float32))
        assert flags.astype(int).tolist() == bits, value


def test_bundles_stay_under_vrchats_limit(tmp_path: Path) -> None:
    """Every derivable parameter as a float plus 8 bits and a sign flag: ~1400 messages."""
    entries = []
    for n in UNIFIED_NAMES:
        entries += [entry(PREFIX + n, "Float"), *binary(PREFIX + n, 8, True)]
    path = write_avatar(tmp_path / "big.json", "avtr_big", entries)
    enc = VrchatEncoder("unified", avatar=load_avatar_config(path))
    packets = enc.encode_packets(FRAMES[3])
    assert len(enc.plan) == len(entries) == 10 * len(UNIFIED_NAMES)
    assert len(packets) >= 15 and all(
        p.startswith(b"#bundle") and len(p) <= MAX_BUNDLE_BYTES for p in packets
    )
    assert sum(len(p) for p in packets) > 15 * 3800  # packed, not one message per bundle
    msgs = [m for p in packets for m in decode_osc_bundle(p)]
    assert [a for a, _ in msgs] == [e["input"]["address"] for e in entries]
    single = VrchatEncoder("unified", avatar=load_avatar_config(path), bundle=False).encode_packets(FRAMES[3])
    assert [decode_osc_message(p) for p in single] == msgs


def test_without_an_avatar_floats_under_ft_v2() -> None:
    enc = VrchatEncoder("unified", parameters=["JawOpen", "JawX"])
    got = [decode_osc_bundle(p) for p in enc.encode_packets(FRAMES[1])][0]
    assert got == [("/avatar/parameters/FT/v2/JawOpen", [pytest.approx(FRAMES[1].values[17])]),
                   ("/avatar/parameters/FT/v2/JawX", [-1.0])]  # fmt: skip
    assert VrchatEncoder("unified", prefix="v2/").addresses[0].startswith("/avatar/parameters/v2/")


def test_matching_follows_vrcfts_rules() -> None:
    params = [
        entry("v2/JawOpen", "Float"),  # no prefix
        entry("Custom/Stuff/v2/JawOpen", "Float"),  # second match of the same kind: the first wins
        entry("v1/v2/JawX", "Float"),  # after a v<digits> segment: not a v2 parameter
        entry("X/v2/JawX1", "Bool"),
        entry("X/v2/JawX2", "Bool"),
        entry("X/v2/JawX6", "Bool"),  # no power of two
        entry("X/v2/JawXNegative", "Bool"),
        entry("FT/v2/MouthX", "Int"),
        entry("FT/v2/EyeLidLeftish", "Float"),
        entry("MyJaw", "Float"),
    ]
    cfg = parse_avatar_config(json.dumps({"id": "a", "name": "n", "parameters": params}), "m")
    found = bind_avatar(cfg, [("JawOpen", "v2/JawOpen"), ("JawX", "v2/JawX"), ("MouthX", "v2/MouthX"),
                              ("EyeLidLeft", "v2/EyeLidLeft"), ("LipFunnel", "MyJaw")])  # fmt: skip
    by = {b.parameter: b for b in found}
    assert set(by) == {"JawOpen", "JawX", "LipFunnel"}
    assert by["JawOpen"].float_address == "/avatar/parameters/v2/JawOpen"
    assert by["JawX"].float_address == "" and by["JawX"].negative_address.endswith("JawXNegative")
    assert by["JawX"].bits == ((0, "/avatar/parameters/X/v2/JawX1"), (1, "/avatar/parameters/X/v2/JawX2"))
    renamed = VrchatEncoder("unified", parameters=["JawOpen"], rename={"JawOpen": "MyJaw"}, avatar=cfg)
    assert renamed.addresses == ("/avatar/parameters/MyJaw",)  # rename names the avatar's parameter


# --- bad files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", r"not valid JSON \(line 1 column 2"),
        ('{"id": "a", "name": "n"}', 'no "parameters" list'),
        (
            '{"id": "a", "parameters": [{"name": "x", "input": {"address": "/a"}}]}',
            r'parameters\[0\] \(x\): "input"',
        ),
        ('{"id": "a", "parameters": [{"input": {}}]}', r'parameters\[0\] has no "name"'),
        (
            '{"id": "a", "parameters": [{"name": "x", "input": {"address": "a b", "type": "Float"}}]}',
            "'a b' is not an OSC address",
        ),  # fmt: skip
        (
            '{"id": "a", "name": "plain", "parameters": [{"name": "VRCEmote", "input": '
            '{"address": "/avatar/parameters/VRCEmote", "type": "Int"}}]}',
            "declares none of the parameters",
        ),  # fmt: skip
    ],
)
def test_bad_avatar_config_at_start_is_one_line(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(BridgeError, match=match) as err:
        build_output(OutputConfig(kind="vrchat", names="unified", avatar_config=str(path), listen_port=False))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "output.avatar_config" in msg


def test_bad_avatar_config_exits_2_with_one_line(tmp_path: Path) -> None:
    wav = tmp_path / "in.wav"
    soundfile.write(str(wav), speech_like(0.5, 16000), 16000)
    cfg = tmp_path / "c.toml"
    missing = tmp_path / "no.json"
    toml = (
        f'[[output]]\nkind = "vrchat"\nnames = "unified"\navatar_config = "{missing}"\nlisten_port = false\n'
    )
    cfg.write_text(toml, encoding="utf-8")
    args = ["run", "-c", str(cfg), "--model", "synthetic", "--input", str(wav), "--fast"]
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("a2e-bridge: error:")]
    assert len(lines) == 1 and "cannot read avatar config" in lines[0] and "no.json" in lines[0]


def test_config_keys() -> None:
    with pytest.raises(BridgeError, match=r"unknown key output\[0\]\.reply_port"):
        parse_config({"output": [{"kind": "vrchat", "reply_port": 1}]}, "c.toml")
    out = parse_config({"output": [{"kind": "vrchat", "avatar_config": "a.json", "osc_folder": "/x",
                                    "listen_port": 9101}]}).outputs[0]  # fmt: skip
    assert (out.avatar_config, out.osc_folder, out.resolved_listen_port) == ("a.json", "/x", (9101, True))


# --- following /avatar/change -------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_avatar_change_switches_the_parameter_set(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bridge.outputs.vrchat_listener")
    osc = tmp_path / "OSC"
    a_entries = [entry(PREFIX + "JawOpen", "Float"), *binary(PREFIX + "JawX", 3, True)]
    b_entries = [entry("v2/MouthX", "Float"), entry("v2/LipFunnel", "Float")]
    write_avatar(osc / "usr_1" / "Avatars" / "avtr_a.json", "avtr_a", a_entries, "Alpha")
    write_avatar(osc / "usr_2" / "Avatars" / "avtr_b.json", "avtr_b", b_entries, "Beta")  # another user
    (osc / "usr_1" / "Avatars" / "avtr_bad.json").write_text("{", encoding="utf-8")
    (osc / "usr_3").mkdir()  # a user folder without avatars
    rx = OscReceiver()
    probe = OscReceiver()  # borrow a free port for the listener
    listen = probe.port
    probe.close()
    cfg = OutputConfig(kind="vrchat", names="unified", port=rx.port, listen_port=listen, osc_folder=str(osc),
                       parameters=["JawOpen", "JawX", "MouthX", "LipFunnel"])  # fmt: skip
    out = build_output(cfg)
    assert isinstance(out, VrchatOutput) and out.follower is not None
    out.follower.retry_s = 0.01
    vrchat = SimpleUDPClient("127.0.0.1", listen)  # VRChat's side of port 9001
    enc: VrchatEncoder = out.encoder  # type: ignore[assignment]

    def frame_addresses(k: int) -> list[str]:
        before = len(rx.messages)
        out.publish(make_frame(k))
        assert wait_until(lambda: len(rx.messages) >= before + len(enc.plan))
        return [a for a, _ in rx.messages[before:]]

    def on(avatar_id: str) -> bool:
        return wait_until(lambda: enc.plan.avatar is not None and enc.plan.avatar.id == avatar_id)

    try:
        assert frame_addresses(0) == [f"/avatar/parameters/FT/v2/{n}" for n in ("JawOpen", "JawX", "MouthX",
                                                                                "LipFunnel")]  # fmt: skip
        vrchat.send_message("/avatar/parameters/VelocityZ", 0.5)  # VRChat's usual chatter: ignored
        vrchat.send_message("/avatar/change", "avtr_a")
        assert on("avtr_a")
        assert frame_addresses(1) == [e["input"]["address"] for e in a_entries]
        vrchat.send_message("/avatar/change", "avtr_b")
        assert on("avtr_b")
        assert frame_addresses(2) == ["/avatar/parameters/v2/MouthX", "/avatar/parameters/v2/LipFunnel"]
        for bad in ("avtr_bad", "avtr_bad", "avtr_missing", "../../etc/passwd"):
            vrchat.send_message("/avatar/change", bad)
        assert wait_until(lambda: out.stats()["avatar_errors"] == 4)
        assert enc.plan.avatar is not None and enc.plan.avatar.id == "avtr_b"  # the previous set stays
        assert frame_addresses(3) == ["/avatar/parameters/v2/MouthX", "/avatar/parameters/v2/LipFunnel"]
        stats = out.stats()
    finally:
        out.close()
        rx.close()
    assert stats["avatar_changes"] == 6 and stats["avatar_loads"] == 2 and stats["sent"] >= 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # once per bad avatar id, however often it comes
    assert "avtr_bad: avatar config" in warnings[0] and "not valid JSON" in warnings[0]
    assert "no avtr_missing.json in" in warnings[1] and "is not an avatar id" in warnings[2]
    loaded = [r.getMessage() for r in caplog.records if "loaded" in r.getMessage()]
    assert loaded[0].startswith(
        "vrchat output: avatar avtr_a (Alpha) loaded: 2 parameters: 1 floats, 1 binary"
    )


def test_find_avatar_file_searches_every_user(tmp_path: Path) -> None:
    write_avatar(tmp_path / "usr_1" / "Avatars" / "avtr_x.json", "avtr_x", [])
    newer = write_avatar(tmp_path / "usr_2" / "Avatars" / "avtr_x.json", "avtr_x", [])
    old = time.time() - 100
    os.utime(tmp_path / "usr_1" / "Avatars" / "avtr_x.json", (old, old))
    assert find_avatar_file(tmp_path, "avtr_x") == newer
    assert find_avatar_file(tmp_path, "avtr_y") is None
    assert find_avatar_file(tmp_path, "../usr_1/Avatars/avtr_x") is None
    assert find_avatar_file(tmp_path / "nowhere", "avtr_x") is None
