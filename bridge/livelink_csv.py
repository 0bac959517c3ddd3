"""Live Link Face CSV recordings: the writer the offline renderer uses, and a reader.

Layout (protocols.md): a header ``Timecode,BlendshapeCount,`` then 61 value
names, and one row per frame: ``HH:MM:SS:FF.fff,61,<61 values>``.  The
timecode's ``FF`` is the frame within the second and ``.fff`` the sub-frame.

Which Left/Right names
----------------------
The Live Link Face app's header lists ``JawRight,JawLeft`` and
``MouthRight,MouthLeft`` where its data (and the UDP packet) has
``JawLeft,JawRight`` and ``MouthLeft,MouthRight``: a labelling bug of the app,
which is why tools that train on these files take the columns by position.
This writer uses the **correct names in UDP order** (Epic's ``EARFaceBlendShape``
order), so a tool that reads by position and one that reads by name both get
the right values.

The reader maps columns by name, case-insensitively (``BlendshapeCount`` or
``BlendShapeCount``, ``JawOpen`` or ``jawOpen``), with one exception: a header
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
from bridge.errors import BridgeError
from bridge.frame import FPS

COUNT_COLUMN = "BlendshapeCount"
VALUE_COUNT = len(LIVELINK_NAMES)  # 61


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


def format_timecode(frame: int, fps: int = FPS, start_seconds: int = 0) -> str:
    """``HH:MM:SS:FF.fff`` of frame ``frame`` (frame 0 at ``start_seconds``)."""
    seconds, ff = divmod(frame, fps)
    seconds += start_seconds
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}:{ff:02d}.000"


def parse_timecode(tc: str, fps: float = FPS) -> float:
    """Seconds since midnight of ``HH:MM:SS:FF.fff`` at ``fps`` (the file does not say its rate)."""
    m = _TIMECODE.match(tc.strip())
    if not m:
        raise ValueError(f"timecode {tc!r} is not HH:MM:SS:FF.fff")
    h, mi, s, ff = (int(g) for g in m.groups()[:4])
    sub = float("0." + m.group(5)) if m.group(5) else 0.0
    return h * 3600 + mi * 60 + s + (ff + sub) / fps


def write_livelink_csv(
    path: str | Path,
    values: np.ndarray,
    head: np.ndarray | None = None,
    *,
    fps: int = FPS,
    start_seconds: int = 0,
    decimals: int = 6,
) -> None:
    """Write frames ``values`` (n x 52, canonical order) and ``head`` (n x 9) as Live Link Face CSV."""
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
        buf.write(format_timecode(k, fps, start_seconds))
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

    @property
    def frames(self) -> int:
        return int(self.values.shape[0])

    def times(self, fps: float = FPS) -> np.ndarray:
        """Seconds of each row from its timecode, relative to the first row."""
        t = np.array([parse_timecode(tc, fps) for tc in self.timecodes])
        return t - t[0] if t.size else t


def read_livelink_csv(
    path: str | Path, app_header: Literal["position", "names"] = "position"
) -> LiveLinkRecording:
    """Read a Live Link Face CSV (the app's or this bridge's); see the module doc for the names."""
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
    return LiveLinkRecording(
        timecodes=timecodes, values=full[:, :NUM_BLENDSHAPES].copy(), head=full[:, NUM_BLENDSHAPES:].copy(),
        header=names, app_header=is_app, missing=missing,
    )  # fmt: skip


__all__ = [
    "APP_HEADER_ORDER", "HEADER", "HEAD_EYE_NAMES", "LiveLinkRecording", "format_timecode",
    "parse_timecode", "read_livelink_csv", "write_livelink_csv",
]  # fmt: skip
