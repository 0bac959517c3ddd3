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

Per performer: its own settings and seed (the chain derives each performer's seed from its
index, so heads do not move in unison); a block is vectorised over the performers, one
step per frame (the envelope is recursive).  Noise knots and saccades are drawn per
performer only when one is due, in the single-stream stage's order, so performer 0 of a
chain moves exactly as the single-stream stage did.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from bridge.errors import BridgeError
from bridge.frame import FPS
from bridge.post.base import FrameContext, Scratch, as_batch

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


def _knot(seed: int, channel: int, k: int) -> float:
    """The noise value at knot ``k`` of one channel: a pure function of (seed, channel, k)."""
    return float(np.random.default_rng((seed, channel, k)).uniform(-1.0, 1.0))


#: Noise channels: 2 * axis + octave (octave 0 the slow one).
_CHANNELS = 6


class HeadMotion:
    """Writes head yaw/pitch/roll and both eyes' yaw/pitch into ``ctx.head`` (degrees / 180).

    Leaves the 52 blendshapes alone.  Disabled (or given no ``ctx.head``): does nothing, so
    the values stay zero.
    """

    delay_frames = 0
    #: Batches of at most this many performers go performer by performer in plain Python
    #: (~10 us a frame each) rather than as ~60 numpy calls on tiny arrays (~45 us a frame).
    SMALL_BATCH = 4
    STRUCTURE = ("enabled",)
    ROW_ARRAYS = (
        "_amp", "_idle", "_silence_db", "_speech_db", "_attack", "_release", "_saccades", "_period",
        "_seed", "envelope", "_knot_k", "_knot_a", "_knot_b", "_gaze", "_next_saccade",
        "_last_frame", "active",
    )  # fmt: skip
    ROW_LISTS = ("cfgs", "_rngs", "saccades_by_performer")

    def __init__(self, cfg: HeadMotionConfig | None = None, seed: int | None = None) -> None:
        """``seed`` overrides ``cfg.seed`` (the chain passes each performer's own)."""
        cfg = cfg or HeadMotionConfig()
        self.performers = 1
        self.cfgs = [cfg]
        self.enabled = cfg.enabled
        seed = cfg.seed if seed is None else seed
        self._seed = np.array([seed], dtype=object)  # any size of int, as given to default_rng
        p0 = cfg.period_s * FPS
        self._period = np.array([[p0 / _OCTAVE_RATIO**o for axis in range(3) for o in range(2)]])
        self._amp = np.array([[cfg.yaw_deg / 180.0, cfg.pitch_deg / 180.0, cfg.roll_deg / 180.0]])
        self._idle = np.array([cfg.idle])
        self._silence_db = np.array([cfg.silence_db])
        self._speech_db = np.array([cfg.speech_db])
        self._attack = np.array([1.0 - math.exp(-1.0 / (cfg.attack_s * FPS))])
        self._release = np.array([1.0 - math.exp(-1.0 / (cfg.release_s * FPS))])
        self._saccades = np.array([cfg.saccades])
        self.envelope = np.zeros(1)  #: each performer's speech envelope 0..1
        self._knot_k = np.full((1, _CHANNELS), -1, dtype=np.int64)  # knot index of a, per channel
        self._knot_a = np.zeros((1, _CHANNELS))
        self._knot_b = np.zeros((1, _CHANNELS))
        self._rngs = [np.random.default_rng((seed, 1000))]
        self._gaze = np.zeros((1, 2))  # yaw, pitch in Live Link units
        self._next_saccade = np.full(1, -1, dtype=np.int64)  # -1: none scheduled yet
        self._last_frame = np.full(1, -1, dtype=np.int64)  # -1: none seen yet (frames are >= 0)
        #: per performer: head motion on (the console's ``head`` command turns a performer's off)
        self.active = np.ones(1, dtype=bool)
        self._all_active = True
        #: Frame numbers at which a saccade happened, per performer (diagnostics and tests).
        self.saccades_by_performer: list[list[int]] = [[]]
        self._scratch = Scratch()
        self._stacked()

    def _stacked(self) -> None:
        #: each performer's settings as Python numbers, for the per-performer path
        self._settings = [
            (tuple(float(x) for x in self._amp[n]), float(self._idle[n]), float(self._silence_db[n]),
             float(self._speech_db[n]), float(self._attack[n]), float(self._release[n]),
             bool(self._saccades[n]), tuple(float(x) for x in self._period[n]))
            for n in range(self.performers)
        ]  # fmt: skip

    @property
    def cfg(self) -> HeadMotionConfig:
        """Performer 0's settings."""
        return self.cfgs[0]

    @property
    def saccade_frames(self) -> list[int]:
        """Performer 0's saccade frames."""
        return self.saccades_by_performer[0]

    def _interval(self, n: int) -> int:
        cfg = self.cfgs[n]
        seconds = self._rngs[n].uniform(cfg.saccade_min_s, cfg.saccade_max_s)
        return max(1, round(seconds * FPS))

    def _eyes(self, n: int, frame: int) -> None:
        """Performer ``n``'s saccade schedule at ``frame`` (called when something is due)."""
        cfg = self.cfgs[n]
        if self._next_saccade[n] < 0 or frame <= self._last_frame[n]:
            self._next_saccade[n] = frame + self._interval(n)  # a new stream: restart the schedule
        if frame >= self._next_saccade[n]:
            yaw = self._rngs[n].uniform(-cfg.saccade_yaw_deg, cfg.saccade_yaw_deg) / 180.0
            pitch = self._rngs[n].uniform(-cfg.saccade_pitch_deg, cfg.saccade_pitch_deg) / 180.0
            self._gaze[n] = (yaw, pitch)
            self._next_saccade[n] = frame + self._interval(n)
            self.saccades_by_performer[n].append(frame)

    def _knots(self, n: int, channels: np.ndarray | list[int], ks: np.ndarray | list[int]) -> None:
        """Performer ``n``'s noise channels moved on to knots ``ks`` (rare: every ~1-3 s)."""
        seed = self._seed[n]
        for c, k in zip(np.asarray(channels).tolist(), np.asarray(ks).tolist(), strict=True):
            if k == self._knot_k[n, c] + 1:
                self._knot_a[n, c] = self._knot_b[n, c]
            else:
                self._knot_a[n, c] = _knot(seed, c, k)
            self._knot_b[n, c] = _knot(seed, c, k + 1)
            self._knot_k[n, c] = k

    def _row(self, n: int, head: np.ndarray, rms: np.ndarray, first: int) -> None:
        """Performer ``n``'s block (``head`` [F, 9]) frame by frame in plain Python."""
        amp, idle, silence, speech, attack, release, saccades, period = self._settings[n]
        env = float(self.envelope[n])
        knot_k, knot_a, knot_b = self._knot_k[n], self._knot_a[n], self._knot_b[n]
        for i in range(head.shape[0]):
            frame = first + i
            level = float(rms[i])
            db = 20.0 * math.log10(max(level, 1e-10)) if math.isfinite(level) else silence
            target = min(1.0, max(0.0, (db - silence) / (speech - silence)))
            rate = attack if target > env else release
            env += rate * (target - env)
            gain = idle + (1.0 - idle) * env
            row = head[i]
            for axis in range(3):
                octaves = []
                for o in range(2):
                    c = 2 * axis + o
                    u = max(frame, 0) / period[c]
                    k = int(u)
                    if k != knot_k[c]:
                        self._knots(n, [c], [k])
                    a, b = float(knot_a[c]), float(knot_b[c])
                    octaves.append(a + (b - a) * (0.5 - 0.5 * math.cos(math.pi * (u - k))))
                row[axis] = (
                    amp[axis] * gain * (_OCTAVE_WEIGHTS[0] * octaves[0] + _OCTAVE_WEIGHTS[1] * octaves[1])
                )
            if saccades:
                nxt = int(self._next_saccade[n])
                if nxt < 0 or frame <= self._last_frame[n] or frame >= nxt:
                    self._eyes(n, frame)
                self._last_frame[n] = frame
                yaw, pitch = float(self._gaze[n, 0]), float(self._gaze[n, 1])
                row[LEFT_EYE_YAW] = row[RIGHT_EYE_YAW] = yaw
                row[LEFT_EYE_PITCH] = row[RIGHT_EYE_PITCH] = pitch
            row[LEFT_EYE_ROLL] = row[RIGHT_EYE_ROLL] = 0.0
        self.envelope[n] = env

    def set_active(self, row: int, on: bool) -> None:
        """Head motion on or off for performer ``row`` from the next frame on (off: the head
        and eyes rest at 0)."""
        self.active[row] = on
        self._all_active = bool(self.active.all())

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        if not self.enabled:
            return
        self._process(values, ctx)
        if not self._all_active:
            _values, bctx = as_batch(values, ctx)
            if bctx is not None and bctx.head is not None:
                off = ~(self.active if bctx.rows is None else self.active[bctx.rows])
                bctx.head[off] = 0.0

    def _process(self, values: np.ndarray, ctx: FrameContext) -> None:
        values, bctx = as_batch(values, ctx)
        if bctx is None or bctx.head is None:
            return
        rows = bctx.rows
        head = bctx.head
        p = head.shape[0]
        if p <= self.SMALL_BATCH:
            for i in range(p):
                n = i if rows is None else int(rows[i])
                self._row(n, head[i], bctx.rms[i], int(bctx.first_frame[i]))  # type: ignore[index]
            return
        idx = np.arange(p) if rows is None else rows  # performer of each batch row
        settings = (self._amp, self._idle, self._silence_db, self._speech_db, self._attack, self._release,
                    self._saccades, self._period, self.envelope)  # fmt: skip
        amp, idle, silence, speech, attack, release, saccades, period, env = (
            settings if rows is None else (a[rows] for a in settings)
        )
        any_saccades = bool(saccades.any())
        first = np.asarray(bctx.first_frame, dtype=np.int64)
        sc = self._scratch
        frame = sc.get("frame", (p,), np.int64)
        level = sc.get("level", (p,), np.float64)
        target = sc.get("target", (p,), np.float64)
        u = sc.get("u", (p, _CHANNELS), np.float64)
        k = sc.get("k", (p, _CHANNELS), np.int64)
        for f in range(bctx.count):
            np.add(first, f, out=frame)
            # envelope: frame RMS -> 0 (silence) .. 1 (full speech), a non-finite RMS as silence
            np.copyto(level, bctx.rms[:, f])
            finite = np.isfinite(level)
            np.maximum(level, 1e-10, out=level)
            level[~finite] = 1.0
            np.log10(level, out=level)
            level *= 20.0
            np.copyto(level, silence, where=~finite)
            np.subtract(level, silence, out=target)
            target /= speech - silence
            np.clip(target, 0.0, 1.0, out=target)
            rate = np.where(target > env, attack, release)
            target -= env
            target *= rate
            env += target
            gain = idle + (1.0 - idle) * env
            # noise: cosine-interpolated knots of each performer's 6 channels
            np.maximum(frame, 0, out=k[:, 0])
            np.divide(k[:, :1], period, out=u)
            np.copyto(k, u, casting="unsafe")  # int(u): u >= 0
            moved = k != (self._knot_k if rows is None else self._knot_k[rows])
            if moved.any():
                for i in np.flatnonzero(moved.any(axis=1)):
                    ch = np.flatnonzero(moved[i])
                    self._knots(int(idx[i]), ch, k[i, ch])
            a = self._knot_a if rows is None else self._knot_a[rows]
            b = self._knot_b if rows is None else self._knot_b[rows]
            s = 0.5 - 0.5 * np.cos(np.pi * (u - k))
            noise = a + (b - a) * s  # [P, 6]
            axes = _OCTAVE_WEIGHTS[0] * noise[:, 0::2] + _OCTAVE_WEIGHTS[1] * noise[:, 1::2]
            out = head[:, f]
            out[:, :3] = amp * gain[:, None] * axes
            if any_saccades:
                due = self._next_saccade[idx] < 0
                due |= frame <= self._last_frame[idx]
                due |= frame >= self._next_saccade[idx]
                due &= saccades
                for i in np.flatnonzero(due):
                    self._eyes(int(idx[i]), int(frame[i]))
                gaze = self._gaze if rows is None else self._gaze[rows]
                self._last_frame[idx[saccades]] = frame[saccades]
                yaw, pitch = gaze[:, 0], gaze[:, 1]
                if saccades.all():
                    out[:, LEFT_EYE_YAW] = out[:, RIGHT_EYE_YAW] = yaw
                    out[:, LEFT_EYE_PITCH] = out[:, RIGHT_EYE_PITCH] = pitch
                else:
                    out[saccades, LEFT_EYE_YAW] = out[saccades, RIGHT_EYE_YAW] = yaw[saccades]
                    out[saccades, LEFT_EYE_PITCH] = out[saccades, RIGHT_EYE_PITCH] = pitch[saccades]
            out[:, LEFT_EYE_ROLL] = 0.0
            out[:, RIGHT_EYE_ROLL] = 0.0
        if rows is not None:
            self.envelope[rows] = env
