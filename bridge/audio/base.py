"""What every audio source offers the pipeline.

A source owns a :class:`SampleRing` sized for its native rate and channel count and
fills it from its own thread (PortAudio's callback thread, or a file reader
thread).  The hop loop is the ring's only consumer.  Sources do not resample or
pick channels: that is the conditioner's job on the consumer side, so the
producer stays a plain copy.
"""

from __future__ import annotations

from typing import Protocol

from bridge.audio.ring import SampleRing


class AudioSource(Protocol):
    """A started source writes into ``ring`` until it is stopped or, for files, finished."""

    name: str  #: what the user picked (device name, file path), for logs and stats
    samplerate: int  #: native rate of the frames in ``ring``
    channels: int  #: native channel count of the frames in ``ring``
    ring: SampleRing

    def start(self) -> None: ...

    def stop(self) -> None: ...

    @property
    def finished(self) -> bool:
        """True once a finite source has written its last frame (never for devices)."""
        ...

    @property
    def error(self) -> str | None:
        """A one-line description of a failure in the source's thread, if any."""
        ...
