"""Config: parsed once into typed frozen objects; every mistake is one clear line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bridge.config import BridgeConfig, load_config, parse_config
from bridge.errors import BridgeError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_default_config_is_the_builtin_default() -> None:
    cfg = load_config(ROOT / "configs" / "default.toml")
    assert dataclasses.replace(cfg, source="x") == dataclasses.replace(BridgeConfig(), source="x")


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path: Path) -> None:
    load_config(path)


def test_values_are_typed_and_frozen() -> None:
    cfg = parse_config(
        {"model": {"providers": ["cpu"], "window_s": 1}, "output": [{"kind": "osc", "scheme": "vmc"}]}
    )
    assert cfg.model.providers == ("cpu",) and cfg.model.window_s == 1.0
    assert cfg.outputs[0].resolved_port == 39539
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.identity = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"inptu": {}}, "unknown key inptu; did you mean 'input'?"),
        ({"input": {"realtim": True}}, "unknown key input.realtim; did you mean 'realtime'?"),
        ({"input": {"kind": "usb"}}, "input.kind = 'usb' is not allowed; expected 'device' or 'file'"),
        ({"model": {"identity": 12}}, "model.identity = 12 must be an identity index 0..11"),
        ({"model": {"identity": "one"}}, "expected an integer"),
        ({"model": {"window_s": 0.55}}, "must be a multiple of 0.1 s"),
        ({"model": {"providers": ["gpu"]}}, "model.providers"),
        ({"schedule": {"max_latency_ms": -1}}, "must be > 0"),
        ({"output": [{"kind": "osc", "endpoint": "tcp://x"}]}, "unknown key output[0].endpoint"),
        ({"output": [{"kind": "midi"}]}, "output[0].kind = 'midi'"),
        ({"output": [{"kind": "livelink", "port": 70000}]}, "must be a port number"),
        ({"input": {"channel": "left"}}, 'must be a channel index (0 = first) or "mix"'),
    ],
)
def test_bad_values_name_file_key_and_allowed(doc: dict, fragment: str) -> None:
    with pytest.raises(BridgeError) as e:
        parse_config(doc, "my.toml")
    msg = str(e.value)
    assert msg.startswith("my.toml: ") and fragment in msg and "\n" not in msg


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(BridgeError, match="cannot read config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[input\nkind=", encoding="utf-8")
    with pytest.raises(BridgeError, match="not valid TOML"):
        load_config(bad)


def test_configuration_reference_matches_the_code() -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_config_docs.py"), "--check"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
