"""The console's server for supervisors and browsers: /metrics (parsed with prometheus-client's
own parser), /health, the WebSocket feed and its commands, and the access rules (token off
loopback, no cross-origin, loopback Host only).  Real aiohttp server, real HTTP and
WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.config import parse_config
from bridge.engine import Bridge
from tests.console_bridge import JAW, config, http, oracle, running, write_levels


def metrics(r) -> dict[str, dict]:
    status, text = r.get("/metrics")
    assert status == 200
    out: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_parse_and_grow(tmp_path: Path) -> None:
    with running(tmp_path) as r:
        first = metrics(r)
        time.sleep(0.5)
        second = metrics(r)
        main = (("performer", "main"),)
        assert second["a2e_frames_published_total"][main] > first["a2e_frames_published_total"][main] > 0
        assert second["a2e_frames_dropped_total"][main] == 0
        assert second["a2e_latency_seconds_count"][()] > first["a2e_latency_seconds_count"][()]
        p95 = second["a2e_performer_latency_seconds"][(("performer", "main"), ("quantile", "0.95"))]
        assert 0 < p95 < 1.0  # this performer's own frames, capture to send
        state = r.get("/api/state")[1]
        assert 0 < state["performers"][0]["latency_ms"]["p95"] < 1000.0
        assert state["passthrough"] is None  # no [sync] passthrough_device configured
        assert second["a2e_inference_seconds_count"][()] > 0
        inf_bucket = second["a2e_latency_seconds_bucket"][(("le", "+Inf"),)]
        assert inf_bucket == second["a2e_latency_seconds_count"][()]
        level = second["a2e_input_level_dbfs"][main]
        assert level == pytest.approx(-14.0, abs=0.2)  # 0.2 full scale
        out = (("output", "livelink"),)
        assert second["a2e_output_packets_total"][out] > first["a2e_output_packets_total"][out]
        assert second["a2e_output_errors_total"][out] == 0
        assert second["a2e_output_up"][out] == 1
        assert second["a2e_up"][()] == 1


def test_two_bridges_in_one_process_have_their_own_registries(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running(tmp_path / "a") as a, running(tmp_path / "b") as b:
        assert "a2e_frames_published_total" in metrics(a) and "a2e_frames_published_total" in metrics(b)


def test_health_ok_then_degraded_with_no_receiver_then_down_when_frames_stop(tmp_path: Path) -> None:
    with running(tmp_path) as r:
        status, body = r.get("/health")
        assert status == 200 and body["status"] == "ok" and body["reasons"] == []
        assert body["fps"] > 0  # already on the first look, while frames flow
        r.receiver.close()  # the receiver goes away: UDP refused on loopback
        deadline = time.monotonic() + 5
        while r.get("/health")[1]["status"] == "ok" and time.monotonic() < deadline:
            time.sleep(0.05)
        status, body = r.get("/health")
        assert status == 200 and body["status"] == "degraded"
        assert any(x.startswith("receiver unreachable: livelink") for x in body["reasons"])
        state = r.get("/api/state")[1]
        assert any("output livelink: no receiver" in w for w in state["warnings"])
        r.stop.set()
        r.thread.join(5)
        time.sleep(1.1)
        status, body = r.get("/health")
        assert status == 503 and body["status"] == "down"


def test_health_down_before_the_run(tmp_path: Path) -> None:
    wav = write_levels(tmp_path / "x.wav", [(1.0, 0.1)])
    bridge = Bridge(parse_config(config(wav, 9), "t.toml"), raw=True)
    try:
        status, body = http("GET", f"http://127.0.0.1:{bridge.control.web.port}/health")
        assert status == 503 and body == {"status": "down", "reasons": ["no frames are flowing"]}
    finally:
        bridge.close()


async def _ws_session(url: str, origin: str | None = None) -> tuple[list[dict], dict]:
    headers = {"Origin": origin} if origin else {}
    async with aiohttp.ClientSession() as s, s.ws_connect(url + "/ws", headers=headers) as ws:
        states = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            msg = json.loads((await ws.receive(timeout=2)).data)
            if msg["type"] == "state":
                states.append(msg)
        await ws.send_json({"type": "command", "id": 7, "command": "gain", "value": 0.25})
        while True:
            msg = json.loads((await ws.receive(timeout=3)).data)
            if msg["type"] == "result":
                return states, msg


def test_websocket_pushes_state_at_15_hz_or_more_and_takes_commands(tmp_path: Path) -> None:
    with running(tmp_path) as r:
        states, result = asyncio.run(_ws_session(r.url.replace("http", "ws"), origin=r.url))
        assert len(states) >= 15, len(states)
        assert states[-1]["performers"][0]["frame"] > states[0]["performers"][0]["frame"]
        assert result["id"] == 7 and result["ok"] and result["status"] == 200
        p = r.packets_from(result["frame"] + 1, 1)[0]
        assert p["values"][JAW] == pytest.approx(oracle(0.2, "jawOpen") * 0.25, abs=3e-3)


def test_cross_origin_websocket_and_post_and_foreign_host_are_refused(tmp_path: Path) -> None:
    with running(tmp_path) as r:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            asyncio.run(_ws_session(r.url.replace("http", "ws"), origin="http://evil.example"))
        assert e.value.status == 403
        status, body = r.post({"command": "mute", "value": 1}, headers={"Origin": "http://evil.example"})
        assert status == 403 and "cross-origin" in body["error"]
        status, body = r.get("/api/state", headers={"Host": "evil.example:8766"})  # DNS rebinding
        assert status == 403
        assert r.get("/api/state")[1]["performers"][0]["settings"]["mute"] is False


def _lan_address() -> str | None:
    """This machine's address on its network (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_token_required_off_loopback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with running(tmp_path, console={"host": "0.0.0.0"}, control={"host": "0.0.0.0"}) as r:
        token = r.bridge.control.token
        assert len(token) >= 16
        assert any(token in line for line in r.bridge.control_lines)  # printed once at start
        base = f"http://{_lan_address() or '127.0.0.1'}:{r.bridge.control.web.port}"
        status, body = http("GET", base + "/api/state")
        assert status == 401 and "token required" in body["error"]
        status, body = http("GET", base + "/api/state?token=wrong-token-wrong-token")
        assert status == 401
        status, _ = http("POST", base + "/api/command", {"command": "mute", "value": 1})
        assert status == 401
        status, body = http("GET", base + "/api/state", headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and body["performers"][0]["settings"]["mute"] is False
        assert http("GET", f"{base}/metrics?token={token}")[0] == 200
        assert http("GET", base + "/metrics")[0] == 401
        assert http("GET", base + "/health")[0] == 200  # supervisors probe without it
        assert http("GET", base + "/")[0] == 200  # the page holds no data; it brings ?token= along

        from tests.test_console_control import OscClient

        osc = OscClient(r.osc_port)
        osc.send("/a2e/mute", 1)
        address, args = osc.error()
        assert "token required" in args[1]
        osc.send("/a2e/gain", 0.5, token)
        osc.no_error()


def test_configured_token_is_checked(tmp_path: Path) -> None:
    from bridge.errors import BridgeError

    wav = write_levels(tmp_path / "x.wav", [(1.0, 0.1)])
    with pytest.raises(BridgeError, match="console.token .*must be at least 16"):
        parse_config(config(wav, 9, console={"token": "short"}), "t.toml")


def test_an_open_websocket_does_not_hold_up_the_bridge_closing(tmp_path: Path) -> None:
    """Ctrl-C ends a run within a second: a browser left open must not keep the server up."""
    import threading

    closed = threading.Event()

    async def client(url: str) -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(url + "/ws") as ws:
            async for _msg in ws:  # until the server closes it
                pass
        closed.set()

    with running(tmp_path) as r:
        t = threading.Thread(target=lambda: asyncio.run(client(r.url.replace("http", "ws"))), daemon=True)
        t.start()
        deadline = time.monotonic() + 5
        while r.bridge.control.web.clients == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert r.bridge.control.web.clients == 1
        r.stop.set()
        r.thread.join(5)
        t0 = time.monotonic()
        r.bridge.control.close()
        assert time.monotonic() - t0 < 1.0
        assert closed.wait(2.0)  # the browser was told (close code 1001), not left hanging
        t.join(2)


def test_clipping_input_lights_the_clip_light_and_warns(tmp_path: Path) -> None:
    with running(tmp_path, segments=[(60.0, 1.0)]) as r:  # full scale
        deadline = time.monotonic() + 3
        state = r.get("/api/state")[1]
        while not state["performers"][0]["clip"] and time.monotonic() < deadline:
            time.sleep(0.05)
            state = r.get("/api/state")[1]
        p = state["performers"][0]
        assert p["clip"] and p["peak_dbfs"] == 0.0
        assert any("input clipping" in w for w in state["warnings"])
        assert any("input clipping" in e["warning"] for e in state["events"])
