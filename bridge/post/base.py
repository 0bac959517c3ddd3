"""The contract every post-processing stage follows.

Stages are causal and stateful: the hop loop hands them each published block
of frames exactly once, in frame order, and they transform the values in place.
What a stage may need besides the values (the audio's loudness, the model's
speech probability, the frame numbers and their time) comes in a
:class:`FrameContext`, computed once per block by the hop loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(slots=True)
class FrameContext:
    """Per-frame facts about the block being processed (arrays of length n)."""

    first_frame: int  #: frame number of row 0
    rms: np.ndarray  #: float32 (n,): RMS of each frame's own 1/30 s of 16 kHz audio
    speech_prob: np.ndarray | None = None  #: float32 (n,): 1 - CTC blank probability, if the model has it
    head: np.ndarray | None = None  #: float32 (n, 9): Live Link head/eye values a stage may fill
    #: float32: the block's own 16 kHz audio, frames first..first+n-1 back to back (samples
    #: frame_end_sample(first - 1) .. frame_end_sample(first + n - 1)); for the Silero VAD gate
    audio: np.ndarray | None = None

    @property
    def count(self) -> int:
        return int(self.rms.shape[0])


class Stage(Protocol):
    """One causal post-processing step."""

    #: frames of delay this stage adds (documented per stage in docs/)
    delay_frames: int

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        """Transform ``values`` (n x 52, canonical order) in place."""
        ...
