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
    """soxr's streaming resampler (state kept between blocks) for non-integer ratios.

    soxr holds back output while its filter fills (about 20 ms at 44.1 kHz, HQ),
    which is latency; integer ratios therefore use :class:`FirDecimator`.
    """

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE) -> None:
        import soxr

        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def process(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        return self._stream.resample_chunk(x, last=last)


class FirDecimator:
    """Streaming integer-factor decimator (48, 32, 96 kHz -> 16 kHz) with ~1 ms delay.

    A linear-phase Kaiser-windowed sinc low-pass (cut-off 7 kHz) evaluated only at
    the kept samples.  Its group delay is a whole number of output samples, which
    are dropped at the start and flushed with silence at the end, so output
    sample j is aligned with input time j/16000 and no sample is lost.
    """

    def __init__(self, factor: int, half_taps_out: int = 16, cutoff_hz: float = 7000.0) -> None:
        self.factor = factor
        taps = 2 * half_taps_out * factor + 1
        n = np.arange(taps) - (taps - 1) / 2
        fc = cutoff_hz / (SAMPLE_RATE * factor)  # cycles per input sample
        h = 2 * fc * np.sinc(2 * fc * n) * np.kaiser(taps, 8.0)
        self._h = (h / h.sum()).astype(np.float32)
        self._delay_in = half_taps_out * factor
        self._to_drop = half_taps_out  # outputs before the first aligned one
        self._buf = np.zeros(taps - 1 + 4096, dtype=np.float32)
        self._seen = 0  # input samples consumed so far

    def process(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        if last:
            x = np.concatenate([x, np.zeros(self._delay_in, dtype=np.float32)])
        hist = self._h.shape[0] - 1
        n = x.shape[0]
        if hist + n > self._buf.shape[0]:
            grown = np.zeros(hist + n, dtype=np.float32)
            grown[:hist] = self._buf[:hist]
            self._buf = grown
        buf = self._buf[: hist + n]
        buf[hist:] = x
        first = (-self._seen) % self.factor  # next input index that is a multiple of factor
        # The full-rate convolution is a few thousand MACs per block: cheaper in C than
        # any Python-level polyphase bookkeeping.
        out = np.convolve(buf, self._h, mode="valid")[first :: self.factor]
        count = out.shape[0]
        self._buf[:hist] = buf[n : n + hist]
        self._seen += n
        if self._to_drop:
            drop = min(self._to_drop, count)
            self._to_drop -= drop
            out = out[drop:]
        return out


def make_resampler(in_rate: int) -> Resampler:
    """The lowest-latency resampler for ``in_rate`` -> 16 kHz."""
    if in_rate == SAMPLE_RATE:
        return PassThrough()
    if in_rate % SAMPLE_RATE == 0:
        return FirDecimator(in_rate // SAMPLE_RATE)
    return SoxrResampler(in_rate)


class Conditioner:
    """Turns raw ring frames (n x channels, native rate) into 16 kHz mono float32."""

    def __init__(self, in_rate: int, channels: int, channel: int | str = "mix",
                 max_block: int = 8192) -> None:  # fmt: skip
        if isinstance(channel, int) and channel >= channels:
            raise BridgeError(
                f"input.channel = {channel} but the input has {channels} channel(s); "
                f'allowed: 0..{channels - 1} or "mix"'
            )
        self.in_rate = in_rate
        self.channel = channel
        self.nonfinite_samples = 0  #: NaN/Inf samples zeroed before the model saw them
        self._mono = np.zeros(max_block, dtype=np.float32)
        self._finite = np.zeros(max_block, dtype=bool)
        self._resampler = make_resampler(in_rate)

    @property
    def picks_one_channel_at_16k(self) -> bool:
        """Whether conditioning is only taking one channel (16 kHz in, no mix): a capture
        group can then do it for all its members with one copy."""
        return isinstance(self._resampler, PassThrough) and self.channel != "mix"

    def scrub(self, columns: np.ndarray) -> None:
        """Zero (and count) the NaN/Inf of ``columns``, this conditioner's share of a group's pick."""
        finite = np.isfinite(columns)
        bad = columns.size - int(np.count_nonzero(finite))
        if bad:
            self.nonfinite_samples += bad
            columns[~finite] = 0.0

    def restart(self) -> None:
        """A new segment of audio follows a gap: the resampler starts afresh (its filter
        state belongs to audio before the gap, which was flushed with ``last``)."""
        self._resampler = make_resampler(self.in_rate)

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
        # One BLAS call detects NaN/Inf (they poison the dot product); scan only then.
        if not np.isfinite(np.dot(mono, mono)):
            finite = self._finite[:n]
            np.isfinite(mono, out=finite)
            bad = n - int(np.count_nonzero(finite))
            self.nonfinite_samples += bad
            mono[~finite] = 0.0
        return self._resampler.process(mono, last=last)
