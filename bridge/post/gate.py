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
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from bridge.blendshapes import ARKIT_NAMES, NUM_BLENDSHAPES, canonical_index
from bridge.errors import BridgeError
from bridge.frame import SAMPLE_RATE, frame_end_sample
from bridge.post.base import FrameContext

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


class SilenceGate:
    """Eases the gated channels to 0 in silence with a smoothstep attack/release ramp."""

    delay_frames = 0

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
        if vad not in ("off", "ctc", "silero"):
            raise BridgeError(f'post.gate.vad = {vad!r}; allowed: "off", "ctc", "silero"')
        self.open_rms = db_to_rms(open_db)
        self.close_rms = db_to_rms(close_db)
        self.hold = int(hold_frames)
        self.up = 1.0 / max(1, int(attack_frames))
        self.down = 1.0 / max(1, int(release_frames))
        self.floor = float(floor)
        self.channels = resolve_channels(channels)
        self.vad_mode = vad
        self.vad_threshold = float(vad_threshold)
        self.silero: SileroVad | None = None
        if vad == "silero":
            if not vad_model:
                raise BridgeError(
                    'post.gate.vad = "silero" needs post.gate.vad_model = "path/to/silero_vad.onnx"'
                )
            self.silero = SileroVad(vad_model)
        self._mask = np.zeros(NUM_BLENDSHAPES, dtype=np.float32)
        self._mask[[canonical_index(n) for n in self.channels]] = 1.0
        self._mult = np.ones(NUM_BLENDSHAPES, dtype=np.float32)
        self.is_open = False
        self.position = 0.0  #: ramp position 0 (closed) .. 1 (open)
        self.gain = self.floor  #: gain applied to the gated channels on the last frame
        self._quiet = 0
        self._warned = False

    def _speech_probs(self, ctx: FrameContext) -> np.ndarray | None:
        """Per-frame speech probability from the configured VAD, or None (RMS only)."""
        if self.vad_mode == "ctc":
            if ctx.speech_prob is not None:
                return ctx.speech_prob
            self._warn("the model/pipeline gives no CTC speech probability")
            return None
        if self.silero is not None:
            if ctx.audio is None:
                self._warn("the pipeline passes no audio to the post chain")
                return None
            probs = np.empty(ctx.count, dtype=np.float32)
            base = frame_end_sample(ctx.first_frame - 1)
            for i in range(ctx.count):
                k = ctx.first_frame + i
                lo, hi = frame_end_sample(k - 1) - base, frame_end_sample(k) - base
                probs[i] = self.silero.feed(ctx.audio[lo:hi])
            return probs
        return None

    def _warn(self, why: str) -> None:
        if not self._warned:
            log.warning("silence gate: vad = %s but %s; gating on the RMS level only", self.vad_mode, why)
            self._warned = True

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        probs = self._speech_probs(ctx) if self.vad_mode != "off" else None
        rms = ctx.rms
        mult, mask = self._mult, self._mask
        for i in range(values.shape[0]):
            level = float(rms[i])
            speech = probs is None or float(probs[i]) >= self.vad_threshold
            if self.is_open:
                if level < self.close_rms or not speech:
                    self._quiet += 1
                    if self._quiet > self.hold:
                        self.is_open = False
                else:
                    self._quiet = 0
            elif level >= self.open_rms and speech:
                self.is_open = True
                self._quiet = 0
            if self.is_open:
                self.position = min(1.0, self.position + self.up)
            else:
                self.position = max(0.0, self.position - self.down)
            g = self.floor + (1.0 - self.floor) * _smoothstep(self.position)
            self.gain = g
            if g >= 1.0:
                continue
            # mult = 1 - mask * (1 - g): g on the gated channels, 1 elsewhere
            np.multiply(mask, np.float32(1.0 - g), out=mult)
            np.subtract(np.float32(1.0), mult, out=mult)
            values[i] *= mult
