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
    detect_timecode_fps,
    format_timecode,
    parse_timecode,
    read_livelink_csv,
    write_livelink_csv,
)


def sample(n: int = 95) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.random((n, NUM_BLENDSHAPES)).astype(np.float32), (rng.random((n, 9)) - 0.5).astype(np.float32)


def test_timecodes() -> None:
    # The app's convention: rows every 1/30 s, frames counted at 60 fps, so FF steps by 2.
    assert format_timecode(0) == "00:00:00:00.000"
    assert format_timecode(1) == "00:00:00:02.000"
    assert format_timecode(29) == "00:00:00:58.000"
    assert format_timecode(30) == "00:00:01:00.000"
    assert format_timecode(3600 * 30 + 61 * 30 + 7) == "01:01:01:14.000"
    assert format_timecode(29, 30) == "00:00:00:29.000"
    assert format_timecode(3600 * 30 + 61 * 30 + 7, 30) == "01:01:01:07.000"
    assert format_timecode(1, 24) == "00:00:00:00.800"  # 1/30 s is 0.8 of a 24 fps frame
    assert format_timecode(30, 60, start_seconds=12 * 3600) == "12:00:01:00.000"
    assert parse_timecode("00:00:01:15.000", fps=30) == pytest.approx(1.5)
    assert parse_timecode("00:00:01:15.000") == pytest.approx(1.25)  # 60 fps unless told
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
    assert rows[0] == ["Timecode", "BlendShapeCount", *LIVELINK_NAMES] == list(HEADER)
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
    assert rec.timecode_fps == 60
    np.testing.assert_allclose(np.diff(rec.times()), 1 / 30, atol=1e-9)
    # At 30 fps timecodes (one frame number per row) the reader finds 30 fps by itself.
    write_livelink_csv(path, values, head, timecode_fps=30)
    with path.open(newline="") as f:
        assert [r[0] for r in csv.reader(f)][1:4] == ["00:00:00:00.000", "00:00:00:01.000", "00:00:00:02.000"]
    rec30 = read_livelink_csv(path)
    assert rec30.timecode_fps == 30
    np.testing.assert_allclose(np.diff(rec30.times()), 1 / 30, atol=1e-9)
    np.testing.assert_allclose(rec30.values, values, atol=1e-6)


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
    bad.write_text("Timecode,BlendShapeCount,JawOpn\n00:00:00:00.000,1,0.5\n")
    with pytest.raises(BridgeError, match="unknown column 'JawOpn'; closest: JawOpen"):
        read_livelink_csv(bad)
    bad.write_text("time,value\n")
    with pytest.raises(BridgeError, match="Timecode,BlendShapeCount"):
        read_livelink_csv(bad)
    bad.write_text("Timecode,BlendshapeCount,JawOpen\n00:00:00:00.000,1,abc\n")
    with pytest.raises(BridgeError, match="row 2"):
        read_livelink_csv(bad)
    with pytest.raises(BridgeError, match="cannot read"):
        read_livelink_csv(tmp_path / "missing.csv")


# --- the app's exact format and a reader built for it ----------------------------------


def app_timecodes(n: int, start: str = "12:27:47:47.169") -> list[str]:
    """Timecodes as the app writes them (receivers.md): time of day at 60 fps, one row per
    1/30 s, so the frame field steps by 2 and keeps the app's sub-frame fraction."""
    h, m, s, rest = start.split(":")
    ff, frac = rest.split(".")
    base = (int(h) * 3600 + int(m) * 60 + int(s)) * 60 + int(ff)
    out = []
    for k in range(n):
        ticks = base + 2 * k
        secs, f = divmod(ticks, 60)
        out.append(f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}:{f:02d}.{frac}")
    return out


def write_app_file(
    path: Path, values: np.ndarray, head: np.ndarray, count_col: str = "BlendShapeCount"
) -> None:
    """A recording exactly as the app writes it: its header (its spelling, its Left/Right
    labels) and its timecodes, data in UDP order."""
    lines = [",".join(["Timecode", count_col, *APP_HEADER_ORDER])]
    for tc, v, h in zip(app_timecodes(len(values)), values, head, strict=True):
        lines.append(",".join([tc, "61", *(f"{x:.10f}" for x in [*v, *h])]))
    path.write_text("\n".join(lines) + "\n")


def public_reader(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A CSV reader as public ones made for app files do it (receivers.md): drop the column
    named exactly ``BlendShapeCount``, read the timecode at 60 fps, every other column a
    value by its header name."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    keep = [i for i, name in enumerate(header) if name not in ("Timecode", "BlendShapeCount")]
    times = []
    for r in rows[1:]:
        hh, mm, ss, fr = r[0].split(":")
        times.append(int(hh) * 3600 + int(mm) * 60 + int(ss) + float(fr) / 60)
    columns = {header[i]: np.array([float(r[i]) for r in rows[1:]]) for i in keep}
    return np.array(times) - times[0], columns


def test_app_recording_reads_forward_in_time_with_both_spellings(tmp_path: Path) -> None:
    values, head = sample(75)  # 2.5 s from 12:27:47.78: crosses three second boundaries
    tcs = app_timecodes(4)
    assert tcs == ["12:27:47:47.169", "12:27:47:49.169", "12:27:47:51.169", "12:27:47:53.169"]
    assert app_timecodes(8)[-2:] == ["12:27:47:59.169", "12:27:48:01.169"]
    for spelling in ("BlendShapeCount", "BlendshapeCount"):
        path = tmp_path / f"{spelling}.csv"
        write_app_file(path, values, head, spelling)
        rec = read_livelink_csv(path)
        assert rec.app_header and rec.timecode_fps == 60 and rec.frames == 75
        np.testing.assert_allclose(np.diff(rec.times()), 1 / 30, atol=1e-9)  # never backwards
        np.testing.assert_allclose(rec.values, values, atol=1e-6)
        np.testing.assert_allclose(rec.head, head, atol=1e-6)
        # What reading it at 30 fps (the reader's old assumption) did: back in time each second.
        assert (np.diff(rec.times(30)) < 0).sum() == 3
    # Forcing a rate still works.
    assert read_livelink_csv(tmp_path / "BlendShapeCount.csv", timecode_fps=30).timecode_fps == 30


def test_our_csv_reads_like_the_apps_in_a_reader_made_for_app_files(tmp_path: Path) -> None:
    values, head = sample(75)
    ours, app = tmp_path / "ours.csv", tmp_path / "app.csv"
    write_livelink_csv(ours, values, head)
    write_app_file(app, values, head)
    for path in (ours, app):
        with path.open(newline="") as f:
            assert next(csv.reader(f))[:2] == ["Timecode", "BlendShapeCount"]
    t_ours, cols_ours = public_reader(ours)
    t_app, cols_app = public_reader(app)
    assert "BlendShapeCount" not in cols_ours and len(cols_ours) == 61  # the count column dropped
    np.testing.assert_allclose(t_ours, np.arange(75) / 30, atol=1e-9)
    np.testing.assert_allclose(t_app, np.arange(75) / 30, atol=1e-9)
    for name in ("JawOpen", "EyeBlinkLeft", "MouthSmileRight", "TongueOut", "HeadYaw", "RightEyeRoll"):
        np.testing.assert_allclose(cols_ours[name], cols_app[name], atol=1e-6)


def test_timecode_rate_detection() -> None:
    assert detect_timecode_fps(app_timecodes(90)) == 60
    assert detect_timecode_fps(app_timecodes(5)) == 60  # within one second: steps of 2 at 30 rows/s
    assert detect_timecode_fps([format_timecode(k, 30) for k in range(5)]) == 30
    assert detect_timecode_fps([format_timecode(k, 30) for k in range(95)]) == 30
    assert detect_timecode_fps([format_timecode(k, 24) for k in range(60)]) == 24
    assert detect_timecode_fps([format_timecode(k, 25) for k in range(60)]) == 25
    assert detect_timecode_fps(["10:00:00:05.000"]) == 60 and detect_timecode_fps([]) == 60
    with pytest.raises(ValueError, match="frame field 76 is too large"):
        detect_timecode_fps(["10:00:00:75.000", "10:00:00:76.000"])


def test_odd_timecodes_still_read_values(tmp_path: Path) -> None:
    path = tmp_path / "odd.csv"
    path.write_text("Timecode,BlendShapeCount,JawOpen\n12:00:00;01,1,0.5\n12:00:00;02,1,0.25\n")
    rec = read_livelink_csv(path)  # drop-frame style separators: values fine, rate the app's
    assert rec.timecode_fps == 60 and rec.values[:, canonical_index("jawOpen")].tolist() == [0.5, 0.25]
    with pytest.raises(ValueError, match="is not HH:MM:SS:FF.fff"):
        rec.times()
