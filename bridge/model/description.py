"""What a model looks like from the outside: its input and output names and its output order.

The runner checks a loaded ONNX graph against its description and maps the
blendshape outputs *by name* into the bridge's canonical (Epic) order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bridge.blendshapes import ALPHABETICAL_NAMES, ARKIT_NAMES


@dataclass(frozen=True, slots=True)
class ModelDescription:
    """The interface of one model family."""

    family: str  #: "lam" or "wav2arkit"
    audio_input: str  #: float32 [batch, samples] raw 16 kHz audio
    identity_input: str | None  #: float32 [batch, identity_classes] one-hot, or None
    blendshapes_output: str  #: float32 [batch, frames, 52]
    asr_output: str | None  #: float32 [batch, frames50, vocab] CTC logits, or None
    output_order: tuple[str, ...]  #: the 52 names, in the order the model emits them
    identity_classes: int = 12
    fps: int = 30
    sample_rate: int = 16_000

    def with_order(self, order: tuple[str, ...]) -> ModelDescription:
        return replace(self, output_order=order)


#: LAM Audio-to-Expression as exported by omote-ai (seed model card): Epic/ARKit order.
LAM = ModelDescription(
    family="lam",
    audio_input="audio",
    identity_input="identity",
    blendshapes_output="blendshapes",
    asr_output="asr_logits",
    output_order=ARKIT_NAMES,
)

#: myned-ai/wav2arkit_cpu: one input, no identity, no CTC head, alphabetical order.
WAV2ARKIT = ModelDescription(
    family="wav2arkit",
    audio_input="audio_waveform",
    identity_input=None,
    blendshapes_output="blendshapes",
    asr_output=None,
    output_order=ALPHABETICAL_NAMES,
)

FAMILIES = {"lam": LAM, "wav2arkit": WAV2ARKIT}
