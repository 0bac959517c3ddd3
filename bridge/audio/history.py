"""The 16 kHz stream of one input, as far back as the model's window needs.

A linear buffer (not a ring) so a window is always one contiguous view that
can go to ONNX Runtime without a copy.  Before the stream starts the buffer
holds zeros: the first windows are zero-padded on the left, as upstream does.
"""

from __future__ import annotations

import numpy as np


class AudioHistory:
    """Append-only view of the newest ``keep`` samples of a 16 kHz stream."""

    def __init__(self, window: int, keep: int) -> None:
        self.window = window
        self.keep = max(keep, window)
        self._buf = np.zeros(2 * self.keep + window, dtype=np.float32)
        self._base = -window  #: stream index of _buf[0] (negative: leading zeros)
        self.count = 0  #: samples appended so far (the sample clock)

    def append(self, x: np.ndarray) -> None:
        n = x.shape[0]
        if n == 0:
            return
        if n > self.keep:  # only the newest `keep` can ever be asked for
            self._base += n - self.keep  # pretend the head was appended and dropped
            self.count += n - self.keep
            x = x[n - self.keep :]
            n = self.keep
        end = self._room(n)
        self._buf[end : end + n] = x
        self.count += n

    def _room(self, n: int) -> int:
        """Where ``n`` new samples go, sliding the newest ``keep`` to the front first when they
        would not fit (one memmove, rarely)."""
        end = self.count - self._base
        if end + n > self._buf.shape[0]:
            start = end - self.keep
            self._buf[: self.keep] = self._buf[start:end]
            self._base += start
            end = self.keep
        return end

    def append_silence(self, n: int) -> None:
        """Append ``n`` zeros (audio that was lost) without allocating them."""
        if n <= 0:
            return
        if n >= self.keep:  # everything still held is older than the newest `keep`
            self._buf[:] = 0.0
            self.count += n
            self._base = self.count - self.keep
            return
        end = self._room(n)
        self._buf[end : end + n] = 0.0
        self.count += n

    @property
    def first_window_end(self) -> int:
        """Smallest ``end`` for which :meth:`window_ending` still has the whole window."""
        return self._base + self.window

    def span(self, start: int, end: int) -> np.ndarray:
        """Samples ``[start, end)`` of the stream (a view); they must still be held."""
        if start < self._base or end > self.count or end - start > self.window:
            raise IndexError(f"span [{start}, {end}) is outside the history [{self._base}, {self.count})")
        return self._buf[start - self._base : end - self._base]

    def window_ending(self, end: int) -> np.ndarray:
        """The ``window`` samples before stream index ``end`` (a view; zeros before sample 0)."""
        lo = end - self.window - self._base
        if lo < 0 or end > self.count:
            raise IndexError(f"window ending at {end} is outside the history [{self._base}, {self.count})")
        return self._buf[lo : lo + self.window]

    @property
    def oldest(self) -> int:
        """Oldest stream index still held."""
        return max(self._base, self.count - self.keep)
