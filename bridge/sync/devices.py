"""Output devices (where the passed-through voice is played), found like input devices."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.audio.device import _sounddevice, find_device
from bridge.errors import BridgeError


@dataclass(frozen=True, slots=True)
class OutputDevice:
    """One PortAudio device that can play."""

    index: int
    name: str
    hostapi: str
    max_output_channels: int
    default_samplerate: float

    def label(self) -> str:
        rate = f"{self.default_samplerate:g}"
        return f"{self.index} '{self.name}' ({self.hostapi}, {self.max_output_channels} ch, {rate} Hz)"


def list_output_devices() -> list[OutputDevice]:
    """Every device PortAudio can play to, in PortAudio's index order."""
    sd = _sounddevice()
    hostapis = [h["name"] for h in sd.query_hostapis()]
    return [
        OutputDevice(int(d["index"]), str(d["name"]), hostapis[d["hostapi"]], int(d["max_output_channels"]),
                     float(d["default_samplerate"]))  # fmt: skip
        for d in sd.query_devices()
        if d["max_output_channels"] > 0
    ]


def _available(devices: list[OutputDevice]) -> str:
    listed = ", ".join(d.label() for d in devices) if devices else "none"
    return f"output devices: {listed}; list them with `a2e-bridge devices --output`"


def resolve_output_device(spec: str | int) -> OutputDevice:
    """The output device ``[sync] passthrough_device`` means: an index, an exact name (or
    ``"name, host API"``), else a unique case-insensitive substring; one line listing the
    output devices there are when none (or several) match."""
    devices = list_output_devices()
    try:
        return find_device(devices, spec, "output device", _available(devices))
    except BridgeError as e:
        raise BridgeError(f"sync.passthrough_device: {e}") from None


def describe_output_devices() -> str:
    """``a2e-bridge devices --output``: one line per output device."""
    devices = list_output_devices()
    if not devices:
        return "no output devices found (PortAudio sees none)"
    lines = [d.label() for d in devices]
    lines.append("pick one with [sync] passthrough_device = NAME or INDEX")
    return "\n".join(lines)
