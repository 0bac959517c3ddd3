"""Config: parsed once into typed frozen objects; every mistake is one clear line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bridge.config import _KIND_FIELDS, BOUNDS, BridgeConfig, _out_of_bounds, load_config, parse_config
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
        ({"model": {"identity": 12}}, "model.identity = 12 is out of range; allowed: 0..11 (0 = neutral)"),
        ({"model": {"identity": "one"}}, "expected an integer"),
        ({"model": {"window_s": 0.55}}, "must be a multiple of 0.1 s"),
        ({"model": {"providers": ["gpu"]}}, "model.providers"),
        ({"schedule": {"max_latency_ms": -1}}, "allowed: 0.1..10000 ms"),
        ({"output": [{"kind": "osc", "endpoint": "tcp://x"}]}, "unknown key output[0].endpoint"),
        ({"output": [{"kind": "midi"}]}, "output[0].kind = 'midi'"),
        ({"output": [{"kind": "livelink", "port": 70000}]}, "port = 70000 is out of range; allowed: 1..6"),
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


def test_non_utf8_config_is_one_line(tmp_path: Path) -> None:
    latin = tmp_path / "latin1.toml"
    latin.write_bytes('[model]\n# Bo\u00eete\npreset = "synthetic"\n'.encode("latin-1"))
    with pytest.raises(BridgeError) as e:
        load_config(latin)
    assert str(e.value) == (f"{latin}: not UTF-8 text (byte 0xee on line 2); TOML files are UTF-8: "
                            "save it as UTF-8 in your editor")  # fmt: skip


# ---- every numeric key is bounded -----------------------------------------------------------


def _numeric_keys() -> dict[str, type]:
    """Every key whose value is (or holds) a number, with that number's type, from the schema."""
    import typing

    from bridge.config import _SECTIONS, OutputConfig

    found: dict[str, type] = {}
    tables: list[tuple[str, type]] = [*_SECTIONS.items(), ("output", OutputConfig)]
    for section, cls in tables:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                tables.append((f"{section}.{f.name}", tp))
                continue
            args = set(typing.get_args(tp)) | {tp}
            for inner in list(args):
                args |= set(typing.get_args(inner))
            for number in (float, int):
                if number in args:
                    found[f"{section}.{f.name}"] = number
                    break
    return found


def test_every_numeric_key_has_a_bound() -> None:
    keys = _numeric_keys()
    assert len(keys) >= 40
    missing = sorted(set(keys) - set(BOUNDS))
    assert not missing, f"add a row to bridge.config.BOUNDS for {missing} (what range makes sense?)"


def _field(key: str) -> dataclasses.Field:
    from bridge.config import _SECTIONS, OutputConfig

    parts = key.split(".")
    cls: type = OutputConfig if parts[0] == "output" else _SECTIONS[parts[0]]
    for part in parts[1:-1]:
        cls = next(f.type for f in dataclasses.fields(cls) if f.name == part)
        cls = getattr(__import__("bridge.config", fromlist=["x"]), cls) if isinstance(cls, str) else cls
    return next(f for f in dataclasses.fields(cls) if f.name == parts[-1])


def _doc_for(key: str, number: float) -> tuple[dict, object]:
    """The smallest config document that sets ``key`` to ``number``, and the value it holds."""
    parts = key.split(".")
    value: object = number
    if parts[0] == "output":
        kind = next(k for k, keys in _KIND_FIELDS.items() if parts[1] in keys)
        value = [number, 0.5] if parts[1] == "range" else number
        return {"output": [{"kind": kind, parts[1]: value}]}, value
    if parts[1] == "curve":
        value = {"jawOpen": number}
    doc: dict = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        doc = {part: doc}
    return doc, value


@pytest.mark.parametrize("key", sorted(BOUNDS))
def test_each_bound_refuses_just_outside_and_names_the_range(key: str) -> None:
    assert key in _numeric_keys(), f"BOUNDS has a row for {key}, which is no numeric key of the schema"
    bound, number = BOUNDS[key], _numeric_keys()[key]
    high = bound.high() if callable(bound.high) else bound.high
    step = 1 if number is int else max(abs(bound.low), abs(high or 0), 1) * 1e-6
    outside = [bound.low - step] + ([high + step] if high is not None else [])
    if number is float:
        outside += [float("nan"), float("inf")]
    assert _out_of_bounds(key, bound.low) is None
    if high is not None:
        assert _out_of_bounds(key, high) is None
    own_check = _field(key).metadata.get("check")
    for number in outside:
        doc, value = _doc_for(key, number)
        with pytest.raises(BridgeError) as e:
            parse_config(doc, "my.toml")
        msg = str(e.value)
        assert msg.startswith("my.toml: ") and "\n" not in msg
        # The range, or what the key's own check says first (e.g. "a multiple of 0.1 s").
        said = own_check(value) if own_check else None
        assert f"allowed: {bound.text()}" in msg or (said and said in msg), msg


def test_threads_are_bounded_by_this_machines_cores() -> None:
    import os

    cores = os.cpu_count() or 1
    assert parse_config({"model": {"threads": 4 * cores}}).model.threads == 4 * cores
    with pytest.raises(BridgeError) as e:
        parse_config({"model": {"threads": 100000}}, "c.toml")  # only parsed: never tried for real
    assert str(e.value) == (f"c.toml: model.threads = 100000 is out of range; allowed: 0..{4 * cores} "
                            "(4 × cores on this machine; 0 = one per core)")  # fmt: skip


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"input": {"ring_seconds": 1e9}}, "ring_seconds = 1000000000.0 is out of range; allowed: 0.1..60 s"),
        ({"input": {"ring_seconds": 1e-9}}, "ring_seconds = 1e-09 is out of range; allowed: 0.1..60 s"),
        ({"post": {"curve": {"gamma": {"jawOpen": 0.0}}}}, "jawOpen = 0.0 out of range; allowed: 0.1..10"),
        ({"post": {"blink": {"min_interval_s": 5.0, "max_interval_s": 2.0}}},
         "post.blink.max_interval_s = 2.0 must be >= min_interval_s (5.0)"),
        ({"post": {"head": {"saccade_min_s": 5.0, "saccade_max_s": 1.0}}},
         "post.head.saccade_max_s = 1.0 must be >= saccade_min_s (5.0)"),
        ({"output": [{"kind": "console", "range": [0, 100], "send_on_change": True, "threshold": 100}]},
         "output[0].threshold = 100 would never count a change"),
    ],
)  # fmt: skip
def test_ranges_and_checks_across_keys(doc: dict, fragment: str) -> None:
    with pytest.raises(BridgeError) as e:
        parse_config(doc, "my.toml")
    assert str(e.value).startswith("my.toml: ") and fragment in str(e.value), str(e.value)
