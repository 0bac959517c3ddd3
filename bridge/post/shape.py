"""Per-frame reshaping: left/right symmetrisation and per-channel response curves.

Both are stateless and act on each frame alone: no delay.
"""

from __future__ import annotations

import numpy as np

from bridge.blendshapes import NUM_BLENDSHAPES, canonical_index
from bridge.errors import BridgeError
from bridge.finite import LIMIT, bound
from bridge.post.base import FrameContext

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

    def __init__(self, mode: str = "average", max_block: int = 64) -> None:
        if mode not in ("average", "max", "min"):
            raise BridgeError(f'post.symmetrize = {mode!r}; allowed: "off", "average", "max", "min"')
        self.mode = mode
        # partner[j]: the other side of channel j's pair, or j itself (combining j with itself
        # leaves it unchanged, so one gather + one ufunc over all 52 channels does every pair)
        self.partner = np.arange(NUM_BLENDSHAPES, dtype=np.intp)
        for a, b in LEFT_RIGHT_PAIRS:
            self.partner[canonical_index(a)], self.partner[canonical_index(b)] = (
                canonical_index(b), canonical_index(a),
            )  # fmt: skip
        self._other = np.zeros((max_block, NUM_BLENDSHAPES), dtype=np.float32)

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        n = values.shape[0]
        if n > self._other.shape[0]:
            self._other = np.zeros((n, NUM_BLENDSHAPES), dtype=np.float32)
        other = self._other[:n]
        np.take(values, self.partner, axis=1, out=other)
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
    letting the big ones clip, offset shifts the rest pose.  Only the operations a
    configuration actually uses run.  Values are kept within +-``bridge.finite.LIMIT``
    before and after (and the power's base below what would overflow), so no input and no
    setting overflows to Inf or makes a NaN.
    """

    delay_frames = 0

    def __init__(
        self,
        gain: dict[str, float] | None = None,
        offset: dict[str, float] | None = None,
        gamma: dict[str, float] | None = None,
    ) -> None:
        self.gain = _per_channel(gain or {}, 1.0, "gain")
        self.offset = _per_channel(offset or {}, 0.0, "offset")
        self.gamma = _per_channel(gamma or {}, 1.0, "gamma")
        if (self.gamma <= 0).any():
            raise BridgeError("post.curve.gamma values must be > 0")
        self._use_gain = bool((self.gain != 1.0).any())
        self._use_offset = bool((self.offset != 0.0).any())
        self._use_gamma = bool((self.gamma != 1.0).any())
        # x ** gamma stays within LIMIT for x within LIMIT ** min(1, 1 / gamma)
        self._gamma_cap = (np.float64(LIMIT) ** np.minimum(1.0, 1.0 / self.gamma.astype(np.float64))).astype(
            np.float32
        )

    @property
    def identity(self) -> bool:
        return not (self._use_gain or self._use_offset or self._use_gamma)

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        bound(values)
        if self._use_gamma:
            np.clip(values, 0.0, self._gamma_cap, out=values)
            np.power(values, self.gamma, out=values)
        if self._use_gain:
            values *= self.gain
        if self._use_offset:
            values += self.offset
        if self._use_gain or self._use_offset:
            bound(values)
