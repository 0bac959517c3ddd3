"""Named models: plain data.

A preset ties a :class:`ModelDescription` to files: real ones on the model hub
or synthetic ones the bridge builds itself, so the whole pipeline can run
offline (``--model synthetic``).  Finding, fetching and building the files is
:mod:`bridge.model.hub`'s job (``locate_model``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import BridgeError
from bridge.model.description import FAMILIES, LAM, WAV2ARKIT, ModelDescription

LAM_REPO = "omote-ai/lam-a2e"
WAV2ARKIT_REPO = "myned-ai/wav2arkit_cpu"

#: Why ``lam-int8`` is not recommended (seed card, "Quantization Results").
INT8_WARNING = (
    "int8 degrades this model: dynamic int8 LAM has cosine < 0.99 and magnitude ratios 0.45-1.21 "
    "against fp32 (seed model card); use the default 'lam' (surgical fp16) for real output"
)


@dataclass(frozen=True, slots=True)
class Preset:
    """A model users can name: its interface plus where its files come from."""

    name: str
    description: ModelDescription
    summary: str
    repo: str | None = None  #: hub repository for real models
    files: tuple[str, ...] = ()  #: graph file first, then external data, relative to the repo
    #: (family, size, oracle) for built models; size "tiny" | "full" (random weights) | "demo"
    synthetic: tuple[str, str, bool] | None = None
    revision: str = "main"  #: hub branch, tag or commit
    sizes: tuple[str, ...] = ()  #: per file, as the seed card lists them (documentation only)
    warning: str | None = None  #: logged whenever the preset is loaded
    #: (file, sha256) pairs known ahead of any download: a fetched file must match its pin
    #: whatever the hub or mirror says (an ETag only proves the bytes are what *it* serves).
    sha256: tuple[tuple[str, str], ...] = ()

    def pinned_sha256(self, file: str) -> str | None:
        """The sha256 this preset expects for repo file ``file``, if it records one."""
        return next((digest for name, digest in self.sha256 if name == file), None)

    @property
    def graph_file(self) -> str:
        return self.files[0] if self.files else f"{self.name}.onnx"

    @property
    def interface(self) -> str:
        """One line: inputs, outputs, output order, fps and identity handling."""
        d = self.description
        ins = [f"{d.audio_input} [batch, samples] 16 kHz"]
        if d.identity_input:
            ins.append(f"{d.identity_input} [batch, {d.identity_classes}] one-hot, index 0 = neutral")
        outs = [f"{d.blendshapes_output} [batch, frames, 52] {d.fps} fps"]
        if d.asr_output:
            outs.append(f"{d.asr_output} [batch, frames50, 32] CTC 50 fps")
        order = "ARKit/Epic" if d.output_order[:2] == ("eyeBlinkLeft", "eyeLookDownLeft") else "alphabetical"
        ident = "identity input" if d.identity_input else "no identity input (identity 11 baked in)"
        return f"in: {', '.join(ins)}; out: {', '.join(outs)}; {order} order; {ident}"


def _lam(name: str, summary: str, files: tuple[str, ...], sizes: tuple[str, ...],
         warning: str | None = None) -> Preset:  # fmt: skip
    return Preset(name, LAM, summary, repo=LAM_REPO, files=files, sizes=sizes, warning=warning)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _lam("lam", "LAM Audio-to-Expression, surgical fp16: LayerNorms kept fp32 (the default)",
             ("model_fp16.onnx", "model_fp16.onnx.data"), ("385 KB", "192 MB")),
        _lam("lam-fp32", "LAM fp32 reference (max quality, debugging)",
             ("fp32/model.onnx", "fp32/model.onnx.data"), ("301 KB", "384 MB")),
        _lam("lam-fp32-single", "LAM fp32 as one file (legacy)", ("model.onnx",), ("384 MB",)),
        _lam("lam-fp16-naive", "LAM naive fp16 (superseded by lam: subdued output on GPU)",
             ("fp16/model.onnx", "fp16/model.onnx.data"), ("411 KB", "192 MB")),
        _lam("lam-int8", "LAM dynamic int8 (degraded: not recommended)",
             ("int8/model.onnx", "int8/model.onnx.data"), ("541 KB", "97 MB"), warning=INT8_WARNING),
        Preset("wav2arkit", WAV2ARKIT, "wav2arkit_cpu, the lighter fallback (fp32)",
               repo=WAV2ARKIT_REPO, files=("wav2arkit_cpu.onnx", "wav2arkit_cpu.onnx.data"),
               sizes=("1.86 MB", "402 MB")),
        Preset("synthetic", LAM, "demo LAM (built from band energies, no download): the face "
               "follows the voice; tries the pipeline offline", synthetic=("lam", "demo", False)),
        Preset("synthetic-tiny", LAM, "tiny synthetic LAM (random weights, same interface), for tests",
               synthetic=("lam", "tiny", False)),
        Preset("synthetic-full", LAM, "synthetic LAM with wav2vec2-base compute, for benchmarks",
               synthetic=("lam", "full", False)),
        Preset("synthetic-wav2arkit", WAV2ARKIT, "tiny synthetic wav2arkit",
               synthetic=("wav2arkit", "tiny", False)),
        Preset("synthetic-wav2arkit-full", WAV2ARKIT, "synthetic wav2arkit, full compute",
               synthetic=("wav2arkit", "full", False)),
        Preset("oracle", LAM, "test model: each output is a known function of the audio",
               synthetic=("lam", "tiny", True)),
    )
}  # fmt: skip


def home_dir() -> Path:
    """Where the bridge keeps models: ``$A2E_BRIDGE_HOME`` or ``~/.cache/a2e-bridge``."""
    env = os.environ.get("A2E_BRIDGE_HOME")
    return Path(env) if env else Path.home() / ".cache" / "a2e-bridge"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise BridgeError(
            f"unknown model preset {name!r}; known: {', '.join(PRESETS)} (or give a path to an .onnx file)"
        ) from None


def description_for(preset: Preset, output_order: tuple[str, ...] | None) -> ModelDescription:
    desc = preset.description
    return desc.with_order(output_order) if output_order is not None else desc


__all__ = ["FAMILIES", "PRESETS", "Preset", "description_for", "get_preset", "home_dir"]
