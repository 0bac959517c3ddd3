"""Wall-clock time for frames: monotonic capture times as Unix time and as time of day.

``FaceFrame.capture_time`` is ``time.monotonic()``: it never steps, which latency needs.
Receivers that line frames up with other recordings want the wall clock instead (Live
Link system timecode, wall-clock capture times in latency reports).  One offset
(Unix minus monotonic), taken once at start, maps one to the other: nothing per frame
calls ``time.time()``, and the frames of a run stay evenly spaced even if NTP steps the
system clock mid-run (the step shows from the next start on).

Time of day is local (the phone app's NTP timecode is local time of day, as is a
recorder's): ``seconds_since_midnight`` asks the C library once per whole second and
adds the fraction, so midnight and daylight-saving changes land on the second they happen.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, tzinfo

SECONDS_PER_DAY = 86_400


def measure_offset(samples: int = 5) -> float:
    """Unix time minus ``time.monotonic()``, from the tightest of ``samples`` readings."""
    best_gap, offset = math.inf, 0.0
    for _ in range(max(1, samples)):
        m0 = time.monotonic()
        wall = time.time()
        m1 = time.monotonic()
        if m1 - m0 < best_gap:
            best_gap, offset = m1 - m0, wall - (m0 + m1) / 2
    return offset


def seconds_since_midnight(unix: float, tz: tzinfo | None = None) -> float:
    """Seconds since the last local midnight (``tz``: another zone, e.g. for tests), 0 <= s < 86400."""
    whole = math.floor(unix)
    if tz is None:
        t = time.localtime(whole)
        hour, minute, second = t.tm_hour, t.tm_min, t.tm_sec
    else:
        d = datetime.fromtimestamp(whole, tz)
        hour, minute, second = d.hour, d.minute, d.second
    return hour * 3600 + minute * 60 + min(second, 59) + (unix - whole)


def frames_of_day(seconds_of_day: float, fps: int = 30) -> tuple[int, float]:
    """``(frame, sub-frame)`` of a time of day at ``fps``: frames since midnight, the fraction.

    Wraps at midnight: the last frame of a day is ``86400 * fps - 1``, then 0.
    """
    x = seconds_of_day * fps
    frame = math.floor(x + 1e-9)  # k / 30 s sums land on their frame, not a hair before it
    sub = max(x - frame, 0.0)
    return frame % (SECONDS_PER_DAY * fps), sub


def format_time_of_day(seconds_of_day: float, fps: int = 30) -> str:
    """``HH:MM:SS:FF.fff`` of a time of day, frames counted at ``fps`` (wraps at midnight)."""
    frame, sub = frames_of_day(seconds_of_day, fps)
    seconds, ff = divmod(frame, fps)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}:{ff:02d}.{min(int(sub * 1000 + 1e-6), 999):03d}"


class WallClock:
    """Monotonic times -> Unix time and local time of day, with one offset for the whole run.

    ``offset`` None measures it now; ``tz`` None is the machine's local zone.  The
    time-of-day lookup is cached per whole second, so the per-frame cost is arithmetic.
    """

    __slots__ = ("offset", "tz", "_second", "_second_of_day")

    def __init__(self, offset: float | None = None, tz: tzinfo | None = None) -> None:
        self.offset = measure_offset() if offset is None else float(offset)
        self.tz = tz
        self._second = -1
        self._second_of_day = 0.0

    def monotonic_to_unix(self, t: float) -> float:
        """The Unix time of monotonic time ``t`` (``time.monotonic()`` of this process)."""
        return t + self.offset

    def seconds_of_day(self, unix: float) -> float:
        """Local seconds since midnight of Unix time ``unix``."""
        whole = math.floor(unix)
        if whole != self._second:
            self._second_of_day = seconds_since_midnight(whole, self.tz)
            self._second = whole
        return self._second_of_day + (unix - whole)

    def time_of_day_frames(self, t: float, fps: int = 30) -> tuple[int, float]:
        """``(frames since local midnight, sub-frame)`` at ``fps`` of monotonic time ``t``."""
        return frames_of_day(self.seconds_of_day(t + self.offset), fps)


_shared: WallClock | None = None


def wall_clock() -> WallClock:
    """The process's clock: its offset is taken on first use, so every output (and every
    report) of a run maps capture times to the wall clock the same way."""
    global _shared
    if _shared is None:
        _shared = WallClock()
    return _shared


def wall_time(monotonic: float) -> float:
    """Unix seconds of a ``time.monotonic()`` stamp, with the run's one offset (:func:`wall_clock`)."""
    return monotonic + wall_clock().offset
