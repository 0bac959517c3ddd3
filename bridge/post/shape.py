"""Per-frame reshaping: left/right symmetrisation and per-channel response curves.

Both are stateless and act on each frame alone: no delay.  They work on any block shape
(``[P, F, 52]`` or ``[F, 52]``); the curve's settings are per performer.
"""

from __future__ import annotations

import numpy as np

from bridge.blendshapes import NUM_BLENDSHAPES, canonical_index
from bridge.errors import BridgeError
from bridge.post.base import FrameContext, Scratch, as_batch
from bridge.post.finite import LIMIT, bound

#: The 20 left/right pairs upstream LAM symmetrises.
LEFT_RIGHT_PAIRS: tuple[tuple[str, str], ...] = (
    ("jawLeft", "jawRight"), ("mouthLeft", "mouthRight"), ("mouthSmileLeft", "mouthSmileRight"),
    ("mouthFrownLeft", "mouthFrownRight"), ("mouthDimpleLeft", "mouthDimpleRight"),
    ("mouthStretchLeft", "mouthStretchRight"), ("mouthPressLeft", "mouthPressRight"),
    ("mouthLowerDownLeft", "mouthLowerDownRight"), ("mouthUpperUpLeft", "mouthUpperUpRight"),
    ("cheekSquintLeft", "cheekSquintRight"), ("noseSneerLeft", "noseSneerRight"),
    ("browDownLeft", "browDownRight"), ("browOuterUpLeft", "browOuterUpRight"),
    ("eyeBlinkLeft", "eyeBlinkRight"), ("eyeLookDownLeft", "eyeLookDownRight"),
    ("eyeLookInLeft", "eyeLookInRight"), ("eyeLookOutLeft", "eyeLookOutRight"),
    ("eyeLookUpLeft", "eyeLookUpRight"), ("eyeSquintLeft", "eyeSquintRight"),
    ("eyeWideLeft", "eyeWideRight"),
)  # fmt: skip


class Symmetrize:
    """Give both sides of each pair the same value (average, max or min of the two).

    The model, fed mono audio, has no business making one side move more than
    the other; its asymmetries are noise that reads as a twitch.  Note that
    jawLeft/jawRight and mouthLeft/mouthRight are sideways moves, so making them
    equal cancels them on most rigs: that is upstream's choice too.
    """

    delay_frames = 0
    STRUCTURE = ("mode",)

    def __init__(self, mode: str = "average") -> None:
        if mode not in ("average", "max", "min"):
            raise BridgeError(f'post.symmetrize = {mode!r}; allowed: "off", "average", "max", "min"')
        self.performers = 1
        self.mode = mode
        # partner[j]: the other side of channel j's pair, or j itself (combining j with itself
        # leaves it unchanged, so one gather + one ufunc over all 52 channels does every pair)
        self.partner = np.arange(NUM_BLENDSHAPES, dtype=np.intp)
        for a, b in LEFT_RIGHT_PAIRS:
            self.partner[canonical_index(a)], self.partner[canonical_index(b)] = (
                canonical_index(b), canonical_index(a),
            )  # fmt: skip
        self._scratch = Scratch()

    def process(self, values: np.ndarray, ctx: FrameContext | None) -> None:
        other = self._scratch.get("other", values.shape)
        np.take(values, self.partner, axis=-1, out=other)
        if self.mode == "average":  # halves first: a + b of two huge values would overflow
            values *= np.float32(0.5)
            other *= np.float32(0.5)
            values += other
        elif self.mode == "max":
            np.maximum(values, other, out=values)
        else:
            np.minimum(values, other, out=values)


def _per_channel(table: dict[str, float], default: float, what: str) -> np.ndarray:
    out = np.full(NUM_BLENDSHAPES, default, dtype=np.float32)
    for name, value in table.items():
        try:
            out[canonical_index(name)] = value
        except BridgeError as e:
            raise BridgeError(f"post.curve.{what}: {e}") from None
        if not abs(float(value)) <= LIMIT:
            raise BridgeError(
                f"post.curve.{what}.{name} = {value!r} must be a finite number within +-{LIMIT:.0e}"
            )
    return out


class Curve:
    """``y = gain * max(x, 0) ** gamma + offset`` per channel (then the chain's clamp).

    Gain lifts a rig that opens too little, gamma < 1 lifts small values without
    letting the big ones clip, offset shifts the rest pose.  Only the operations some
    performer's configuration actually uses run (a performer whose curve lacks one gets
    its exact identity: gain 1, offset 0, no gamma clip).  Values are kept within
    +-``bridge.post.finite.LIMIT`` before and after (and the power's base below what would
    overflow), so no input and no setting overflows to Inf or makes a NaN.
    """

    delay_frames = 0
    ROW_ARRAYS = ("gain", "offset", "gamma", "_gamma_lo", "_gamma_cap", "_gamma_rows")

    def __init__(
        self,
        gain: dict[str, float] | None = None,
        offset: dict[str, float] | None = None,
        gamma: dict[str, float] | None = None,
    ) -> None:
        self.performers = 1
        shape = (1, 1, NUM_BLENDSHAPES)  # [N, 1, 52]: broadcasts over a block's frames
        self.gain = _per_channel(gain or {}, 1.0, "gain").reshape(shape)
        self.offset = _per_channel(offset or {}, 0.0, "offset").reshape(shape)
        self.gamma = _per_channel(gamma or {}, 1.0, "gamma").reshape(shape)
        if (self.gamma <= 0).any():
            raise BridgeError("post.curve.gamma values must be > 0")
        uses_gamma = bool((self.gamma != 1.0).any())
        # x ** gamma stays within LIMIT for x within LIMIT ** min(1, 1 / gamma); a performer
        # whose curve has no gamma keeps its values as they are (clip to +-LIMIT, x ** 1)
        self._gamma_cap = (np.float64(LIMIT) ** np.minimum(1.0, 1.0 / self.gamma.astype(np.float64))).astype(
            np.float32
        )
        self._gamma_lo = np.full((1, 1, 1), 0.0 if uses_gamma else -LIMIT, dtype=np.float32)
        self._gamma_rows = np.array([uses_gamma]).reshape(1, 1, 1)
        self._stacked()

    def _stacked(self) -> None:
        self._use_gain = bool((self.gain != 1.0).any())
        self._use_offset = bool((self.offset != 0.0).any())
        self._use_gamma = bool(self._gamma_rows.any())
        self._all_gamma = bool(self._gamma_rows.all())

    @property
    def identity(self) -> bool:
        return not (self._use_gain or self._use_offset or self._use_gamma)

    def process(self, values: np.ndarray, ctx: FrameContext | None) -> None:
        values, ctx = as_batch(values, ctx)
        rows = None if ctx is None else ctx.rows
        bound(values)
        if self._use_gamma:
            lo, cap, gamma, where = self._gamma_lo, self._gamma_cap, self.gamma, self._gamma_rows
            if rows is not None:
                lo, cap, gamma, where = lo[rows], cap[rows], gamma[rows], where[rows]
            np.clip(values, lo, cap, out=values)
            if self._all_gamma:
                np.power(values, gamma, out=values)
            else:  # performers without a gamma: untouched (x ** 1 need not be exact everywhere)
                np.power(values, gamma, out=values, where=where)
        if self._use_gain:
            values *= self.gain if rows is None else self.gain[rows]
        if self._use_offset:
            values += self.offset if rows is None else self.offset[rows]
        if self._use_gain or self._use_offset:
            bound(values)
