"""``[sync]``: the README's and docs/sync.md's examples parse; bad values are one line each."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import parse_config
from bridge.errors import BridgeError

ROOT = Path(__file__).resolve().parent.parent


def toml_blocks(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [b.split("```")[0] for b in text.split("```toml\n")[1:]]


@pytest.mark.parametrize("doc", ["README.md", "docs/sync.md"])
def test_the_documented_sync_config_parses_as_written(doc: str) -> None:
    import tomllib

    block = next(b for b in toml_blocks(ROOT / doc) if "[sync]" in b)
    sync = parse_config(tomllib.loads(block), doc).sync
    assert sync.passthrough_device == "CABLE Input" and sync.delay_ms == "auto" and sync.receiver_ms == 30


def test_sync_defaults_and_a_fixed_delay() -> None:
    assert parse_config({}).sync.passthrough_device is None  # no passthrough unless asked
    sync = parse_config({"sync": {"passthrough_device": 3, "delay_ms": 250}}).sync
    assert (sync.passthrough_device, sync.delay_ms) == (3, 250.0)


@pytest.mark.parametrize(("table", "says"), [
    ({"delay_ms": -1}, "sync.delay_ms = -1 is out of range; allowed: 0..2000 ms"),
    ({"delay_ms": 2001}, "sync.delay_ms = 2001 is out of range; allowed: 0..2000 ms"),
    ({"delay_ms": "later"}, "sync.delay_ms = 'later' is not allowed; expected a number or 'auto'"),
    ({"receiver_ms": 5000}, "sync.receiver_ms = 5000 is out of range"),
    ({"performer": "bobb"}, "sync.performer = 'bobb' is not a performer"),
    ({"channel": "left"}, "sync.channel = 'left'"),
    ({"delay": 100}, "unknown key sync.delay; did you mean 'delay_ms'?"),
])  # fmt: skip
def test_bad_sync_values_are_one_line(table: dict, says: str) -> None:
    with pytest.raises(BridgeError) as e:
        parse_config({"sync": table}, "s.toml")
    assert says in str(e.value) and "\n" not in str(e.value)
