"""Live settings the console changes while the bridge runs, and the hop loop's two hooks.

The engine runs its post chain wrapped in a :class:`LivePost`, which calls
:meth:`LiveControls.before_post` on each block (the model's values, before the chain) and
:meth:`LiveControls.after_post` after the chain.  They

* keep the newest raw and post-processed values, level, peak and speech of each performer
  in preallocated arrays (:class:`~bridge.control.state.LiveState`) that the console
  reads from its own threads without a lock (a torn read shows a value a frame old);
* record a live calibration and apply its floors (when the chain has no calibration
  stage to take them);
* apply the per-performer mouth gain and mute, after the chain so that they hold with
  ``--raw`` too: a muted performer's mouth and jaw channels ease to rest over two frames
  and stay there, whatever the model says; the other channels go on.

:meth:`LiveControls.execute` runs one validated command between hops (the hop loop drains
the :class:`~bridge.control.commands.CommandQueue` with it); every setting it changes is
read by the next hop, so a command applies within two frames.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bridge.blendshapes import NUM_BLENDSHAPES, canonical_index
from bridge.control.commands import Capabilities, Command, CommandError, output_ids
from bridge.control.state import LiveState
from bridge.frame import FPS
from bridge.post.base import FrameContext, Scratch, as_batch
from bridge.post.blink import Blinks
from bridge.post.calibration import MAX_FLOOR, Calibration
from bridge.post.gate import MOUTH_CHANNELS, SilenceGate, db_to_rms
from bridge.post.head import HeadMotion
from bridge.post.smoothing import Ema, OneEuro

log = logging.getLogger(__name__)

#: mouth gain change per frame while muting or unmuting: at rest on the second frame
MUTE_STEP = 0.5
#: smoothing strength s maps to One Euro's resting cut-off 15 Hz * (0.5 / 15) ** s, EMA alpha 0.05 ** s
ONE_EURO_MAX_HZ, ONE_EURO_MIN_HZ, EMA_MIN_ALPHA = 15.0, 0.5, 0.05
#: a calibration is refused when its loudest tenth of frames is above this (no gate to ask)
QUIET_DBFS = -46.0

_STAGES = {"gate": SilenceGate, "smoothing": (Ema, OneEuro), "blink": Blinks, "head": HeadMotion}


def strength_of(stage: Any, row: int) -> float:
    """The smoothing strength 0..1 that a stage's current setting corresponds to."""
    if isinstance(stage, Ema):
        alpha = float(stage.alpha[row, 0])
        return min(1.0, max(0.0, math.log(alpha) / math.log(EMA_MIN_ALPHA)))
    fc = stage.min_cutoff(row)
    return min(1.0, max(0.0, math.log(fc / ONE_EURO_MAX_HZ) / math.log(ONE_EURO_MIN_HZ / ONE_EURO_MAX_HZ)))


class _Recording:
    """A live calibration under way for one performer."""

    def __init__(self, frames: int, seconds: float, quiet_db: float, command: Command) -> None:
        self.frames, self.seconds, self.quiet_db, self.command = frames, seconds, quiet_db, command
        self.values: list[np.ndarray] = []
        self.rms: list[np.ndarray] = []
        self.count = 0


class LivePost:
    """The post chain as the engine runs it: the console's hooks around it, everything else the
    chain's own (its stages, ``find``, ``restart``, ``delays``, ``describe``)."""

    def __init__(self, chain: Any, live: LiveControls) -> None:
        self.chain = chain
        self.live = live

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        values3, bctx = as_batch(values, ctx)
        assert bctx is not None
        self.live.before_post(values3, bctx)
        self.chain.process(values, ctx)
        self.live.after_post(values3, bctx)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.chain, name)


class LiveControls:
    """Per-performer live settings and the hooks that apply them; built by the engine."""

    def __init__(self, bridge: Any, load_model: Callable[[str], Any]) -> None:
        self.bridge = bridge
        self._load_model = load_model  #: preset name -> a loaded model (the engine's loader)
        n = len(bridge.performers)
        self.performers = n
        self.state = LiveState(n)
        self.mute = np.zeros(n, dtype=bool)
        self.gain = np.ones(n, dtype=np.float32)
        self._mouth_gain = np.ones(n, dtype=np.float32)  #: the mute ramp's gain now
        self._mouth = np.array(sorted(canonical_index(c) for c in MOUTH_CHANNELS), dtype=np.intp)
        self._shaping = False  #: some performer has a gain, a mute or a ramp under way
        #: floors of a live calibration, per performer, where the chain has no calibration stage
        self._floors: list[np.ndarray | None] = [None] * n
        self._any_floor = False
        self._recordings: dict[int, _Recording] = {}
        self._scratch = Scratch()
        self._all = np.arange(n, dtype=np.intp)
        self.output_ids = output_ids([o.name for o in bridge.outputs])

    # ---- what can be asked ---------------------------------------------------------
    def capabilities(self) -> Capabilities:
        from bridge.model.presets import PRESETS

        b = self.bridge
        stages = []
        for i in range(self.performers):
            have = {name for name, kind in _STAGES.items() if self._find(kind, i) is not None}
            head = self._find(HeadMotion, i)
            if head is not None and not head[0].enabled:
                have.discard("head")
            stages.append(frozenset(have))
        return Capabilities(
            performers=tuple(p.name for p in b.performers), outputs=self.output_ids,
            presets=tuple(PRESETS), max_lookahead=b.performers[0].scheduler.window_frames - 1,
            identity=bool(b.runner.description.identity_input), stages=tuple(stages),
        )  # fmt: skip

    def _find(self, kind: Any, performer: int) -> tuple[Any, int] | None:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        for k in kinds:
            found = self.bridge.post.find(k, performer)
            if found is not None:
                return found
        return None

    def around(self, chain: Any) -> LivePost:
        """``chain`` with this object's hooks around its ``process``."""
        return LivePost(chain, self)

    # ---- the hop loop's hooks --------------------------------------------------------
    def _indices(self, ctx: FrameContext) -> np.ndarray:
        return self._all if ctx.rows is None else ctx.rows

    def before_post(self, values: np.ndarray, ctx: FrameContext) -> None:
        """The model's values of a block ``[P, F, 52]``, before the post chain."""
        idx = self._indices(ctx)
        st = self.state
        if ctx.rows is None:
            st.raw[...] = values[:, -1]
        else:
            st.raw[idx] = values[:, -1]
        if self._recordings:
            self._record(values, ctx, idx)
        if self._any_floor:
            for i, n in enumerate(idx):
                floor = self._floors[int(n)]
                if floor is not None:
                    row = values[i]
                    row -= floor
                    np.maximum(row, 0.0, out=row)
                    row /= 1.0 - floor

    def after_post(self, values: np.ndarray, ctx: FrameContext) -> None:
        """The block after the chain: mouth gain and mute, then the live state."""
        idx = self._indices(ctx)
        if self._shaping:
            self._shape(values, idx)
        st = self.state
        f = values.shape[1]
        sc = self._scratch
        if ctx.audio is not None:
            peak = sc.get("peak", (values.shape[0],))
            mag = sc.get("mag", ctx.audio.shape)
            np.abs(ctx.audio, out=mag)
            np.max(mag, axis=1, out=peak)
        else:
            peak = None
        if ctx.rows is None:
            st.post[...] = values[:, -1]
            st.rms[...] = ctx.rms[:, -1]
            np.add(ctx.first_frame, f - 1, out=st.frame)
            if peak is not None:
                np.maximum(st.peak, peak, out=st.peak)  # the console takes (and resets) the peak
            if ctx.speech_prob is not None:
                st.speech[...] = ctx.speech_prob[:, -1]
        else:
            st.post[idx] = values[:, -1]
            st.rms[idx] = ctx.rms[:, -1]
            st.frame[idx] = np.asarray(ctx.first_frame) + (f - 1)
            if peak is not None:
                st.peak[idx] = np.maximum(st.peak[idx], peak)
            if ctx.speech_prob is not None:
                st.speech[idx] = ctx.speech_prob[:, -1]
        st.last_block = time.monotonic()

    def _shape(self, values: np.ndarray, idx: np.ndarray) -> None:
        """Mouth gain and the mute ramp of the rows that have one."""
        mouth = self._mouth
        busy = False
        for i, n in enumerate(idx):
            n = int(n)
            gain, muted, g = float(self.gain[n]), bool(self.mute[n]), float(self._mouth_gain[n])
            if gain == 1.0 and not muted and g == 1.0:
                continue
            block = values[i][:, mouth]
            for f in range(block.shape[0]):
                g = max(0.0, g - MUTE_STEP) if muted else min(1.0, g + MUTE_STEP)
                block[f] *= gain * g
            np.minimum(block, 1.0, out=block)
            values[i][:, mouth] = block
            self._mouth_gain[n] = g
        for n in range(self.performers):
            if self.gain[n] != 1.0 or self.mute[n] or self._mouth_gain[n] != 1.0:
                busy = True
        self._shaping = busy

    # ---- live calibration ------------------------------------------------------------
    def _record(self, values: np.ndarray, ctx: FrameContext, idx: np.ndarray) -> None:
        for i, n in enumerate(idx):
            rec = self._recordings.get(int(n))
            if rec is None:
                continue
            rec.values.append(values[i].copy())
            rec.rms.append(ctx.rms[i].copy())
            rec.count += values.shape[1]
            if rec.count >= rec.frames:
                del self._recordings[int(n)]
                self._finish_recording(int(n), rec)

    def _finish_recording(self, n: int, rec: _Recording) -> None:
        name = self.bridge.performers[n].name
        vals = np.concatenate(rec.values)[: rec.frames]
        rms = np.concatenate(rec.rms)[: rec.frames]
        loud = float(np.percentile(rms, 90)) if rms.size else 0.0
        level = 20.0 * math.log10(max(loud, 1e-10))
        st = self.state
        if level > rec.quiet_db:
            reason = (
                f"calibrate for {name} refused: the input was not quiet ({level:.1f} dBFS in its loudest "
                f"tenth of {rec.seconds:g} s; quiet is below {rec.quiet_db:.1f} dBFS); be silent and "
                "try again"
            )
            log.warning("%s", reason)
            st.calibration[n] = {"state": "refused", "reason": reason}
            if rec.command.notify is not None:
                rec.command.notify(reason)
            return
        floors = np.minimum(np.median(vals, axis=0).astype(np.float32), np.float32(MAX_FLOOR))
        found = self._find(Calibration, n)
        if found is not None:
            found[0].set_offsets(found[1], floors)
        else:
            self._floors[n] = floors
            self._any_floor = True
        jaw = float(floors[canonical_index("jawOpen")])
        log.info("calibration for %s applied: %d frames at %.1f dBFS, jawOpen floor %.3f",
                 name, vals.shape[0], level, jaw)  # fmt: skip
        st.calibration[n] = {"state": "applied", "level_dbfs": round(level, 1), "frames": int(vals.shape[0]),
                             "jawOpen_floor": round(jaw, 4)}  # fmt: skip

    # ---- commands, between hops ------------------------------------------------------
    def execute(self, cmd: Command) -> str:
        """Apply one validated command (the hop loop, between hops); a short note for the log."""
        b = self.bridge
        name, value = cmd.name, cmd.value
        rows = cmd.performers
        if name == "enabled":
            assert cmd.output is not None
            b.outputs[cmd.output].enabled = bool(value)
            return ""
        if name == "mute":
            self.mute[list(rows)] = bool(value)
            self._shaping = True
            return ""
        if name == "gain":
            self.gain[list(rows)] = float(value)
            self._shaping = True
            return ""
        if name == "gate":
            for n in rows:
                stage, row = self._need(SilenceGate, n, name)
                stage.set_open_db(row, float(value))
            return ""
        if name == "smoothing":
            s = float(value)
            for n in rows:
                stage, row = self._need((Ema, OneEuro), n, name)
                if isinstance(stage, Ema):
                    stage.set_alpha(row, EMA_MIN_ALPHA**s)
                else:
                    stage.set_min_cutoff(row, ONE_EURO_MAX_HZ * (ONE_EURO_MIN_HZ / ONE_EURO_MAX_HZ) ** s)
            return ""
        if name in ("blink", "head"):
            for n in rows:
                stage, row = self._need(Blinks if name == "blink" else HeadMotion, n, name)
                stage.set_active(row, bool(value))
            return ""
        if name == "lookahead":
            for n in rows:
                b.performers[n].scheduler.set_lookahead(int(value))
            for g in b.groups:
                g.needed = None  # the audio their next frames wait for moved
                g.in_step = False
            return ""
        if name == "identity":
            for n in rows:
                b.performers[n].identity = int(value)
            b._identities = any(p.identity != b.cfg.model.identity for p in b.performers)
            return ""
        if name == "model":
            if value == b.model.preset:
                raise CommandError(f"model: {value} is already running")
            preset = str(value)
            if not b.fallback.request(lambda: self._load_model(preset), f"switch requested ({cmd.origin})"):
                raise CommandError("model: another model is still loading; wait for it")
            return f"loading {preset} in the background; it takes over at a hop"
        if name == "calibrate":
            seconds = float(value)
            for n in rows:
                gate = self._find(SilenceGate, n)
                quiet = QUIET_DBFS
                if gate is not None:
                    quiet = 20.0 * math.log10(float(gate[0].close_rms[gate[1]]))
                self._recordings[n] = _Recording(round(seconds * FPS), seconds, quiet, cmd)
                self.state.calibration[n] = {"state": "recording", "seconds": seconds}
            return f"recording {seconds:g} s of silence"
        raise CommandError(f"unknown command {name!r}")  # parse refuses these first

    def _need(self, kind: Any, n: int, name: str) -> tuple[Any, int]:
        found = self._find(kind, n)
        if found is None:  # parse checks this first; a chain never loses a stage
            raise CommandError(f"{name}: that stage is off for {self.bridge.performers[n].name}")
        return found

    # ---- what the console shows --------------------------------------------------------
    def settings(self, n: int) -> dict[str, Any]:
        """Performer ``n``'s live settings (any thread; plain values)."""
        b = self.bridge
        p = b.performers[n]
        out: dict[str, Any] = {
            "mute": bool(self.mute[n]), "gain": round(float(self.gain[n]), 3),
            "lookahead": p.scheduler.lookahead, "identity": p.identity,
        }  # fmt: skip
        gate = self._find(SilenceGate, n)
        if gate is not None:
            out["gate"] = round(gate[0].open_db(gate[1]), 1)
            out["gate_open"] = bool(gate[0]._is_open[gate[1]])
        smooth = self._find((Ema, OneEuro), n)
        if smooth is not None:
            out["smoothing"] = round(strength_of(smooth[0], smooth[1]), 3)
        blink = self._find(Blinks, n)
        if blink is not None:
            out["blink"] = bool(blink[0].active[blink[1]])
        head = self._find(HeadMotion, n)
        if head is not None and head[0].enabled:
            out["head"] = bool(head[0].active[head[1]])
        return out


def db(rms: float) -> float:
    """RMS (full scale 1) in dBFS, -120 for silence."""
    return max(-120.0, 20.0 * math.log10(rms)) if rms > 0 else -120.0


__all__ = ["LiveControls", "db", "db_to_rms", "NUM_BLENDSHAPES"]
