"""The 16 kHz stream of one input, as far back as the model's window needs.

A linear buffer (not a ring) so a window is always one contiguous view that
can go to ONNX Runtime without a copy.  Before the stream starts the buffer
holds zeros: the first windows are zero-padded on the left, as upstream does.

The histories of the performers of one capture group can be rows of one ``[P, n]``
array (:class:`SharedHistories`): they move in step (one capture, one sample clock),
so a turn appends every performer's new audio with one copy, and the windows of a
batch are one slice of it, not one copy per performer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class AudioHistory:
    """Append-only view of the newest ``keep`` samples of a 16 kHz stream."""

    def __init__(self, window: int, keep: int) -> None:
        self.window = window
        self.keep = max(keep, window)
        self._buf = np.zeros(self.size, dtype=np.float32)
        #: the group's histories this one is a row of, or None
        self.shared: SharedHistories | None = None
        self.row = 0  #: this history's row in ``shared``
        #: the oldest stream sample anyone will still ask for (None: any of the newest ``keep``);
        #: a slide keeps only from there, so it copies a window or so rather than ``keep``
        self.needed_from: Callable[[], int] | None = None
        self._base = -window  #: stream index of _buf[0] (negative: leading zeros)
        self.count = 0  #: samples appended so far (the sample clock)

    @property
    def size(self) -> int:
        """Samples the buffer holds: twice ``keep`` (so sliding is rare) and a window of zeros."""
        return 2 * self.keep + self.window

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
        """Where ``n`` new samples go, sliding what is still needed to the front first when
        they would not fit (one memmove, rarely)."""
        end = self.count - self._base
        if end + n > self._buf.shape[0]:
            kept = self.retained()
            start = end - kept
            self._buf[:kept] = self._buf[start:end]
            self._base += start
            end = kept
        return end

    def retained(self) -> int:
        """How many of the newest samples a slide keeps: from :attr:`needed_from` on (at least
        a window, at most ``keep``).  At 256 performers a slide of ``keep`` (5 s) moved 80 MB
        and held the hop loop up for tens of ms every few seconds."""
        if self.needed_from is None:
            return min(self.keep, self.count - self._base)
        return min(self.keep, self.count - self._base, max(self.window, self.count - self.needed_from()))

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


class SharedHistories:
    """The histories of one capture group's performers as rows of one ``[P, n]`` array.

    Each row stays an :class:`AudioHistory` with its own count (a member can still be fed
    alone: a gap, the end of a file); while all rows are *in step* (the same count and base,
    which one capture keeps them at), :meth:`append_columns` moves every row's new audio with
    one copy and :meth:`windows` gives a batch's windows as one slice.
    """

    def __init__(self, histories: list[AudioHistory]) -> None:
        first = histories[0]
        if any(h.window != first.window or h.keep != first.keep for h in histories):
            raise ValueError("shared histories need one window and one keep")
        self.histories = histories
        self.buf = np.zeros((len(histories), first.size), dtype=np.float32)
        for i, h in enumerate(histories):
            self.buf[i] = h._buf
            h._buf, h.shared, h.row = self.buf[i], self, i

    def in_step(self) -> bool:
        """Whether every row has the same count and base (their windows are one slice)."""
        first = self.histories[0]
        count, base = first.count, first._base
        return all(h.count == count and h._base == base for h in self.histories)

    def append_columns(self, columns: np.ndarray) -> None:
        """Append column ``i`` of ``columns`` (``[n, P]``) to row ``i``; the rows must be in step."""
        n = columns.shape[0]
        if n == 0:
            return
        first = self.histories[0]
        if n > first.keep:  # as AudioHistory.append: only the newest ``keep`` can be asked for
            for h in self.histories:
                h._base += n - first.keep
                h.count += n - first.keep
            columns, n = columns[n - first.keep :], first.keep
        end = first.count - first._base
        if end + n > self.buf.shape[1]:  # slide every row (rarely)
            kept = max(h.retained() for h in self.histories)
            start = end - kept
            # Row by row: as one 2-D assignment the rows' spans interleave in memory, so numpy
            # copies through a temporary (16 MB at 256 one-second windows, fresh pages every
            # slide): up to 9 ms instead of 1.5-2, every ~10 s, all in the hop loop.
            buf = self.buf
            for row in range(buf.shape[0]):
                buf[row, :kept] = buf[row, start:end]
            for h in self.histories:
                h._base += start
            end = kept
        self.buf[:, end : end + n] = columns.T
        for h in self.histories:
            h.count += n

    def spans(self, rows: slice, start: int, end: int) -> np.ndarray:
        """Samples ``[start, end)`` of rows ``rows`` (a ``[R, end - start]`` view); the rows must
        be in step and still hold them."""
        first = self.histories[rows.start]
        if start < first._base or end > first.count or end - start > first.window:
            raise IndexError(f"span [{start}, {end}) is outside the history [{first._base}, {first.count})")
        return self.buf[rows, start - first._base : end - first._base]

    def windows(self, rows: slice, end: int) -> np.ndarray:
        """Rows ``rows``' windows ending at stream index ``end`` (a ``[R, window]`` view);
        the rows must be in step."""
        first = self.histories[rows.start]
        lo = end - first.window - first._base
        if lo < 0 or end > first.count:
            raise IndexError(f"window ending at {end} is outside the history [{first._base}, {first.count})")
        return self.buf[rows, lo : lo + first.window]
