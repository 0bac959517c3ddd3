"""One performer's running state: everything of a voice that must never leak into another.

The engine computes many performers in one model call and one post-processing call,
but each keeps its own stream (conditioner, history, scheduler, capture clock), its own
speech track (its row of the publisher's ``SpeechTracks``), its own rest pose and its own
frame numbering.  Only the capture stream itself is shared, by performers on the channels
of one device (see
:class:`~bridge.streams.capture.CaptureGroup`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.streams.keepalive import RestPose
from bridge.streams.stream import InputStream


@dataclass(eq=False)
class Performer:
    """A performer of the cast: index ``index`` in ``BridgeConfig.cast``."""

    index: int
    name: str
    subject: str  #: the subject its frames carry (outputs route by ``index`` and use their own)
    identity: int  #: LAM identity index its windows are computed with
    stream: InputStream
    group: int  #: index of its capture group in the engine
    rest: RestPose = field(default_factory=RestPose)
    published: int = 0  #: frames published (with audio or at rest)

    @property
    def scheduler(self):  # -> HopScheduler
        return self.stream.scheduler
