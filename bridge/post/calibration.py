"""Neutral calibration: subtract the model's output floor measured in the user's silence.

``a2e-bridge calibrate`` runs a few seconds of the user's room tone (their
microphone, their noise, their model and identity) through the realtime path
and stores, per channel, the median weight: what the model says when nobody
speaks.  The :class:`Calibration` stage subtracts it, so silence maps to 0 on
every channel, and (``calibration_rescale``) stretches ``(x - floor)`` back to
the full 0..1 range so a fully open jaw still reaches 1.  Delay: none.

File format (TOML or JSON, by extension): ``format``, ``version``, a few facts
about the recording (``model``, ``seconds``, ``frames``, ``noise_db``) and a
table ``offsets`` of ARKit name = floor.  Names are read case-insensitively;
channels the file does not name get no offset.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.blendshapes import ARKIT_NAMES, NUM_BLENDSHAPES, canonical_index
from bridge.errors import BridgeError
from bridge.post.base import FrameContext, as_batch
from bridge.post.finite import bound

FORMAT = "a2e-bridge-calibration"
VERSION = 1
#: Floors above this are treated as this (a channel stuck near 1 cannot be stretched back).
MAX_FLOOR = 0.9


@dataclass(slots=True)
class CalibrationData:
    """Per-channel floors (canonical order) plus what was measured."""

    offsets: np.ndarray  #: float32 (52,)
    model: str = ""
    seconds: float = 0.0
    frames: int = 0
    noise_db: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_recording(
        cls, values: np.ndarray, rms: np.ndarray | None = None, **facts: Any
    ) -> CalibrationData:
        """Median of each channel over the recorded frames; noise level from the frames' RMS."""
        if values.shape[0] == 0:
            raise BridgeError("calibration recorded no frames: give at least a second of silence")
        offsets = np.median(values, axis=0).astype(np.float32)
        noise_db = None
        if rms is not None and rms.shape[0]:
            level = float(np.sqrt(np.mean(np.square(rms, dtype=np.float64))))
            noise_db = round(20.0 * math.log10(max(level, 1e-10)), 1)
        return cls(offsets=offsets, frames=int(values.shape[0]), noise_db=noise_db, **facts)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": FORMAT, "version": VERSION, "model": self.model,
                             "seconds": round(self.seconds, 3), "frames": self.frames}  # fmt: skip
        d.update(self.extra)
        if self.noise_db is not None:
            d["noise_db"] = self.noise_db
        d["offsets"] = {n: round(float(v), 6) for n, v in zip(ARKIT_NAMES, self.offsets, strict=True)}
        return d


def save_calibration(path: str | Path, data: CalibrationData) -> None:
    """Write ``data`` as TOML (``.toml``) or JSON (``.json``)."""
    p = Path(path)
    d = data.as_dict()
    if p.suffix.lower() == ".json":
        text = json.dumps(d, indent=2) + "\n"
    elif p.suffix.lower() == ".toml":
        lines = ["# a2e-bridge neutral calibration: the model's output in the user's silence.",
                 "# Use it with [post] calibration = \"<this file>\"."]  # fmt: skip
        for k, v in d.items():
            if k != "offsets":
                lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
        lines.append("[offsets]")
        lines.extend(f"{n} = {v!r}" for n, v in d["offsets"].items())
        text = "\n".join(lines) + "\n"
    else:
        raise BridgeError(f"calibration file {p}: use a .toml or .json name")
    try:
        p.write_text(text, encoding="utf-8")
    except OSError as e:
        raise BridgeError(f"cannot write {p}: {e.strerror or e}") from None


def load_calibration(path: str | Path) -> CalibrationData:
    """Read a calibration file; every problem is one line naming the file."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise BridgeError(
            f"cannot read calibration file {p} (post.calibration): {e.strerror or e}; "
            "make one with `a2e-bridge calibrate -o FILE`"
        ) from None
    except UnicodeDecodeError as e:
        raise BridgeError(f"calibration file {p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        d = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise BridgeError(f"calibration file {p} is not valid {p.suffix.lstrip('.').upper()}: {e}") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("offsets"), dict):
        raise BridgeError(f"{p} is not an a2e-bridge calibration file (made by `a2e-bridge calibrate`)")
    offsets = np.zeros(NUM_BLENDSHAPES, dtype=np.float32)
    for name, value in d["offsets"].items():
        try:
            idx = canonical_index(str(name))
        except BridgeError as e:
            raise BridgeError(f"calibration file {p}: {e}") from None
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise BridgeError(f"calibration file {p}: offsets.{name} = {value!r} must be a number in 0..1")
        offsets[idx] = value
    known = {"format", "version", "model", "seconds", "frames", "noise_db", "offsets"}
    return CalibrationData(
        offsets=offsets, model=str(d.get("model", "")), seconds=float(d.get("seconds", 0.0)),
        frames=int(d.get("frames", 0)), noise_db=d.get("noise_db"),
        extra={k: v for k, v in d.items() if k not in known},
    )  # fmt: skip


class Calibration:
    """``y = max(x - floor, 0)``, optionally ``/ (1 - floor)`` to keep the full range.

    Per performer: its own floors (``[N, 1, 52]``); a performer without the rescale gets a
    scale of exactly 1."""

    delay_frames = 0
    ROW_ARRAYS = ("offsets", "_scale", "_rescale")

    def __init__(self, offsets: np.ndarray, rescale: bool = True) -> None:
        self.performers = 1
        floor = np.minimum(np.asarray(offsets, dtype=np.float32), np.float32(MAX_FLOOR))
        self.offsets = floor.reshape(1, 1, NUM_BLENDSHAPES)
        self._scale = (
            (1.0 / (1.0 - self.offsets)).astype(np.float32) if rescale else np.ones_like(self.offsets)
        )
        self._rescale = np.array([rescale])

    @property
    def scale(self) -> np.ndarray | None:
        """The rescale factors ``[N, 1, 52]``, None when no performer rescales."""
        return self._scale if self._rescale.any() else None

    def set_offsets(self, row: int, offsets: np.ndarray) -> None:
        """Performer ``row``'s floors from the next frame on (the console's ``calibrate``)."""
        floor = np.minimum(np.asarray(offsets, dtype=np.float32), np.float32(MAX_FLOOR))
        self.offsets[row, 0] = floor
        if self._rescale[row]:
            self._scale[row, 0] = 1.0 / (1.0 - floor)

    @classmethod
    def from_file(cls, path: str | Path, rescale: bool = True) -> Calibration:
        return cls(load_calibration(path).offsets, rescale)

    def process(self, values: np.ndarray, ctx: FrameContext | None) -> None:
        values, ctx = as_batch(values, ctx)
        rows = None if ctx is None else ctx.rows
        offsets = self.offsets if rows is None else self.offsets[rows]
        bound(values)  # the rescale must not overflow a huge value
        values -= offsets
        np.maximum(values, 0.0, out=values)
        if self._rescale.any():
            values *= self._scale if rows is None else self._scale[rows]
