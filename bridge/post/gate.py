"""Silence gate: ease the mouth to rest when nobody speaks, and back without pops.

The model has an output floor: in silence its mouth channels sit well above 0,
so the face never closes its mouth.  Upstream multiplies 29 mouth/jaw/nose/cheek
channels by 0.1 after >= 7 quiet frames, found by looking at up to 64 frames of
history; at one-frame hops the decision has to be made per frame, causally:

* a frame is *loud* when its own audio's RMS is at or above ``open_db``, and
  *quiet* below ``close_db`` (hysteresis: levels between keep the state);
* optionally it must also be speech: the model's CTC head (``1 - P(blank)``,
  ``ctx.speech_prob``) or the Silero VAD model on the frame's audio
  (``ctx.audio``) at or above ``vad_threshold``;
* the gate opens on the first loud frame and closes after ``hold_frames``
  quiet ones; its gain follows a smoothstep ramp over ``attack_frames`` up and
  ``release_frames`` down (continuous slope at both ends: no pop), from 1 down
  to ``floor``.

Delay: none (each frame is decided on its own audio).  With the defaults the
gated channels reach 0 four frames (133 ms) after the audio stops and are at
half gain on the onset frame, full gain one frame later.

Every setting is per performer, the VAD kind included (one performer gated on the level
alone, another on the CTC head, a third on its own Silero VAD session): for a batch of
many performers the decision is ~25 numpy calls on ``[P]`` arrays per frame of the block
and the gain one multiply on ``[P, 52]``; a batch of a few goes performer by performer in
plain Python, which is cheaper there (``SMALL_BATCH``).  The Silero VAD, a stateful model
of its own per performer, runs per performer that uses it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from bridge.blendshapes import ARKIT_NAMES, NUM_BLENDSHAPES, canonical_index
from bridge.errors import BridgeError
from bridge.frame import SAMPLE_RATE, frame_end_sample
from bridge.post.base import FrameContext, Scratch, as_batch

log = logging.getLogger(__name__)

#: The 29 channels upstream LAM damps in silence (mouth, jaw, nose sneer, cheek puff).
UPSTREAM_CHANNELS: tuple[str, ...] = (
    "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "jawForward", "jawLeft", "jawOpen", "jawRight",
    "noseSneerLeft", "noseSneerRight", "cheekPuff",
)  # fmt: skip
#: Upstream's 29 plus mouthClose: a mouthClose left above 0 with the jaw shut presses the lips
#: into the teeth on most rigs, so the default gate rests it too.
SPEECH_CHANNELS: tuple[str, ...] = UPSTREAM_CHANNELS + ("mouthClose",)
#: Just the 27 mouth* and jaw* channels.
MOUTH_CHANNELS: tuple[str, ...] = tuple(n for n in ARKIT_NAMES if n.startswith(("mouth", "jaw")))

CHANNEL_SETS = {"speech": SPEECH_CHANNELS, "upstream": UPSTREAM_CHANNELS, "mouth": MOUTH_CHANNELS}


def resolve_channels(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A channel-set name or a list of ARKit names (either case) -> canonical names."""
    if isinstance(spec, str):
        try:
            return CHANNEL_SETS[spec]
        except KeyError:
            raise BridgeError(
                f"unknown channel set {spec!r}; allowed: {', '.join(CHANNEL_SETS)} or a list of names"
            ) from None
    return tuple(ARKIT_NAMES[canonical_index(n)] for n in spec)


def db_to_rms(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def _smoothstep(p: float) -> float:
    return p * p * (3.0 - 2.0 * p)


class SileroVad:
    """The Silero VAD ONNX model, streamed over 512-sample chunks with its 64-sample context.

    Signature (models.md): ``input`` [1, 576] = 64 samples of context + 512 new at
    16 kHz, ``state`` [2, 1, 128], ``sr`` int64 -> ``output`` [1, 1], ``stateN``.
    Forgetting the context gives near-zero probabilities and no error, so the
    context is kept here, not left to callers.
    """

    CONTEXT = 64
    CHUNK = 512

    def __init__(self, path: str | Path) -> None:
        import onnxruntime as ort

        p = Path(path).expanduser()
        if not p.is_file():
            raise BridgeError(
                f"Silero VAD model not found: {p} (post.gate.vad_model); it ships in the silero-vad "
                'package as silero_vad/data/silero_vad.onnx, or set post.gate.vad = "off" or "ctc"'
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises several pybind types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BridgeError(f"cannot load Silero VAD model {p}: {first}") from None
        names = {i.name for i in self.session.get_inputs()}
        if names != {"input", "state", "sr"}:
            raise BridgeError(
                f"{p} does not look like silero_vad.onnx: inputs {sorted(names)} (expected input, state, sr)"
            )
        self._buf = np.zeros((1, self.CONTEXT + 2 * self.CHUNK + 1024), dtype=np.float32)
        self._pending = 0  # samples after the context
        self._feeds: dict[str, Any] = {
            "state": np.zeros((2, 1, 128), dtype=np.float32),
            "sr": np.array(SAMPLE_RATE, dtype=np.int64),
            "input": np.zeros((1, self.CONTEXT + self.CHUNK), dtype=np.float32),
        }
        self.prob = 0.0  #: the newest chunk's speech probability
        self.calls = 0

    def feed(self, x: np.ndarray) -> float:
        """Add ``x`` (16 kHz); run every complete chunk; return the highest probability seen."""
        best = -1.0
        c, k = self.CONTEXT, self.CHUNK
        pos = 0
        while pos < x.shape[0]:
            take = min(x.shape[0] - pos, self._buf.shape[1] - c - self._pending)
            self._buf[0, c + self._pending : c + self._pending + take] = x[pos : pos + take]
            self._pending += take
            pos += take
            while self._pending >= k:
                feed = self._feeds["input"]
                feed[0] = self._buf[0, : c + k]
                out, state = self.session.run(None, self._feeds)
                self._feeds["state"] = state
                self.prob = float(np.asarray(out).reshape(-1)[0])
                self.calls += 1
                best = max(best, self.prob)
                rest = self._pending - k
                # the last 64 samples of this chunk become the next chunk's context
                self._buf[0, : c + rest] = self._buf[0, k : k + c + rest]
                self._pending = rest
        return best if best >= 0.0 else self.prob


_VAD_KINDS = ("off", "ctc", "silero")


class SilenceGate:
    """Eases the gated channels to 0 in silence with a smoothstep attack/release ramp."""

    delay_frames = 0
    #: Batches of at most this many performers run the decisions in plain Python, performer by
    #: performer (~1 us a frame each) rather than as ~25 numpy calls on tiny arrays (~15 us).
    SMALL_BATCH = 4
    ROW_ARRAYS = (
        "open_rms", "close_rms", "hold", "up", "down", "floor", "vad_threshold", "_vad_kind", "_mask",
        "_is_open", "_position", "_gains", "_quiet",
    )  # fmt: skip
    ROW_LISTS = ("vads",)

    def __init__(
        self,
        *,
        open_db: float = -40.0,
        close_db: float = -46.0,
        hold_frames: int = 2,
        attack_frames: int = 2,
        release_frames: int = 3,
        floor: float = 0.0,
        channels: str | tuple[str, ...] | list[str] = "speech",
        vad: str = "off",
        vad_threshold: float = 0.5,
        vad_model: str | Path | None = None,
    ) -> None:
        if close_db > open_db:
            raise BridgeError(f"post.gate.close_db ({close_db}) must be <= post.gate.open_db ({open_db})")
        if vad not in _VAD_KINDS:
            raise BridgeError(f'post.gate.vad = {vad!r}; allowed: "off", "ctc", "silero"')
        self.performers = 1
        # per performer, float64 like the scalar decisions they replace (a float32 level is
        # compared in float64, as ``float(rms) < close_rms`` did)
        self.open_rms = np.array([db_to_rms(open_db)])
        self.close_rms = np.array([db_to_rms(close_db)])
        self.hold = np.array([int(hold_frames)], dtype=np.int64)
        self.up = np.array([1.0 / max(1, int(attack_frames))])
        self.down = np.array([1.0 / max(1, int(release_frames))])
        self.floor = np.array([float(floor)])
        self.channels = resolve_channels(channels)
        self.vad_threshold = np.array([float(vad_threshold)])
        self._vad_kind = np.array([_VAD_KINDS.index(vad)], dtype=np.int8)
        #: each performer's Silero VAD session (None unless its vad is "silero")
        self.vads: list[SileroVad | None] = [None]
        if vad == "silero":
            if not vad_model:
                raise BridgeError(
                    'post.gate.vad = "silero" needs post.gate.vad_model = "path/to/silero_vad.onnx"'
                )
            self.vads = [SileroVad(vad_model)]
        self._mask = np.zeros((1, NUM_BLENDSHAPES), dtype=np.float32)
        self._mask[0, [canonical_index(n) for n in self.channels]] = 1.0
        self._is_open = np.zeros(1, dtype=bool)
        self._position = np.zeros(1)  # ramp position 0 (closed) .. 1 (open)
        self._gains = self.floor.copy()  # gain applied to the gated channels on the last frame
        self._quiet = np.zeros(1, dtype=np.int64)
        self._scratch = Scratch()
        self._warned: set[str] = set()
        self._stacked()

    def _stacked(self) -> None:
        self._keep = 1.0 - self.floor  # the share of the ramp above the floor
        #: each performer's settings as Python numbers, for the per-performer path
        self._settings = [
            (float(self.open_rms[n]), float(self.close_rms[n]), int(self.hold[n]), float(self.up[n]),
             float(self.down[n]), float(self.floor[n]), float(self.vad_threshold[n]))
            for n in range(self.performers)
        ]  # fmt: skip
        self._any_vad = bool(self._vad_kind.any())

    # ---- live settings (the console's `gate` command, applied between hops) ----
    def open_db(self, row: int) -> float:
        """Performer ``row``'s opening threshold in dBFS."""
        return 20.0 * float(np.log10(self.open_rms[row]))

    def set_open_db(self, row: int, open_db: float) -> None:
        """Move performer ``row``'s thresholds so the gate opens at ``open_db``, keeping the
        configured hysteresis (close_db moves by the same amount)."""
        shift = db_to_rms(open_db) / float(self.open_rms[row])
        self.open_rms[row] *= shift
        self.close_rms[row] *= shift
        self._stacked()

    # ---- performer 0's view, as the single-stream gate had it (tests, plots) ----
    @property
    def silero(self) -> SileroVad | None:
        return self.vads[0]

    @property
    def vad_mode(self) -> str:
        return _VAD_KINDS[int(self._vad_kind[0])]

    @property
    def is_open(self) -> bool:
        return bool(self._is_open[0])

    @property
    def position(self) -> float:
        return float(self._position[0])

    @property
    def gain(self) -> float:
        """Gain applied to performer 0's gated channels on its last frame."""
        return float(self._gains[0])

    @property
    def gains(self) -> np.ndarray:
        """Each performer's gain on its last frame ``[N]``."""
        return self._gains

    def _speech_probs(self, ctx: FrameContext, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame speech probability ``[P, F]`` where a performer's VAD gives one, and which
        batch rows consult it ``[P]`` (the others gate on the level alone)."""
        kind = self._vad_kind if rows is None else self._vad_kind[rows]
        uses = kind != 0
        p, n = ctx.rms.shape
        probs = self._scratch.get("probs", (p, n), np.float64)
        ctc = kind == 1
        if ctc.any():
            if ctx.speech_prob is not None:
                probs[ctc] = ctx.speech_prob[ctc]
            else:
                self._warn("ctc", "the model/pipeline gives no CTC speech probability")
                uses &= ~ctc
        silero = kind == 2
        if silero.any():
            if ctx.audio is None:
                self._warn("silero", "the pipeline passes no audio to the post chain")
                uses &= ~silero
            else:
                for i in np.flatnonzero(silero):
                    performer = int(i) if rows is None else int(rows[i])
                    self._silero_row(probs[i], ctx, int(i), self.vads[performer])
        return probs, uses

    @staticmethod
    def _silero_row(out: np.ndarray, ctx: FrameContext, i: int, vad: SileroVad | None) -> None:
        """Feed batch row ``i``'s block audio (right-aligned in its row), frame by frame, to
        its performer's VAD."""
        assert vad is not None and ctx.audio is not None
        first = int(ctx.first_frame[i])  # type: ignore[index]
        base = frame_end_sample(first - 1)
        audio = ctx.audio[i]
        audio = audio[audio.shape[0] - (frame_end_sample(first + out.shape[0] - 1) - base) :]
        for f in range(out.shape[0]):
            k = first + f
            lo, hi = frame_end_sample(k - 1) - base, frame_end_sample(k) - base
            out[f] = np.float32(vad.feed(audio[lo:hi]))  # as the single-stream gate kept it

    def _warn(self, kind: str, why: str) -> None:
        if kind not in self._warned:
            log.warning("silence gate: vad = %s but %s; gating on the RMS level only", kind, why)
            self._warned.add(kind)

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        values, bctx = as_batch(values, ctx)
        assert bctx is not None
        rows = bctx.rows
        probs, uses = self._speech_probs(bctx, rows) if self._any_vad else (None, None)
        if values.shape[0] <= self.SMALL_BATCH:
            self._run_rows(values, bctx.rms, rows, probs, uses)
        elif rows is None:
            self._run(
                values, bctx.rms, None, probs, uses, self._is_open, self._quiet, self._position, self._gains
            )
        else:
            state = (self._is_open[rows], self._quiet[rows], self._position[rows], self._gains[rows])
            self._run(values, bctx.rms, rows, probs, uses, *state)
            self._is_open[rows], self._quiet[rows], self._position[rows], self._gains[rows] = state

    def _run_rows(self, values: np.ndarray, rms: np.ndarray, rows: np.ndarray | None,
                  probs: np.ndarray | None, uses: np.ndarray | None) -> None:  # fmt: skip
        """A few performers: each one's decisions in plain Python floats, frame by frame (the
        single-stream gate's code; a numpy call costs more than this arithmetic on one row)."""
        mult = self._scratch.get("mult1", (NUM_BLENDSHAPES,))
        for i in range(values.shape[0]):
            n = i if rows is None else int(rows[i])
            open_rms, close_rms, hold, up, down, floor, threshold = self._settings[n]
            consult = probs is not None and bool(uses[i])  # type: ignore[index]
            is_open, quiet, position = bool(self._is_open[n]), int(self._quiet[n]), float(self._position[n])
            g = float(self._gains[n])
            mask = self._mask[n]
            for f in range(values.shape[1]):
                level = float(rms[i, f])
                speech = not consult or float(probs[i, f]) >= threshold  # type: ignore[index]
                if is_open:
                    if level < close_rms or not speech:
                        quiet += 1
                        if quiet > hold:
                            is_open = False
                    else:
                        quiet = 0
                elif level >= open_rms and speech:
                    is_open = True
                    quiet = 0
                position = min(1.0, position + up) if is_open else max(0.0, position - down)
                g = floor + (1.0 - floor) * _smoothstep(position)
                if g >= 1.0:
                    continue
                # mult = 1 - mask * (1 - g): g on the gated channels, 1 elsewhere
                np.multiply(mask, np.float32(1.0 - g), out=mult)
                np.subtract(np.float32(1.0), mult, out=mult)
                values[i, f] *= mult
            self._is_open[n], self._quiet[n], self._position[n], self._gains[n] = is_open, quiet, position, g

    def _run(self, values: np.ndarray, rms: np.ndarray, rows: np.ndarray | None, probs: np.ndarray | None,
             uses: np.ndarray | None, is_open: np.ndarray, quiet: np.ndarray, position: np.ndarray,
             gains: np.ndarray) -> None:  # fmt: skip
        """Many performers: the same decisions as :meth:`_run_rows`, vectorised over the batch,
        on the batch rows' state (the whole state, or gathered copies the caller scatters).

        The quiet-frame counter runs as ``quiet = (quiet + 1) * quiet_now`` for every row: a
        closed gate's counter is never read, and the frame that opens a gate is loud speech,
        so its counter restarts at 0 either way."""
        p = values.shape[0]
        if rows is None:
            open_rms, close_rms, hold, up, down = self.open_rms, self.close_rms, self.hold, self.up, self.down
            floor, keep, mask, threshold = self.floor, self._keep, self._mask, self.vad_threshold
        else:
            open_rms, close_rms, hold = self.open_rms[rows], self.close_rms[rows], self.hold[rows]
            up, down, floor, keep = self.up[rows], self.down[rows], self.floor[rows], self._keep[rows]
            mask, threshold = self._mask[rows], self.vad_threshold[rows]
        neg_down = -down
        ignore_vad = None if uses is None else ~uses
        sc = self._scratch
        level = sc.get("level", (p,), np.float64)
        speech = sc.get("speech", (p,), bool)
        b = sc.get("b", (p,), bool)
        step = sc.get("step", (p,), np.float64)
        g = sc.get("g", (p,), np.float64)
        t = sc.get("t", (p,), np.float64)
        gain32 = sc.get("gain32", (p, 1), np.float32)
        mult = sc.get("mult", (p, NUM_BLENDSHAPES), np.float32)
        for f in range(values.shape[1]):
            np.copyto(level, rms[:, f])
            if probs is not None:  # speech: the VAD says so, or this performer gates on the level
                np.greater_equal(probs[:, f], threshold, out=speech)
                speech |= ignore_vad
            # a quiet frame (or no speech) counts towards closing, a loud one restarts the count
            np.less(level, close_rms, out=b)
            if probs is not None:
                b |= ~speech
            quiet += 1
            quiet *= b
            np.less_equal(quiet, hold, out=b)
            is_open &= b  # open gates stay open until more than hold quiet frames
            np.greater_equal(level, open_rms, out=b)  # closed gates open on loud speech
            if probs is not None:
                b &= speech
            is_open |= b
            # the ramp: position + up when open, - down when closed, within 0..1
            np.copyto(step, neg_down)
            np.copyto(step, up, where=is_open)
            position += step
            np.clip(position, 0.0, 1.0, out=position)
            # g = floor + (1 - floor) * smoothstep(position), as the scalar path computes it
            np.multiply(position, position, out=g)
            np.multiply(position, 2.0, out=t)
            np.subtract(3.0, t, out=t)
            g *= t
            g *= keep
            g += floor
            np.copyto(gains, g)
            if np.all(g >= 1.0):
                continue
            # mult = 1 - mask * (1 - g): g on the gated channels, 1 elsewhere (and exactly 1
            # for a performer whose gain is >= 1: the gate leaves it untouched)
            np.subtract(1.0, g, out=t)
            np.maximum(t, 0.0, out=t)
            np.copyto(gain32[:, 0], t, casting="same_kind")
            np.multiply(mask, gain32, out=mult)
            np.subtract(np.float32(1.0), mult, out=mult)
            values[:, f] *= mult
