"""When a recording started, as a time of day: the start of an offline render's timecode.

``a2e-bridge offline --timecode system`` stamps the CSV with the time of day the file's
first sample was recorded, so the rows line up with the audio (and anything else
recorded then) on Unreal's or an editor's timeline:

* a Broadcast Wave file says it: its ``bext`` chunk's TimeReference counts samples
  since midnight (EBU Tech 3285), what field recorders write;
* otherwise the file's modification time minus its duration (a recorder writes the
  file until the recording ends), in local time.

``--timecode HH:MM:SS[.fff]`` gives the start by hand; ``stream`` (the default) starts at
00:00:00.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

from bridge.clock import SECONDS_PER_DAY, seconds_since_midnight
from bridge.errors import BridgeError

#: Byte offset of TimeReference (uint64, little-endian) in a ``bext`` chunk's data.
BEXT_TIME_REFERENCE_AT = 256 + 32 + 32 + 10 + 8
_TIME_OF_DAY = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})(\.\d+)?$")


def parse_time_of_day(text: str) -> float:
    """Seconds since midnight of ``HH:MM:SS[.fff]``; a one-line error otherwise."""
    m = _TIME_OF_DAY.match(text.strip())
    if m:
        h, mi, s = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if h < 24 and mi < 60 and s < 60:
            return h * 3600 + mi * 60 + s + (float(m.group(4)) if m.group(4) else 0.0)
    raise BridgeError(
        f"--timecode {text!r}: allowed stream, system or a start time HH:MM:SS[.fff] (e.g. 14:03:07.250)"
    )


def bext_time_reference(path: str | Path) -> float | None:
    """Seconds since midnight of a Broadcast Wave file's first sample, or None (no ``bext``,
    not a RIFF/WAVE file, or unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            rate = None
            reference = None
            while rate is None or reference is None:
                chunk = f.read(8)
                if len(chunk) < 8:
                    break
                cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"fmt " and size >= 8:
                    rate = struct.unpack("<I", f.read(8)[4:8])[0]
                    f.seek(size - 8 + (size & 1), os.SEEK_CUR)
                elif cid == b"bext" and size >= BEXT_TIME_REFERENCE_AT + 8:
                    data = f.read(BEXT_TIME_REFERENCE_AT + 8)
                    reference = struct.unpack("<Q", data[BEXT_TIME_REFERENCE_AT:])[0]
                    f.seek(size - len(data) + (size & 1), os.SEEK_CUR)
                else:
                    f.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None
    if not rate or reference is None:
        return None
    return (reference / rate) % SECONDS_PER_DAY


def file_start_time_of_day(path: str | Path, duration_s: float) -> tuple[float, str]:
    """(seconds since local midnight of the file's first sample, where that came from)."""
    bext = bext_time_reference(path)
    if bext is not None:
        return bext, "the file's bext TimeReference"
    try:
        mtime = os.stat(path).st_mtime
    except OSError as e:
        raise BridgeError(f"cannot read the time of {path}: {e.strerror or e}") from None
    return seconds_since_midnight(mtime - duration_s), "the file's modification time minus its duration"
