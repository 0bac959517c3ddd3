"""Live Link Face CSV: our writer, our reader, a plain csv reader, and the app's mislabelled header."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from bridge.blendshapes import ARKIT_NAMES, LIVELINK_NAMES, NUM_BLENDSHAPES, canonical_index
from bridge.errors import BridgeError
from bridge.livelink_csv import (
    APP_HEADER_ORDER,
    HEADER,
    format_timecode,
    parse_timecode,
    read_livelink_csv,
    write_livelink_csv,
)


def sample(n: int = 95) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.random((n, NUM_BLENDSHAPES)).astype(np.float32), (rng.random((n, 9)) - 0.5).astype(np.float32)


def test_timecodes() -> None:
    assert format_timecode(0) == "00:00:00:00.000"
    assert format_timecode(29) == "00:00:00:29.000"
    assert format_timecode(30) == "00:00:01:00.000"
    assert format_timecode(3600 * 30 + 61 * 30 + 7) == "01:01:01:07.000"
    assert parse_timecode("00:00:01:15.000") == pytest.approx(1.5)
    assert parse_timecode("19:17:23:30.429", fps=60) == pytest.approx(19 * 3600 + 17 * 60 + 23 + 30.429 / 60)
    with pytest.raises(ValueError):
        parse_timecode("1.5")


def test_round_trip_and_plain_csv_reader(tmp_path: Path) -> None:
    values, head = sample()
    path = tmp_path / "take.csv"
    write_livelink_csv(path, values, head)
    # A plain csv reader: header, then one row per 1/30 s with 61 values.
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Timecode", "BlendshapeCount", *LIVELINK_NAMES] == list(HEADER)
    assert rows[0][2 + 15 : 2 + 17] == ["JawLeft", "JawRight"]  # correct names, UDP order
    assert len(rows) == 1 + values.shape[0]
    for k, row in enumerate(rows[1:]):
        assert len(row) == 63 and row[1] == "61"
        assert row[0] == format_timecode(k)
        assert float(row[2 + 17]) == pytest.approx(values[k, canonical_index("jawOpen")], abs=1e-6)
    # Our reader: by name, into canonical order.
    rec = read_livelink_csv(path)
    assert rec.frames == values.shape[0] and not rec.app_header and rec.missing == []
    np.testing.assert_allclose(rec.values, values, atol=1e-6)
    np.testing.assert_allclose(rec.head, head, atol=1e-6)
    np.testing.assert_allclose(np.diff(rec.times()), 1 / 30, atol=1e-9)


def write_app_style(path: Path, values: np.ndarray, count_col: str = "BlendShapeCount") -> None:
    """A file as the Live Link Face app writes it: swapped labels, data in UDP order."""
    lines = [",".join(["Timecode", count_col, *APP_HEADER_ORDER])]
    for k, v in enumerate(values):
        full = list(v) + [0.0] * 9
        lines.append(",".join([f"10:00:00:{k:02d}.000", "61", *(f"{x:.6f}" for x in full)]))
    path.write_text("\n".join(lines) + "\n")


def test_app_header_is_read_by_position_by_default(tmp_path: Path) -> None:
    values, _ = sample(10)
    path = tmp_path / "app.csv"
    write_app_style(path, values)
    rec = read_livelink_csv(path)
    assert rec.app_header
    np.testing.assert_allclose(rec.values, values, atol=1e-6)  # JawLeft is JawLeft
    trusted = read_livelink_csv(path, app_header="names")
    jl, jr = canonical_index("jawLeft"), canonical_index("jawRight")
    ml, mr = canonical_index("mouthLeft"), canonical_index("mouthRight")
    np.testing.assert_allclose(trusted.values[:, [jl, jr, ml, mr]], values[:, [jr, jl, mr, ml]], atol=1e-6)


def test_reader_maps_by_name_in_any_order_and_case(tmp_path: Path) -> None:
    values, _ = sample(4)
    order = list(reversed(ARKIT_NAMES))  # lowerCamel, reversed, no head columns
    lines = [",".join(["timecode", "blendshapecount", *order, ""])]  # trailing comma too
    for k, v in enumerate(values):
        lines.append(
            ",".join([format_timecode(k), "52", *(f"{v[ARKIT_NAMES.index(n)]:.6f}" for n in order), ""])
        )
    path = tmp_path / "other.csv"
    path.write_text("\n".join(lines) + "\n")
    rec = read_livelink_csv(path)
    np.testing.assert_allclose(rec.values, values, atol=1e-6)
    assert rec.missing == list(LIVELINK_NAMES[52:]) and (rec.head == 0).all()


def test_reader_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Timecode,BlendshapeCount,JawOpn\n00:00:00:00.000,1,0.5\n")
    with pytest.raises(BridgeError, match="unknown column 'JawOpn'; closest: JawOpen"):
        read_livelink_csv(bad)
    bad.write_text("time,value\n")
    with pytest.raises(BridgeError, match="Timecode,BlendshapeCount"):
        read_livelink_csv(bad)
    bad.write_text("Timecode,BlendshapeCount,JawOpen\n00:00:00:00.000,1,abc\n")
    with pytest.raises(BridgeError, match="row 2"):
        read_livelink_csv(bad)
    with pytest.raises(BridgeError, match="cannot read"):
        read_livelink_csv(tmp_path / "missing.csv")
