"""Named models and where their files live.

A preset ties a :class:`ModelDescription` to files: real ones on the model hub
(looked up in the user's cache) or synthetic ones the bridge builds itself, so
the whole pipeline can run offline (``--model synthetic``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import BridgeError
from bridge.model.description import FAMILIES, LAM, WAV2ARKIT, ModelDescription


@dataclass(frozen=True, slots=True)
class Preset:
    """A model users can name: its interface plus where its files come from."""

    name: str
    description: ModelDescription
    summary: str
    repo: str | None = None  #: hub repository for real models
    files: tuple[str, ...] = ()  #: graph file first, then external data, relative to the repo
    synthetic: tuple[str, str, bool] | None = None  #: (family, size, oracle) for built models

    @property
    def graph_file(self) -> str:
        return self.files[0] if self.files else f"{self.name}.onnx"


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("lam", LAM, "LAM Audio-to-Expression, surgical fp16 (the default)",
               repo="omote-ai/lam-a2e", files=("model_fp16.onnx", "model_fp16.onnx.data")),
        Preset("wav2arkit", WAV2ARKIT, "wav2arkit_cpu, the lighter fallback (fp32)",
               repo="myned-ai/wav2arkit_cpu",
               files=("wav2arkit_cpu.onnx", "wav2arkit_cpu.onnx.data")),
        Preset("synthetic", LAM, "tiny synthetic LAM (random weights, same interface): "
               "tries the pipeline offline", synthetic=("lam", "tiny", False)),
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


def hub_path(preset: Preset, file: str) -> Path:
    return home_dir() / "hub" / str(preset.repo) / file


def locate_model(preset: Preset, override: str | None = None) -> Path:
    """The graph file to load for ``preset``: ``override`` if given, else the cached or built file."""
    if override is not None:
        p = Path(override).expanduser()
        if not p.is_file():
            raise BridgeError(
                f"model file not found: {p}; check [model] path / --model, "
                "or try the pipeline with --model synthetic"
            )
        return p
    if preset.synthetic is not None:
        return build_synthetic(preset)
    missing = [f for f in preset.files if not hub_path(preset, f).is_file()]
    if missing:
        where = hub_path(preset, "")
        raise BridgeError(
            f"model {preset.name!r} is not downloaded: looked for {', '.join(missing)} in {where}; "
            f"download them from the hub repository {preset.repo} into that folder "
            "(or set [model] path), or try the pipeline offline with --model synthetic"
        )
    return hub_path(preset, preset.files[0])


def build_synthetic(preset: Preset) -> Path:
    """Build a synthetic preset's model on first use; later runs reuse the file."""
    assert preset.synthetic is not None
    family, size, oracle = preset.synthetic
    path = home_dir() / "synthetic" / f"{preset.name}.onnx"
    if path.is_file():
        return path
    from bridge.model.synth import synthesize

    if size == "full":
        print(f"building the {preset.name} model once into {path} ...", file=sys.stderr)
    return synthesize(family, size, path, oracle=oracle)


def description_for(preset: Preset, output_order: tuple[str, ...] | None) -> ModelDescription:
    desc = preset.description
    return desc.with_order(output_order) if output_order is not None else desc


__all__ = ["FAMILIES", "PRESETS", "Preset", "get_preset", "locate_model", "home_dir"]
