"""Consumer-side audio conditioning: pick or mix channels, scrub NaN/Inf, resample to 16 kHz.

This runs in the hop loop, never in the capture callback.  Resamplers sit
behind one small interface so the pipeline does not care whether audio arrives
at 16 kHz already (pass-through) or at any other rate (soxr's streaming
resampler, which keeps its filter state between blocks, so block edges are
seamless and the output clock is exact).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from bridge.errors import BridgeError
from bridge.frame import SAMPLE_RATE


class Resampler(Protocol):
    """Streaming mono resampler to 16 kHz."""

    def process(self, x: np.ndarray, last: bool = False) -> np.ndarray: ...


class PassThrough:
    """The input is already at 16 kHz."""

    def process(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        return x


class SoxrResampler:
    """soxr's streaming resampler (high quality, state kept between blocks)."""

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE) -> None:
        import soxr

        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def process(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        return self._stream.resample_chunk(x, last=last)


def make_resampler(in_rate: int) -> Resampler:
    return PassThrough() if in_rate == SAMPLE_RATE else SoxrResampler(in_rate)


class Conditioner:
    """Turns raw ring frames (n x channels, native rate) into 16 kHz mono float32."""

    def __init__(self, in_rate: int, channels: int, channel: int | str = "mix",
                 max_block: int = 8192) -> None:  # fmt: skip
        if isinstance(channel, int) and channel >= channels:
            raise BridgeError(
                f"input.channel = {channel} but the input has {channels} channel(s); "
                f"allowed: 0..{channels - 1} or \"mix\""
            )
        self.in_rate = in_rate
        self.channel = channel
        self.nonfinite_samples = 0  #: NaN/Inf samples zeroed before the model saw them
        self._mono = np.zeros(max_block, dtype=np.float32)
        self._finite = np.zeros(max_block, dtype=bool)
        self._resampler = make_resampler(in_rate)

    def process(self, raw: np.ndarray, last: bool = False) -> np.ndarray:
        """Condition ``raw`` (n x channels).  The result is valid until the next call."""
        n = raw.shape[0]
        if n > self._mono.shape[0]:
            self._mono = np.zeros(n, dtype=np.float32)
            self._finite = np.zeros(n, dtype=bool)
        mono = self._mono[:n]
        if self.channel == "mix" and raw.shape[1] > 1:
            np.mean(raw, axis=1, out=mono)
        else:
            np.copyto(mono, raw[:, 0 if self.channel == "mix" else self.channel])
        finite = self._finite[:n]
        np.isfinite(mono, out=finite)
        if not finite.all():
            bad = n - int(np.count_nonzero(finite))
            self.nonfinite_samples += bad
            mono[~finite] = 0.0
        return self._resampler.process(mono, last=last)
