"""How far behind its capture the voice is played, and when that may change.

With each clock's schedule measured (:mod:`bridge.sync.drift`), sample ``x`` of the
capture, written at output stream sample ``s``, plays ``delay = out_offset +
output_latency + s / rate - in_offset - (x + 1) / rate`` after it was captured, for every
sample at once.

:class:`DelayPolicy` turns the error against the wanted delay into samples to insert
(silence) or drop: at once before anything was played, later only inside silence and by
small steps, so speech is never cut or stretched.  The same correction keeps the delay
when the two devices' clocks drift apart (single samples, a few per minute at 100 ppm).
"""

from __future__ import annotations

#: errors smaller than this are left alone (the delay holds within it)
TOLERANCE_MS = 0.5
#: the most one correction (or one auto step) changes the delay, and only in silence
MAX_STEP_MS = 10.0
#: auto mode: the wanted delay must move this much before the delay follows it
AUTO_HYSTERESIS_MS = 5.0
#: auto mode: frames of latency known before the voice starts
AUTO_MIN_FRAMES = 15


class DelayPolicy:
    """The wanted delay and the correction allowed now (samples: + insert silence, - drop).

    ``fixed_ms`` None is auto mode: the wanted delay is the voice's latency p95 plus
    ``receiver_ms``, followed only in silence, ``MAX_STEP_MS`` at a time, once it has
    moved ``AUTO_HYSTERESIS_MS`` away.
    """

    def __init__(self, rate: int, fixed_ms: float | None, receiver_ms: float = 0.0) -> None:
        self.rate = rate
        self.fixed_ms = fixed_ms
        self.receiver_ms = receiver_ms
        self.target_ms: float | None = fixed_ms  #: the delay held now
        self.aligned = False  #: the voice has started at the wanted delay
        self.steps = 0  #: auto-mode changes of the wanted delay
        self._tolerance = max(1, round(TOLERANCE_MS * rate / 1000.0))
        self._max_step = max(1, round(MAX_STEP_MS * rate / 1000.0))

    @property
    def auto(self) -> bool:
        return self.fixed_ms is None

    def restart(self) -> None:
        """Start again (the output device is back, the input jumped): align at once."""
        self.aligned = False
        if self.auto:
            self.target_ms = None

    def follow(self, p95_ms: float | None, frames: int, silent: bool, floor_ms: float = 0.0) -> None:
        """Auto mode: move the held delay toward ``p95_ms + receiver_ms`` (in silence only),
        never below ``floor_ms`` (the least delay the voice can be fed in time for)."""
        if not self.auto or p95_ms is None or frames < AUTO_MIN_FRAMES:
            return
        wanted = min(max(p95_ms + self.receiver_ms, floor_ms), 2000.0)
        if self.target_ms is None:
            self.target_ms = wanted
            return
        gap = wanted - self.target_ms
        if silent and self.aligned and abs(gap) >= AUTO_HYSTERESIS_MS:
            self.target_ms += max(-MAX_STEP_MS, min(MAX_STEP_MS, gap))
            self.steps += 1

    def underran(self, delay_ms: float) -> None:
        """Auto mode: the output ran dry (the callback played silence, so the voice is later
        now): keep the later delay rather than catch up into another underrun."""
        if self.auto and self.target_ms is not None and self.aligned and delay_ms > self.target_ms:
            self.target_ms = min(delay_ms, 2000.0)

    def correction(self, delay_ms: float, silent: bool) -> int:
        """Samples to insert (> 0) or drop (< 0) before the next block, for it to play at
        the held delay: all of it before the voice has started, else in silence, one step."""
        if self.target_ms is None:
            return 0
        k = round((self.target_ms - delay_ms) * self.rate / 1000.0)
        if not self.aligned:
            self.aligned = True
            return k
        if not silent or abs(k) < self._tolerance:
            return 0
        return max(-self._max_step, min(self._max_step, k))
