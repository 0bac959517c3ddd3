"""Procedural head motion and eye saccades for the Live Link head/eye values (52..60).

An audio model moves the face but never the head or the eyes, and a receiver that expects
them (a MetaHuman through Live Link) looks frozen with all nine at zero.  This stage adds
what people do while they talk: the head drifts a few degrees on slow, smooth noise whose
amplitude follows speech energy (a still head in silence, livelier when speaking), and both
eyes jump together to a new fixation every 0.5-3 s.

* Head: per axis, two octaves of cosine-interpolated value noise (bounded to +-1, smooth,
  a knot every ``period_s`` and every ``period_s / 2.7``), times the axis amplitude, times
  ``idle + (1 - idle) * envelope``.  The envelope follows the frame RMS mapped from
  ``silence_db`` .. ``speech_db`` to 0..1, with ``attack_s`` / ``release_s`` time constants.
* Eyes: a saccade every ``saccade_min_s`` .. ``saccade_max_s`` (uniform), to a uniform
  point within +-``saccade_yaw_deg`` / +-``saccade_pitch_deg``; both eyes get the same
  angles, eye roll stays 0; between saccades the eyes hold still.
* Values are written in Live Link units, degrees / 180.  Deterministic for a ``seed``: the
  noise is a function of the frame number, the saccade schedule of the frames seen, so the
  same input gives the same output however the frames are split into blocks.

Causal, no look-ahead: adds 0 frames of delay.  Off by default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from bridge.errors import BridgeError
from bridge.frame import FPS
from bridge.post.base import FrameContext

#: Column of each value in ``ctx.head`` (Live Link order 52..60).
HEAD_YAW, HEAD_PITCH, HEAD_ROLL = 0, 1, 2
LEFT_EYE_YAW, LEFT_EYE_PITCH, LEFT_EYE_ROLL = 3, 4, 5
RIGHT_EYE_YAW, RIGHT_EYE_PITCH, RIGHT_EYE_ROLL = 6, 7, 8

#: The second noise octave's knots are this many times closer together.
_OCTAVE_RATIO = 2.7
_OCTAVE_WEIGHTS = (2 / 3, 1 / 3)  # sum 1: the noise stays within +-1


def _f(default: Any, doc: str, check: Callable[[Any], bool] | None = None, why: str = "") -> Any:
    """A field with the ``check``/``doc`` metadata bridge.config's parser reads."""
    problem = (lambda v: None if check(v) else why) if check else None
    return field(default=default, metadata={"check": problem, "doc": doc})


def _ge0(v: float) -> bool:
    return v >= 0


def _gt0(v: float) -> bool:
    return v > 0


@dataclass(frozen=True, slots=True)
class HeadMotionConfig:
    """Settings of :class:`HeadMotion` (``[post.head]``); angles in degrees, times in seconds."""

    enabled: bool = _f(False, "add head motion and eye saccades (Live Link values 52..60)")
    seed: int = _f(0, "random seed: same seed, same motion", _ge0, "must be >= 0")
    yaw_deg: float = _f(3.0, "head yaw amplitude while speaking", _ge0, "must be >= 0")
    pitch_deg: float = _f(2.0, "head pitch amplitude while speaking", _ge0, "must be >= 0")
    roll_deg: float = _f(1.5, "head roll amplitude while speaking", _ge0, "must be >= 0")
    period_s: float = _f(2.5, "seconds between the slow noise knots", _gt0, "must be > 0")
    idle: float = _f(0.35, "share of the amplitude kept in silence", lambda v: 0 <= v <= 1, "must be 0..1")
    silence_db: float = _f(-50.0, "frame RMS (dBFS) that counts as silence")
    speech_db: float = _f(-26.0, "frame RMS (dBFS) of full speech (> silence_db)")
    attack_s: float = _f(0.25, "envelope rise time constant", _gt0, "must be > 0")
    release_s: float = _f(1.0, "envelope fall time constant", _gt0, "must be > 0")
    saccades: bool = _f(True, "move both eyes in saccades")
    saccade_yaw_deg: float = _f(4.0, "largest eye yaw of a fixation", _ge0, "must be >= 0")
    saccade_pitch_deg: float = _f(2.5, "largest eye pitch of a fixation", _ge0, "must be >= 0")
    saccade_min_s: float = _f(0.5, "shortest time between saccades", _gt0, "must be > 0")
    saccade_max_s: float = _f(3.0, "longest time between saccades (>= saccade_min_s)", _gt0, "must be > 0")

    def __post_init__(self) -> None:
        for f in fields(self):
            check = f.metadata.get("check")
            value = getattr(self, f.name)
            problem = check(value) if check else None
            if problem:
                raise BridgeError(f"post.head.{f.name} = {value!r} {problem}")
        if self.saccade_max_s < self.saccade_min_s:
            raise BridgeError(
                f"post.head.saccade_max_s = {self.saccade_max_s!r} must be >= saccade_min_s "
                f"({self.saccade_min_s!r}); raise saccade_max_s or lower saccade_min_s"
            )
        if self.speech_db <= self.silence_db:
            raise BridgeError(
                f"post.head.speech_db = {self.speech_db!r} must be above silence_db ({self.silence_db!r})"
            )


class _ValueNoise:
    """Smooth, bounded (+-1) noise of the frame number: cosine-interpolated random knots."""

    def __init__(self, seed: int, channel: int, period_frames: float) -> None:
        self._key = (seed, channel)
        self._period = period_frames
        self._k = -1
        self._a = self._b = 0.0

    def _knot(self, k: int) -> float:
        return float(np.random.default_rng((*self._key, k)).uniform(-1.0, 1.0))

    def __call__(self, frame: int) -> float:
        u = max(frame, 0) / self._period
        k = int(u)
        if k != self._k:
            if k == self._k + 1:
                self._a = self._b
            else:
                self._a = self._knot(k)
            self._b = self._knot(k + 1)
            self._k = k
        s = 0.5 - 0.5 * math.cos(math.pi * (u - k))
        return self._a + (self._b - self._a) * s


class HeadMotion:
    """Writes head yaw/pitch/roll and both eyes' yaw/pitch into ``ctx.head`` (degrees / 180).

    Leaves the 52 blendshapes alone.  Disabled (or given no ``ctx.head``): does nothing, so
    the values stay zero.
    """

    delay_frames = 0

    def __init__(self, cfg: HeadMotionConfig | None = None) -> None:
        self.cfg = cfg = cfg or HeadMotionConfig()
        p0 = cfg.period_s * FPS
        self._noise = [
            [_ValueNoise(cfg.seed, 2 * axis + o, p0 / _OCTAVE_RATIO**o) for o in range(2)]
            for axis in range(3)
        ]
        self._amp = (cfg.yaw_deg / 180.0, cfg.pitch_deg / 180.0, cfg.roll_deg / 180.0)
        self._attack = 1.0 - math.exp(-1.0 / (cfg.attack_s * FPS))
        self._release = 1.0 - math.exp(-1.0 / (cfg.release_s * FPS))
        self.envelope = 0.0
        self._rng = np.random.default_rng((cfg.seed, 1000))
        self._gaze = (0.0, 0.0)  # yaw, pitch in Live Link units
        self._next_saccade: int | None = None
        self._last_frame: int | None = None
        #: Frame numbers at which a saccade happened (for diagnostics and tests).
        self.saccade_frames: list[int] = []

    def _interval(self) -> int:
        seconds = self._rng.uniform(self.cfg.saccade_min_s, self.cfg.saccade_max_s)
        return max(1, round(seconds * FPS))

    def _speech(self, rms: float) -> float:
        """Frame RMS -> 0 (silence) .. 1 (full speech)."""
        db = 20.0 * math.log10(max(float(rms), 1e-10)) if math.isfinite(rms) else self.cfg.silence_db
        x = (db - self.cfg.silence_db) / (self.cfg.speech_db - self.cfg.silence_db)
        return min(1.0, max(0.0, x))

    def _eyes(self, frame: int) -> tuple[float, float]:
        cfg = self.cfg
        if self._next_saccade is None or (self._last_frame is not None and frame <= self._last_frame):
            self._next_saccade = frame + self._interval()  # a new stream: restart the schedule
        if frame >= self._next_saccade:
            yaw = self._rng.uniform(-cfg.saccade_yaw_deg, cfg.saccade_yaw_deg) / 180.0
            pitch = self._rng.uniform(-cfg.saccade_pitch_deg, cfg.saccade_pitch_deg) / 180.0
            self._gaze = (yaw, pitch)
            self._next_saccade = frame + self._interval()
            self.saccade_frames.append(frame)
        self._last_frame = frame
        return self._gaze

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        head = ctx.head
        if not self.cfg.enabled or head is None:
            return
        cfg = self.cfg
        for i in range(ctx.count):
            frame = ctx.first_frame + i
            target = self._speech(ctx.rms[i])
            rate = self._attack if target > self.envelope else self._release
            self.envelope += rate * (target - self.envelope)
            gain = cfg.idle + (1.0 - cfg.idle) * self.envelope
            row = head[i]
            for axis, (slow, fast) in enumerate(self._noise):
                n = _OCTAVE_WEIGHTS[0] * slow(frame) + _OCTAVE_WEIGHTS[1] * fast(frame)
                row[axis] = self._amp[axis] * gain * n
            if cfg.saccades:
                yaw, pitch = self._eyes(frame)
                row[LEFT_EYE_YAW] = row[RIGHT_EYE_YAW] = yaw
                row[LEFT_EYE_PITCH] = row[RIGHT_EYE_PITCH] = pitch
            row[LEFT_EYE_ROLL] = row[RIGHT_EYE_ROLL] = 0.0
