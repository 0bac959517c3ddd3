"""Capture from an audio input device through PortAudio (python-sounddevice).

``sounddevice`` is imported lazily, inside functions only: machines that run the
model headless (no PortAudio installed) must be able to import the package, and
only asking for a device should need the library.

PortAudio enumerates devices once, when it is initialised (at the first
``import sounddevice`` in the process); devices that appear later are not seen
until PortAudio is re-initialised.  ``a2e-bridge devices`` runs in a fresh
process, so it always shows the current list.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from bridge.errors import BridgeError
from bridge.ring import SampleRing

PORTAUDIO_MISSING = (
    "audio device input needs the PortAudio library: install it "
    "(Debian/Ubuntu: apt-get install libportaudio2; macOS: brew install portaudio) "
    "or use a file input (--input FILE)"
)

# PortAudio error codes that get a specific hint.
_PA_INVALID_CHANNELS = -9998
_PA_INVALID_RATE = -9997
_PA_DEVICE_UNAVAILABLE = -9985


def _sounddevice() -> ModuleType:
    """Import ``sounddevice`` on first use, turning a missing PortAudio into a BridgeError."""
    try:
        import sounddevice
    except OSError as exc:  # sounddevice's "PortAudio library not found"
        raise BridgeError(PORTAUDIO_MISSING) from exc
    except ImportError as exc:
        raise BridgeError(
            "audio device input needs the sounddevice package: pip install sounddevice "
            "(or use a file input (--input FILE))"
        ) from exc
    except Exception as exc:  # Pa_Initialize failed (raised as PortAudioError at import)
        raise BridgeError(f"audio device input could not initialise PortAudio: {exc}") from exc
    return sounddevice


@dataclass(frozen=True, slots=True)
class InputDevice:
    """One PortAudio device that can capture."""

    index: int  #: PortAudio device index (valid until PortAudio is re-initialised)
    name: str
    hostapi: str  #: host API name: ALSA, JACK Audio Connection Kit, Core Audio, WASAPI, ...
    max_input_channels: int
    default_samplerate: float

    def label(self) -> str:
        """Short description used in error messages and logs."""
        rate = f"{self.default_samplerate:g}"
        return f"{self.index} '{self.name}' ({self.hostapi}, {self.max_input_channels} ch, {rate} Hz)"


def _default_input_index(sd: ModuleType) -> int | None:
    """Index of the default input device (``sounddevice.default`` or PortAudio's), if any."""
    try:
        return int(sd.query_devices(kind="input")["index"])
    except Exception:  # no default input device: PortAudioError / ValueError
        return None


def list_input_devices() -> list[InputDevice]:
    """Every device PortAudio can capture from, in PortAudio's index order."""
    sd = _sounddevice()
    hostapis = [h["name"] for h in sd.query_hostapis()]
    return [
        InputDevice(
            index=int(d["index"]),
            name=str(d["name"]),
            hostapi=hostapis[d["hostapi"]],
            max_input_channels=int(d["max_input_channels"]),
            default_samplerate=float(d["default_samplerate"]),
        )
        for d in sd.query_devices()
        if d["max_input_channels"] > 0
    ]


def _available(devices: list[InputDevice]) -> str:
    listed = ", ".join(d.label() for d in devices) if devices else "none"
    return f"available: {listed}; list them with `a2e-bridge devices`"


def _pick(matches: list[InputDevice], default_hostapi: str | None) -> InputDevice | None:
    """One match, or the only one on the default host API (same device seen by several APIs)."""
    if len(matches) == 1:
        return matches[0]
    on_default = [d for d in matches if d.hostapi == default_hostapi]
    return on_default[0] if len(on_default) == 1 else None


def resolve_device(spec: str | int | None) -> InputDevice:
    """Find the input device the user means.

    ``None``: the default input device.  ``int`` (or a string of digits, as a CLI
    gives it): that PortAudio index.  Other strings: an exact name (or
    ``"name, host API"`` as ``a2e-bridge devices`` shows), else a unique
    case-insensitive substring of the name.  When the same device appears under
    several host APIs (Windows: MME, DirectSound, WASAPI), the default host API's
    entry wins.
    """
    sd = _sounddevice()
    devices = list_input_devices()
    if spec is None:
        index = _default_input_index(sd)
        for d in devices:
            if d.index == index:
                return d
        raise BridgeError(f"there is no default input device; pick one by name; {_available(devices)}")
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec.strip())
    if isinstance(spec, int):
        for d in devices:
            if d.index == spec:
                return d
        raise BridgeError(f"no input device has index {spec}; {_available(devices)}")

    try:
        default_hostapi = sd.query_hostapis(sd.default.hostapi)["name"]
    except Exception:
        default_hostapi = None
    wanted = spec.strip()
    low = wanted.lower()
    for matches in (
        [d for d in devices if d.name == wanted],
        [d for d in devices if f"{d.name}, {d.hostapi}".lower() == low],
        [d for d in devices if low in d.name.lower()],
    ):
        if not matches:
            continue
        found = _pick(matches, default_hostapi)
        if found is not None:
            return found
        names = ", ".join(d.label() for d in matches)
        raise BridgeError(
            f"input device {wanted!r} is ambiguous: it matches {names}; "
            "give the exact name, 'name, host API' or the index; list them with `a2e-bridge devices`"
        )
    raise BridgeError(f"no input device matches {wanted!r}; {_available(devices)}")


def describe_devices() -> str:
    """Human table of input devices for ``a2e-bridge devices``; ``*`` marks the default."""
    sd = _sounddevice()
    devices = list_input_devices()
    if not devices:
        return "no input devices found (PortAudio sees none)"
    default = _default_input_index(sd)
    rows = [("", "index", "name", "host API", "inputs", "default rate")]
    rows += [
        (
            "*" if d.index == default else "",
            str(d.index),
            d.name,
            d.hostapi,
            str(d.max_input_channels),
            f"{d.default_samplerate:g} Hz",
        )
        for d in devices
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {1, 4}  # numbers right-aligned
    lines = [
        " ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
    lines.append("* = default input device; pick one with --device NAME or INDEX")
    return "\n".join(lines)


#: channels opened (and averaged) when the config says channel = "mix"
MIX_CHANNELS = 2


class DeviceSource:
    """A capture device filling a :class:`SampleRing` from PortAudio's callback thread.

    The device is resolved at construction (so a bad name fails before anything
    starts); the stream is opened by :meth:`start`.
    """

    def __init__(
        self,
        device: str | int | None,
        samplerate: int | None = None,
        channels: int | None = None,
        blocksize: int = 256,
        ring_seconds: float = 4.0,
    ) -> None:
        self.device = resolve_device(device)
        dev = self.device
        self.name = dev.name
        self.samplerate = int(samplerate) if samplerate else int(round(dev.default_samplerate))
        if channels is None:
            # ALSA 'plug' and desktop-server devices report up to 128 virtual channels; a voice is
            # on the first one or two, so "mix" averages at most MIX_CHANNELS.
            channels = min(dev.max_input_channels, MIX_CHANNELS)
        elif not 1 <= channels <= dev.max_input_channels:
            raise BridgeError(
                f"input device {dev.label()} cannot capture {channels} channels: "
                f"it has {dev.max_input_channels} input channel(s)"
            )
        self.channels = channels
        self.blocksize = blocksize
        self.ring = SampleRing(capacity=int(self.samplerate * ring_seconds), channels=channels)
        self._stream: Any = None
        self._stopping = False
        self._stopped_error: str | None = None
        self._callback_exc: Exception | None = None
        # Bound once so the callback does attribute lookups only, no allocation.
        self._write = self.ring.write
        self._note = self.ring.note_status
        self._now = time.monotonic
        self._unexpected = (
            f"input device '{dev.name}' stopped capturing unexpectedly "
            "(unplugged, or taken by another program?)"
        )

    # ---- PortAudio callback thread ------------------------------------------------
    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's stream callback: runs on its real-time audio thread.

        Contract (as python-sounddevice documents for callbacks): it must not block
        or take long, or the device overflows and audio is lost.  So it only copies
        ``indata`` (a view of PortAudio's buffer, valid during this call only) into
        the preallocated ring, stamped with ``time.monotonic()`` at arrival, and
        counts a truthy ``status`` (``input_overflow`` = audio PortAudio dropped).
        No allocation of arrays, no locks, no logging, no printing, no I/O.  No
        exception escapes: sounddevice would print it and abort the stream; instead
        it is kept and surfaced by :attr:`error`, and capture carries on.
        """
        try:
            self._write(indata, self._now())
            if status:
                self._note(status.input_overflow)
        except Exception as exc:  # must not escape into PortAudio
            self._callback_exc = exc

    def _finished(self) -> None:
        """PortAudio's finished callback: the stream went inactive."""
        if not self._stopping:
            self._stopped_error = self._unexpected

    # ---- control (any thread but the callback) ----------------------------------------
    def start(self) -> None:
        """Open the device and start capturing; PortAudio failures become one-line BridgeErrors."""
        if self._stream is not None:
            return
        sd = _sounddevice()
        self._stopping = False
        self._stopped_error = None
        stream = None
        try:
            stream = sd.InputStream(
                device=self.device.index,
                samplerate=self.samplerate,
                channels=self.channels,
                dtype="float32",
                blocksize=self.blocksize,
                latency="low",
                callback=self._callback,
                finished_callback=self._finished,
            )
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            if stream is not None:
                self._stopping = True
                stream.close(ignore_errors=True)
            raise BridgeError(self._open_error(exc)) from exc
        self._stream = stream

    def _open_error(self, exc: Exception) -> str:
        dev = self.device
        code = exc.args[1] if len(exc.args) > 1 else None
        if code == _PA_INVALID_RATE:
            hint = (
                f"it does not support {self.samplerate} Hz; leave samplerate unset to use "
                f"its default ({dev.default_samplerate:g} Hz) or pick a rate it supports"
            )
        elif code == _PA_INVALID_CHANNELS:
            hint = f"ask for at most {dev.max_input_channels} channel(s)"
        elif code == _PA_DEVICE_UNAVAILABLE:
            hint = "another program may be using it, or it was unplugged"
        else:
            hint = "check that it is connected and not in use; list devices with `a2e-bridge devices`"
        return (
            f"cannot open input device '{dev.name}' ({dev.hostapi}) at {self.samplerate} Hz, "
            f"{self.channels} ch: {exc}; {hint}"
        )

    def stop(self) -> None:
        """Stop and close the stream; safe to call twice or before :meth:`start`."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._stopping = True
        try:
            stream.stop(ignore_errors=True)
        finally:
            stream.close(ignore_errors=True)

    @property
    def finished(self) -> bool:
        """A device never runs out of audio."""
        return False

    @property
    def error(self) -> str | None:
        """Why capture stopped (or its callback failed), if it did."""
        if self._callback_exc is not None:
            return f"input device '{self.name}' capture callback failed: {self._callback_exc!r}"
        return self._stopped_error
