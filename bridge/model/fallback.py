"""Switching to the fallback model while the outputs keep running.

The primary model can fail in two ways: it does not load (missing or broken
file, provider error, out of memory), handled when the bridge starts; or it
loads but keeps missing its deadlines (a CPU too slow for it).  For the second,
:class:`FallbackSwitch` watches each hop's outcome; once misses have lasted
``after_s``, hop after hop (a gap in the input or a one-off stall of the hop
loop is not the model's doing and ends a streak), it loads the fallback on a background thread, so frames keep
flowing from the primary meanwhile, and hands it over at a hop boundary.  The
audio history and the frame counter belong to the stream, not the model, so
the switch leaves no gap in frame numbers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.errors import BridgeError


@dataclass(frozen=True, slots=True)
class FallbackEvent:
    """What ``--stats`` reports about a switch."""

    from_model: str
    to_model: str
    reason: str
    after_s: float  #: from the failure (or the first missed deadline) to the fallback running
    at_frame: int  #: first frame the fallback produced

    def as_dict(self) -> dict[str, Any]:
        return {"from": self.from_model, "to": self.to_model, "reason": self.reason,
                "after_s": round(self.after_s, 3), "at_frame": self.at_frame}  # fmt: skip


class FallbackSwitch:
    """Decides when the primary has missed deadlines long enough, and loads the fallback."""

    def __init__(self, load: Callable[[], Any] | None, after_s: float, max_latency_ms: float) -> None:
        self._load = load  #: loads the fallback model (None: no fallback configured)
        self.after_s = after_s
        self.max_latency_ms = max_latency_ms
        self._streak_start: float | None = None
        self._catching_up = False  #: the next hop catches up after a hold-up
        self._thread: threading.Thread | None = None
        self._loaded: Any = None
        self.error: str | None = None  #: why the fallback itself failed to load
        self.reason = ""
        self.first_miss = 0.0

    @property
    def armed(self) -> bool:
        return self._load is not None and self.after_s > 0 and self._thread is None

    def observe(self, now: float, missed: bool, held_up: bool = False) -> None:
        """Record one hop: ``missed`` if it dropped frames or sent one later than the budget.

        ``held_up``: something other than the model kept the hop loop from its hops (an
        input gap, a stall in an output or a hook, a starved process).  Such a hop, and
        the catch-up hop after it, say nothing about the model: they end a streak of
        misses instead of extending it, so only misses sustained hop after hop switch.
        """
        if not self.armed:
            return
        if held_up:
            self._streak_start = None
            self._catching_up = True
            return
        if self._catching_up:
            self._catching_up = False
            return
        if not missed:
            self._streak_start = None
            return
        if self._streak_start is None:
            self._streak_start = now
        elif now - self._streak_start >= self.after_s:
            self.first_miss = self._streak_start
            self.reason = (
                f"missed its {self.max_latency_ms:g} ms latency budget for {now - self._streak_start:.1f} s"
            )
            self._thread = threading.Thread(target=self._load_in_background, name="a2e-fallback", daemon=True)
            self._thread.start()

    def request(self, load: Callable[[], Any], reason: str) -> bool:
        """Load another model on the background thread now (the console's ``model``
        command) and hand it over at a hop like a fallback; False while a load is under way."""
        if self._thread is not None and self._thread.is_alive():
            return False
        self._load, self.reason, self.first_miss = load, reason, time.monotonic()
        self._thread = threading.Thread(target=self._load_in_background, name="a2e-model-switch", daemon=True)
        self._thread.start()
        return True

    def _load_in_background(self) -> None:
        try:
            assert self._load is not None
            self._loaded = self._load()
        except BridgeError as e:
            self.error = str(e)

    def take(self) -> Any:
        """The loaded fallback, once; None until it is ready (or if it failed)."""
        loaded, self._loaded = self._loaded, None
        return loaded

    @staticmethod
    def now() -> float:
        return time.monotonic()
