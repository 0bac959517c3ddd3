"""Live Link Face CSV recordings: the writer the offline renderer uses, and a reader.

Layout (the app's, receivers.md): a header ``Timecode,BlendShapeCount,`` then 61
value names, and one row per frame: ``HH:MM:SS:FF.fff,61,<61 values>``.  The
timecode's ``FF`` is the frame within the second and ``.fff`` the sub-frame.

Timecode rate
-------------
The app's timecode counts frames at **60 fps** while its rows come every 1/30 s, so
the frame field steps by 2 (``12:27:47:47.169``, ``12:27:47:49.169``, ...), and
readers made for app files assume that rate.  The writer follows the app by default
(``timecode_fps = 60``; 30 gives one frame number per row).  A file does not state
its rate, so the reader infers it from the timecodes (:func:`detect_timecode_fps`):
the rate at which time never runs backwards and the rows are evenly spaced.

Which Left/Right names
----------------------
The Live Link Face app's header lists ``JawRight,JawLeft`` and
``MouthRight,MouthLeft`` where its data (and the UDP packet) has
``JawLeft,JawRight`` and ``MouthLeft,MouthRight``: a labelling bug of the app,
which is why tools that train on these files take the columns by position.
This writer uses the **correct names in UDP order** (Epic's ``EARFaceBlendShape``
order), so a tool that reads by position and one that reads by name both get
the right values.

The writer spells the count column ``BlendShapeCount`` as the app does (public
readers drop that column by that exact name).  The reader maps columns by name,
case-insensitively (``BlendShapeCount`` or ``BlendshapeCount``, ``JawOpen`` or
``jawOpen``), with one exception: a header
that is exactly the app's (UDP order with those two pairs swapped) is the
labelling bug, and those four columns are taken by position (``app_header =
"position"``, the default); ``app_header = "names"`` trusts the labels instead.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from bridge.blendshapes import HEAD_EYE_NAMES, LIVELINK_NAMES, NUM_BLENDSHAPES
from bridge.clock import format_time_of_day
from bridge.errors import BridgeError
from bridge.frame import FPS

COUNT_COLUMN = "BlendShapeCount"
VALUE_COUNT = len(LIVELINK_NAMES)  # 61
#: The app's timecode rate: frames counted at 60 fps (rows still come every 1/30 s).
APP_TIMECODE_FPS = 60
#: Timecode rates the reader considers (film, PAL, NTSC-ish whole rates and their doubles).
TIMECODE_RATES = (24, 25, 30, 48, 50, 60)


def _app_order() -> tuple[str, ...]:
    """The app's header order: UDP order with JawLeft/JawRight and MouthLeft/MouthRight swapped."""
    names = list(LIVELINK_NAMES)
    for a, b in (("JawLeft", "JawRight"), ("MouthLeft", "MouthRight")):
        i, j = names.index(a), names.index(b)
        names[i], names[j] = names[j], names[i]
    return tuple(names)


#: The header the Live Link Face app writes (mislabelled: the data is in UDP order).
APP_HEADER_ORDER = _app_order()
#: The header this module writes: correct names, UDP order.
HEADER = ("Timecode", COUNT_COLUMN, *LIVELINK_NAMES)

_TIMECODE = re.compile(r"^(\d+):(\d{2}):(\d{2}):(\d+)(?:\.(\d+))?$")


def format_timecode(row: int, timecode_fps: int = APP_TIMECODE_FPS, start_seconds: int = 0) -> str:
    """``HH:MM:SS:FF.fff`` of row ``row``: rows are 1/30 s apart (row 0 at ``start_seconds``),
    ``FF`` counts frames at ``timecode_fps`` and ``.fff`` is the fraction of a frame."""
    if timecode_fps <= 0:
        raise ValueError(f"timecode_fps must be > 0, got {timecode_fps}")
    ticks, rem = divmod(row * timecode_fps, FPS)  # whole timecode frames; rem / FPS of one more
    seconds, ff = divmod(ticks, timecode_fps)
    seconds += start_seconds
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}:{ff:02d}.{rem * 1000 // FPS:03d}"


def _split_timecode(tc: str) -> tuple[int, int, float]:
    """(whole seconds, frame field, sub-frame fraction) of ``HH:MM:SS:FF.fff``."""
    m = _TIMECODE.match(tc.strip())
    if not m:
        raise ValueError(f"timecode {tc!r} is not HH:MM:SS:FF.fff")
    h, mi, s, ff = (int(g) for g in m.groups()[:4])
    sub = float("0." + m.group(5)) if m.group(5) else 0.0
    return h * 3600 + mi * 60 + s, ff, sub


def parse_timecode(tc: str, fps: float = APP_TIMECODE_FPS) -> float:
    """Seconds since midnight of ``HH:MM:SS:FF.fff`` with frames counted at ``fps``."""
    seconds, ff, sub = _split_timecode(tc)
    return seconds + (ff + sub) / fps


def detect_timecode_fps(timecodes: list[str]) -> int:
    """The timecode rate of a recording, inferred from its timecodes (files do not say it).

    Candidates are the :data:`TIMECODE_RATES` above the largest frame field.  Read at the
    wrong rate, time jumps back at every second boundary (an app file read at 30 fps) or
    the rows are unevenly spaced; so the rate with the fewest backward steps, then the
    most even spacing wins.  What is left (a file within one second) is decided by the
    spacing closest to the rows' 1/30 s; a single row gives the app's 60.
    """
    parts = [_split_timecode(tc) for tc in timecodes]
    if not parts:
        return APP_TIMECODE_FPS
    top = max(ff for _, ff, _ in parts)
    candidates = [r for r in TIMECODE_RATES if r > top]
    if not candidates:
        raise ValueError(
            f"frame field {top} is too large for a timecode rate of {max(TIMECODE_RATES)} fps or less"
        )
    if len(parts) < 2:
        return APP_TIMECODE_FPS if APP_TIMECODE_FPS in candidates else candidates[0]
    seconds = np.array([p[0] for p in parts], dtype=np.float64)
    frames = np.array([p[1] + p[2] for p in parts], dtype=np.float64)

    def score(rate: int) -> tuple[int, float, float]:
        steps = np.diff(seconds + frames / rate)
        backwards = int((steps < 0).sum())
        spread = round(float(steps.max() - steps.min()), 6)
        return backwards, spread, abs(float(np.median(steps)) - 1.0 / FPS)

    return min(candidates, key=score)


def write_livelink_csv(
    path: str | Path,
    values: np.ndarray,
    head: np.ndarray | None = None,
    *,
    timecode_fps: int = APP_TIMECODE_FPS,
    start_seconds: int = 0,
    decimals: int = 6,
    start_time_of_day: float | None = None,
) -> None:
    """Write frames ``values`` (n x 52, canonical order) and ``head`` (n x 9) as Live Link Face
    CSV, one row per frame (1/30 s), timecodes counted at ``timecode_fps`` (the app's 60).

    ``start_time_of_day`` (seconds since midnight, any fraction) puts row 0 there, as the
    app's rows carry the time of day (wrapping at midnight); else row 0 is ``start_seconds``."""
    n = values.shape[0]
    if values.shape[1:] != (NUM_BLENDSHAPES,):
        raise ValueError(f"values must be (n, {NUM_BLENDSHAPES}), got {values.shape}")
    full = np.zeros((n, VALUE_COUNT), dtype=np.float64)
    full[:, :NUM_BLENDSHAPES] = values
    if head is not None:
        full[:, NUM_BLENDSHAPES:] = head
    buf = io.StringIO()
    buf.write(",".join(HEADER) + "\n")
    fmt = f"%.{decimals}f"
    for k in range(n):
        if start_time_of_day is None:
            buf.write(format_timecode(k, timecode_fps, start_seconds))
        else:
            buf.write(format_time_of_day(start_time_of_day + k / FPS, timecode_fps))
        buf.write(f",{VALUE_COUNT},")
        buf.write(",".join(fmt % v for v in full[k]))
        buf.write("\n")
    try:
        Path(path).write_text(buf.getvalue(), encoding="utf-8", newline="")
    except OSError as e:
        raise BridgeError(f"cannot write {path}: {e.strerror or e}") from None


@dataclass(slots=True)
class LiveLinkRecording:
    """A CSV recording read back: values in the bridge's canonical order."""

    timecodes: list[str]
    values: np.ndarray  #: float32 (n, 52), canonical (Epic) order
    head: np.ndarray  #: float32 (n, 9): HeadYaw .. RightEyeRoll (degrees / 180)
    header: tuple[str, ...]  #: the value names as the file spells them
    app_header: bool = False  #: the header was the app's mislabelled one
    missing: list[str] = field(default_factory=list)  #: Live Link names the file lacks (read as 0)
    timecode_fps: int = APP_TIMECODE_FPS  #: the timecodes' frame rate (inferred, or as given)

    @property
    def frames(self) -> int:
        return int(self.values.shape[0])

    def times(self, fps: float | None = None) -> np.ndarray:
        """Seconds of each row from its timecode (at ``fps``, default the file's rate),
        relative to the first row."""
        rate = self.timecode_fps if fps is None else fps
        t = np.array([parse_timecode(tc, rate) for tc in self.timecodes])
        return t - t[0] if t.size else t


def read_livelink_csv(
    path: str | Path,
    app_header: Literal["position", "names"] = "position",
    timecode_fps: int | None = None,
) -> LiveLinkRecording:
    """Read a Live Link Face CSV (the app's or this bridge's); see the module doc for the names.
    ``timecode_fps`` None infers the timecode rate from the file (:func:`detect_timecode_fps`;
    the app's 60 when the timecodes are not ``HH:MM:SS:FF.fff``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise BridgeError(f"cannot read Live Link CSV {p}: {getattr(e, 'strerror', None) or e}") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise BridgeError(f"{p} is empty; expected a Live Link Face CSV header")
    header = [h.strip() for h in rows[0]]
    while header and header[-1] == "":
        header.pop()
    if len(header) < 3 or header[0].lower() != "timecode" or header[1].lower() != COUNT_COLUMN.lower():
        raise BridgeError(
            f"{p}: header starts {','.join(header[:2])!r}; a Live Link Face CSV starts "
            f"'Timecode,{COUNT_COLUMN}' (any case)"
        )
    names = tuple(header[2:])
    folded = [n.lower() for n in names]
    is_app = folded == [n.lower() for n in APP_HEADER_ORDER]
    known = {n.lower(): i for i, n in enumerate(LIVELINK_NAMES)}
    if is_app and app_header == "position":
        columns = list(range(VALUE_COUNT))  # the app's data is in UDP order whatever its labels say
    else:
        columns = []
        for n in names:
            if n.lower() not in known:
                close = difflib.get_close_matches(n, LIVELINK_NAMES, n=3)
                hint = f"; closest: {', '.join(close)}" if close else ""
                raise BridgeError(f"{p}: unknown column {n!r}{hint}")
            columns.append(known[n.lower()])
        if len(set(columns)) != len(columns):
            raise BridgeError(f"{p}: a value column appears twice in the header")
    missing = [LIVELINK_NAMES[i] for i in range(VALUE_COUNT) if i not in set(columns)]
    data = [r for r in rows[1:] if r and any(c.strip() for c in r)]
    full = np.zeros((len(data), VALUE_COUNT), dtype=np.float32)
    timecodes: list[str] = []
    for i, r in enumerate(data):
        cells = r[: 2 + len(names)]
        if len(cells) < 2 + len(names):
            raise BridgeError(f"{p}: row {i + 2} has {len(r)} fields; the header has {len(header)}")
        timecodes.append(cells[0].strip())
        try:
            full[i, columns] = [float(c) for c in cells[2:]]
        except ValueError:
            raise BridgeError(f"{p}: row {i + 2} has a value that is not a number") from None
    if timecode_fps is None:
        try:
            timecode_fps = detect_timecode_fps(timecodes)
        except ValueError:  # odd timecodes: the values still read; times() says what is wrong
            timecode_fps = APP_TIMECODE_FPS
    return LiveLinkRecording(
        timecodes=timecodes, values=full[:, :NUM_BLENDSHAPES].copy(), head=full[:, NUM_BLENDSHAPES:].copy(),
        header=names, app_header=is_app, missing=missing, timecode_fps=timecode_fps,
    )  # fmt: skip


__all__ = [
    "APP_HEADER_ORDER", "APP_TIMECODE_FPS", "HEADER", "HEAD_EYE_NAMES", "LiveLinkRecording",
    "detect_timecode_fps", "format_timecode", "parse_timecode", "read_livelink_csv", "write_livelink_csv",
]  # fmt: skip
