"""The console's command path end to end: HTTP and OSC commands, checked on a real Live Link
receiver; malformed commands answered with an error and changing nothing.

The bridge plays a file of constant level through the oracle model (``--raw``, so every
value on the wire is the oracle's closed form), its console and OSC control on free ports."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from pythonosc.udp_client import SimpleUDPClient

from bridge.control.commands import Capabilities, CommandError, parse_json, parse_osc
from tests.console_bridge import BROW, EYE_BLINK, JAW, oracle, running
from tests.decoders import decode_osc_message

LEVEL = 0.2


class OscClient:
    """A python-osc client whose socket also receives the bridge's ``/a2e/error`` replies."""

    def __init__(self, port: int) -> None:
        self.client = SimpleUDPClient("127.0.0.1", port)
        self.client._sock.settimeout(2.0)

    def send(self, address: str, *args: object) -> None:
        self.client.send_message(address, list(args))

    def error(self, timeout: float = 2.0) -> tuple[str, list]:
        self.client._sock.settimeout(timeout)
        data, _ = self.client._sock.recvfrom(65536)
        return decode_osc_message(data)

    def no_error(self, wait: float = 0.3) -> None:
        self.client._sock.settimeout(wait)
        with pytest.raises(TimeoutError):
            self.client._sock.recvfrom(65536)


def consecutive(packets: list[dict]) -> bool:
    numbers = [p["frame"] for p in packets]
    return numbers == list(range(numbers[0], numbers[0] + len(numbers)))


def test_http_mute_rests_the_mouth_within_two_frames_raw_included_and_unmute_brings_it_back(
    tmp_path: Path,
) -> None:
    with running(tmp_path) as r:
        status, state = r.get("/api/state")
        assert status == 200 and state["performers"][0]["name"] == "main"
        assert len(state["names"]) == 52 and state["model"]["preset"] == "oracle"
        jaw, brow = oracle(LEVEL, "jawOpen"), oracle(LEVEL, "browInnerUp")

        status, body = r.post({"command": "mute", "value": 1})
        assert status == 200 and body["ok"], body
        f = body["frame"]
        after = r.packets_from(f, 10)
        assert after[0]["values"][JAW] == pytest.approx(jaw / 2, abs=2e-3)  # easing: half on the first
        for p in after[1:]:  # at rest from the second frame on, and it stays
            assert p["values"][JAW] == 0.0
            assert p["values"][BROW] == pytest.approx(brow, abs=2e-3)  # the other channels go on
        assert r.get("/api/state")[1]["performers"][0]["settings"]["mute"] is True

        status, body = r.post({"command": "mute", "value": 0, "performer": "main"})
        assert status == 200 and body["ok"]
        back = r.packets_from(body["frame"], 5)
        assert back[1]["values"][JAW] == pytest.approx(jaw, abs=2e-3)
        assert consecutive(r.receiver.packets[-30:])


def test_malformed_http_commands_are_400_with_one_line_and_change_nothing(tmp_path: Path) -> None:
    with running(tmp_path) as r:
        before = r.get("/api/state")[1]["performers"][0]["settings"]
        bad = [
            ({"command": "gain", "value": 9}, "gain: 9 is out of range; allowed: 0..4"),
            ({"command": "gain", "value": "loud"}, "gain: expected a number, got str 'loud'"),
            ({"command": "mute", "value": 2}, "mute: expected 1 or 0"),
            ({"command": "shout", "value": 1}, "unknown command 'shout'"),
            ({"command": "mute", "value": 1, "performer": "bob"}, "unknown performer 'bob'"),
            ({"command": "identity", "value": 12}, "identity: 12 is out of range; allowed: 0..11"),
            ({"command": "lookahead", "value": 1.5}, "lookahead: expected a whole number"),
            ({"command": "model", "value": "/etc/passwd"}, "model: unknown preset '/etc/passwd'"),
            ({"command": "output/nowhere/enabled", "value": 0}, "unknown output 'nowhere'"),
            ({"command": "gate", "value": -20}, "gate: the gate stage is off for main"),
            ({"value": 1}, 'missing "command"'),
            ([1, 2], "expected a JSON object"),
        ]
        for doc, message in bad:
            status, body = r.post(doc)
            assert status == 400 and body["ok"] is False, (doc, body)
            assert message in body["error"] and "\n" not in body["error"], (doc, body)
        status, body = r.post(b"{not json")
        assert status == 400 and "JSON" in body["error"]
        time.sleep(0.05)  # readers share a snapshot for 40 ms
        after = r.get("/api/state")[1]
        assert after["performers"][0]["settings"] == before
        assert after["commands"]["refused"] >= len(bad)
        jaw = oracle(LEVEL, "jawOpen")
        assert r.receiver.packets[-1]["values"][JAW] == pytest.approx(jaw, abs=2e-3)


def test_osc_commands_change_the_wire_and_bad_ones_are_answered_on_a2e_error(tmp_path: Path) -> None:
    with running(tmp_path) as r:
        osc = OscClient(r.osc_port)
        jaw = oracle(LEVEL, "jawOpen")

        osc.send("/a2e/main/gain", 0.5)
        osc.no_error()
        r.packets_from(r.receiver.packets[-1]["frame"] + 3, 1)
        assert r.receiver.packets[-1]["values"][JAW] == pytest.approx(jaw * 0.5, abs=2e-3)
        assert r.receiver.packets[-1]["values"][BROW] == pytest.approx(oracle(LEVEL, "browInnerUp"), abs=2e-3)

        osc.send("/a2e/gain", 1.0)  # every performer
        osc.send("/a2e/identity", 5)
        osc.no_error()
        r.packets_from(r.receiver.packets[-1]["frame"] + 3, 1)
        last = r.receiver.packets[-1]["values"]
        assert last[JAW] == pytest.approx(oracle(LEVEL, "jawOpen", 5), abs=2e-3)
        assert last[BROW] == pytest.approx(oracle(LEVEL, "browInnerUp", 5), abs=2e-3)

        for address, args, message in [
            ("/a2e/main/gain", ["x"], "gain: expected a number"),
            ("/a2e/main/gain", [99.0], "out of range"),
            ("/a2e/bob/mute", [1], "unknown performer 'bob'"),
            ("/a2e/frobnicate", [1], "unknown command 'frobnicate'"),
            ("/a2e/main/model", ["oracle"], "model is for the whole bridge"),
            ("/a2e/model", ["oracle"], "model: oracle is already running"),  # refused between hops
            ("/a2e/mute", [], "expected exactly one argument"),
        ]:
            osc.send(address, *args)
            got_address, got = osc.error()
            assert got_address == "/a2e/error" and got[0] == address and message in got[1], (address, got)
        time.sleep(0.1)
        assert r.receiver.packets[-1]["values"][JAW] == pytest.approx(oracle(LEVEL, "jawOpen", 5), abs=2e-3)


def test_output_enabled_stops_and_resumes_its_frames(tmp_path: Path) -> None:
    with running(tmp_path) as r:
        osc = OscClient(r.osc_port)
        osc.send("/a2e/output/livelink/enabled", 0)
        osc.no_error(0.3)
        count = len(r.receiver.packets)
        time.sleep(0.4)
        assert len(r.receiver.packets) - count <= 1  # one in flight at most
        state = r.get("/api/state")[1]
        assert state["outputs"][0]["enabled"] is False and "disabled" in " ".join(state["warnings"])
        status, body = r.post({"command": "output/livelink/enabled", "value": 1})
        assert status == 200 and body["ok"]
        r.packets_from(body["frame"], 3)


def test_lookahead_changes_without_a_gap_or_a_repeated_frame(tmp_path: Path) -> None:
    with running(tmp_path) as r:
        for value in (4, 0, 2):
            status, body = r.post({"command": "lookahead", "value": value})
            assert status == 200 and body["ok"], body
            assert r.get("/api/state")[1]["performers"][0]["settings"]["lookahead"] == value
            r.packets_from(body["frame"] + 6, 1)
        assert consecutive(list(r.receiver.packets))


def test_model_switch_goes_through_the_fallback_path_with_no_gap(tmp_path: Path) -> None:
    with running(tmp_path) as r:
        status, body = r.post({"command": "model", "value": "synthetic"})
        assert status == 200 and "loading synthetic" in body["message"]
        deadline = time.monotonic() + 60
        while r.bridge.model.preset != "synthetic" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.bridge.model.preset == "synthetic"
        r.packets_from(r.receiver.packets[-1]["frame"] + 3, 1)
        assert consecutive(list(r.receiver.packets))
        state = r.get("/api/state")[1]
        assert state["model"]["preset"] == "synthetic" and state["model"]["fallback"] is None
        assert state["health"]["status"] in ("ok", "degraded")
        assert not any("fallback" in reason for reason in state["health"]["reasons"])


def test_calibrate_refused_on_a_loud_input_and_applied_on_a_quiet_one(tmp_path: Path) -> None:
    # 0.2 (-14 dBFS) for 1.5 s, then 0.001 (-60 dBFS): calibrate during each
    with running(tmp_path, segments=[(1.5, 0.2), (60.0, 0.001)]) as r:
        osc = OscClient(r.osc_port)
        osc.send("/a2e/calibrate", 0.5)
        address, args = osc.error(timeout=5.0)
        assert address == "/a2e/error" and "refused: the input was not quiet" in args[1], args
        state = r.get("/api/state")[1]["performers"][0]["calibration"]
        assert state["state"] == "refused"
        jaw_floor = oracle(0.001, "jawOpen")
        while r.receiver.packets[-1]["values"][JAW] > jaw_floor + 0.01:
            time.sleep(0.05)
        assert r.receiver.packets[-1]["values"][JAW] == pytest.approx(jaw_floor, abs=2e-3)
        status, body = r.post({"command": "calibrate", "value": 0.5})
        assert status == 200 and "recording 0.5 s" in body["message"]
        deadline = time.monotonic() + 5
        while (r.get("/api/state")[1]["performers"][0]["calibration"] or {}).get("state") != "applied":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r.packets_from(r.receiver.packets[-1]["frame"] + 2, 1)
        assert r.receiver.packets[-1]["values"][JAW] == pytest.approx(0.0, abs=2e-3)  # the floor is rest now


def test_post_stage_commands_gate_smoothing_blink_head(tmp_path: Path) -> None:
    post = {"gate": {"enabled": True, "open_db": -40.0, "close_db": -46.0},
            "smoothing": {"kind": "ema", "alpha": 0.5}, "blink": {"enabled": True, "seed": 1},
            "head": {"enabled": True, "seed": 1}}  # fmt: skip
    with running(tmp_path, raw=False, raw_post=post) as r:
        jaw_post = r.receiver.packets[-1]["values"][JAW]
        assert jaw_post > 0.2  # -14 dBFS: the gate is open
        status, body = r.post({"command": "gate", "value": -6})  # above the input: the gate closes
        assert status == 200, body
        r.packets_from(body["frame"] + 8, 1)
        assert r.receiver.packets[-1]["values"][JAW] == 0.0
        settings = r.get("/api/state")[1]["performers"][0]["settings"]
        assert settings["gate"] == -6.0 and settings["gate_open"] is False
        status, body = r.post({"command": "gate", "value": -40})
        r.packets_from(body["frame"] + 8, 1)
        assert r.receiver.packets[-1]["values"][JAW] > 0.2

        status, body = r.post({"command": "smoothing", "value": 0})
        assert status == 200 and r.bridge.post.find(type(r.bridge.post.stages[0]), 0)[0].alpha[0, 0] == 1.0
        assert r.get("/api/state")[1]["performers"][0]["settings"]["smoothing"] == 0.0

        status, body = r.post({"command": "blink", "value": 0})
        assert status == 200
        blink = r.packets_from(body["frame"] + 1, 60)  # 2 s: blinks come every 2-6 s
        eye = [p["values"][EYE_BLINK] for p in blink]
        assert max(eye) == pytest.approx(oracle(LEVEL, "eyeBlinkLeft"), abs=2e-3)  # the model's own value

        status, body = r.post({"command": "head", "value": 0})
        assert status == 200
        head = r.packets_from(body["frame"] + 1, 5)
        assert all(p["values"][52:] == [0.0] * 9 for p in head)
        settings = r.get("/api/state")[1]["performers"][0]["settings"]
        assert settings["blink"] is False and settings["head"] is False


def test_parse_is_the_same_for_osc_and_json() -> None:
    caps = Capabilities(("alice", "bob"), ("livelink", "osc-1", "osc-2"), ("lam", "oracle"), 29, True,
                        (frozenset({"gate"}), frozenset()))  # fmt: skip
    a = parse_osc("/a2e/bob/gain", [1.5], caps)
    b = parse_json({"command": "gain", "performer": "bob", "value": 1.5}, caps)
    c = parse_json({"address": "/a2e/1/gain", "value": 1.5}, caps)
    assert a == b == c and a.performers == (1,) and a.value == 1.5
    assert parse_osc("/a2e/mute", [True], caps).performers == (0, 1)
    assert parse_osc("/a2e/output/osc-2/enabled", [0], caps).output == 2
    assert parse_osc("/a2e/alice/gate", [-30], caps).value == -30.0
    with pytest.raises(CommandError, match="the gate stage is off for bob"):
        parse_osc("/a2e/gate", [-30], caps)  # bob has no gate: refused for all, nothing changes
    with pytest.raises(CommandError, match="lookahead: 30 is out of range; allowed: 0..29"):
        parse_osc("/a2e/lookahead", [30], caps)
    with pytest.raises(CommandError, match="not a finite number"):
        parse_osc("/a2e/gain", [float("nan")], caps)


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    from bridge.config import parse_config
    from bridge.engine import Bridge
    from bridge.errors import BridgeError
    from tests.console_bridge import config, write_levels

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        wav = write_levels(tmp_path / "x.wav", [(1.0, 0.1)])
        cfg = config(wav, 9, console={"port": busy.getsockname()[1]})
        with pytest.raises(BridgeError, match=r"console: cannot listen on 127.0.0.1:\d+ .*pick another"):
            Bridge(parse_config(cfg, "t.toml"), raw=True)
    finally:
        busy.close()


def test_commands_per_performer_leave_the_other_alone(tmp_path: Path) -> None:
    """Two performers on the channels of one file, of different post structures (alice has a
    silence gate, bob none): per-performer commands reach only their performer's subject."""
    import numpy as np
    import soundfile

    from bridge.config import parse_config
    from bridge.engine import Bridge
    from tests.console_bridge import Running, config
    from tests.receivers import LiveLinkReceiver

    wav = tmp_path / "two.wav"
    n = 60 * 16000
    soundfile.write(str(wav), np.stack([np.full(n, 0.2, np.float32), np.full(n, 0.3, np.float32)], 1),
                    16000, subtype="FLOAT")  # fmt: skip
    off = {"smoothing": {"kind": "off"}, "blink": {"enabled": False}}
    perf = [{"name": "alice", "subject": "Alice", "post": {**off, "gate": {"enabled": True}},
             "input": {"kind": "file", "file": str(wav), "channel": 0, "realtime": True}},
            {"name": "bob", "subject": "Bob", "post": {**off, "gate": {"enabled": False}},
             "input": {"kind": "file", "file": str(wav), "channel": 1, "realtime": True}}]  # fmt: skip
    receiver = LiveLinkReceiver()
    doc = config(wav, receiver.port, performers=perf)
    del doc["input"]
    bridge = Bridge(parse_config(doc, "two.toml"))
    r = Running(bridge, receiver)
    r.thread.start()

    def last(subject: str) -> dict:
        return next(p for p in reversed(list(receiver.packets)) if p["subject"] == subject)

    try:
        r.wait_frames(10)
        status, body = r.post({"command": "mute", "value": 1, "performer": "alice"})
        assert status == 200 and body["command"] == "mute 1 for alice"
        r.packets_from(body["frame"] + 4, 4)
        assert last("Alice")["values"][JAW] == 0.0
        assert last("Bob")["values"][JAW] == pytest.approx(oracle(0.3, "jawOpen"), abs=2e-3)
        status, body = r.post({"command": "gate", "value": -30, "performer": "bob"})
        assert status == 400 and "the gate stage is off for bob" in body["error"]
        status, body = r.post({"command": "gate", "value": -30})  # every performer: bob has none
        assert status == 400
        status, body = r.post({"command": "gate", "value": -5, "performer": "alice"})
        assert status == 200
        status, body = r.post({"command": "mute", "value": 0, "performer": "1"})  # bob, by index
        assert status == 200 and body["command"] == "mute 0 for bob"
        state = r.get("/api/state")[1]
        assert [p["settings"]["mute"] for p in state["performers"]] == [True, False]
        alice, bob = (p["settings"] for p in state["performers"])
        assert alice["gate"] == -5.0 and "gate" not in bob
        assert [p["level_dbfs"] for p in state["performers"]] == pytest.approx([-14.0, -10.5], abs=0.1)
        time.sleep(0.5)
        assert 20 < r.get("/api/state")[1]["frames"]["fps"] < 40  # one face's rate, not the sum
    finally:
        r.stop.set()
        r.thread.join(10)
        bridge.close()
        receiver.close()
    assert r.error is None
