"""The unit that flows from the model to every output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FPS = 30
SAMPLE_RATE = 16_000


def frame_end_sample(k: int) -> int:
    """First 16 kHz sample index *after* frame ``k``: frame k depicts [k/30, (k+1)/30) s.

    ``ceil((k + 1) * 16000 / 30)`` in integers, so frame boundaries are exact
    for any length of stream (30 frames per 16000 samples, no drift).
    """
    return -((-(k + 1) * SAMPLE_RATE) // FPS)


def frames_complete(samples: int) -> int:
    """How many whole frames ``samples`` 16 kHz samples cover."""
    return (samples * FPS) // SAMPLE_RATE


@dataclass(slots=True)
class FaceFrame:
    """One published face: frame ``number`` depicts audio [number/30, (number+1)/30) s.

    ``values`` are the 52 ARKit weights in Epic's order (``blendshapes.ARKIT_NAMES``);
    ``head`` the 9 Live Link head/eye values (degrees / 180), zeros unless a stage sets them.
    ``capture_time`` is the ``time.monotonic()`` at which the frame's last audio sample was
    captured, so ``send_time - capture_time`` is the latency a viewer sees.
    ``performer`` is the index of the performer (in ``BridgeConfig.cast``) whose face this is:
    an output sends only the frames of the performers it serves, each under its own subject.
    """

    number: int
    values: np.ndarray
    capture_time: float
    head: np.ndarray
    subject: str = ""
    #: 1 - CTC blank probability for this frame, when the model has a CTC head
    speech_prob: float | None = None
    #: transcript characters (greedy CTC) whose audio ended in this frame; usually ""
    text: str = ""
    #: index of the performer in ``BridgeConfig.cast`` (0 for the one performer of a plain config)
    performer: int = 0
    #: ``time.monotonic()`` when the frame was made to be sent (None: not live); an encoder's
    #: ``latency_ms`` is ``sent_at - capture_time``, so encoders need no clock of their own
    sent_at: float | None = None

    @property
    def stream_time(self) -> float:
        """Start of the frame on the audio clock, in seconds."""
        return self.number / FPS


@dataclass(slots=True)
class FrameBatch:
    """The frames of several performers from one model call, as arrays rather than objects.

    Row ``i`` holds ``stride`` consecutive frames of performer ``performers[i]``, numbered
    from ``first[i]``; frame ``(i, f)`` is exactly :meth:`frame` ``(i, f)``.  Outputs encode
    a whole batch at once (``Output.publish_batch``), so hundreds of performers cost a few
    array operations per hop rather than an object and a call per frame.  The arrays are the
    engine's reused buffers: valid only during the call they are handed to.
    """

    performers: np.ndarray  #: ``[R]`` performer indices (``FaceFrame.performer``)
    first: np.ndarray  #: ``[R]`` int64: each row's first frame number
    values: np.ndarray  #: ``[R, F, 52]`` float32, Epic's order
    head: np.ndarray  #: ``[R, F, 9]`` float32 Live Link head/eye values
    capture_time: np.ndarray  #: ``[R, F]`` float64 ``time.monotonic()`` of each frame's last sample
    subjects: Sequence[str]  #: ``[R]`` each row's subject
    speech_prob: np.ndarray | None = None  #: ``[R, F]`` float32, or None (no CTC head)
    texts: Sequence[str] | None = None  #: ``[R]`` text ending in each row's last frame, or None
    sent_at: float | None = None  #: ``time.monotonic()`` when the batch was made to be sent

    @property
    def stride(self) -> int:
        """Frames per row."""
        return int(self.values.shape[1])

    def frame(self, i: int, f: int) -> FaceFrame:
        """Row ``i``'s ``f``-th frame as a :class:`FaceFrame` (views into the batch's arrays)."""
        last = self.values.shape[1] - 1
        prob = self.speech_prob
        return FaceFrame(
            int(self.first[i]) + f, self.values[i, f], float(self.capture_time[i, f]), self.head[i, f],
            self.subjects[i], float(prob[i, f]) if prob is not None else None,
            self.texts[i] if self.texts is not None and f == last else "", int(self.performers[i]),
            self.sent_at,
        )  # fmt: skip
