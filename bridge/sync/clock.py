"""Time of day for ``time.monotonic()`` stamps, with one offset taken once.

Frames carry ``time.monotonic()`` capture times (immune to clock steps).  A receiver
wants Unix seconds; calling ``time.time()`` per frame would let an NTP step mid-run
make two frames 33 ms apart look seconds apart.  One offset, taken when this module is
first imported (the bridge's start), turns every stamp into time of day consistently.
"""

from __future__ import annotations

import time

#: ``time.time() - time.monotonic()`` at start: monotonic + this = Unix seconds.
WALL_OFFSET: float = time.time() - time.monotonic()


def wall_time(monotonic: float) -> float:
    """Unix seconds of a ``time.monotonic()`` stamp (with the offset taken at start)."""
    return monotonic + WALL_OFFSET
