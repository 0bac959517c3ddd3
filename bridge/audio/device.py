"""Capture from an audio input device through PortAudio (python-sounddevice).

``sounddevice`` is imported lazily, inside functions only: machines that run the
model headless (no PortAudio installed) must be able to import the package, and
only asking for a device should need the library.

PortAudio enumerates devices once, when it is initialised (at the first
``import sounddevice`` in the process); devices that appear later are not seen
until PortAudio is re-initialised.  ``a2e-bridge devices`` runs in a fresh
process, so it always shows the current list; a lost device that comes back is
reopened by its old index, or found again after re-initialising PortAudio where
that is safe (see bridge/audio/portaudio_control.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol, TypeVar

import numpy as np

from bridge.audio.portaudio_control import (
    PortAudioHung,
    PortAudioWorker,
    jack_host_api_loaded,
    mark_unsafe_to_terminate,
    quiet_native_stderr,
    reinitialise,
    unsafe_to_terminate,
)
from bridge.audio.ring import SampleRing
from bridge.errors import BridgeError

log = logging.getLogger(__name__)


class _Listed(Protocol):
    """What finding a device by name needs of a listed device (input or output)."""

    index: int
    name: str
    hostapi: str

    def label(self) -> str: ...


D = TypeVar("D", bound=_Listed)

#: how long opening a device may take before it counts as hung
OPEN_TIMEOUT_S = 5.0
#: how long closing one may take (a run must end within a second of Ctrl-C)
CLOSE_TIMEOUT_S = 0.5

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


def _pick(matches: list[D], default_hostapi: str | None) -> D | None:
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
    return find_device(devices, spec, "input device", _available(devices))


def find_device(devices: Sequence[D], spec: str | int, what: str, available: str) -> D:
    """The one of ``devices`` that ``spec`` names: a PortAudio index (or a string of digits),
    an exact name (or ``"name, host API"``), else a unique case-insensitive substring; when
    the same device appears under several host APIs, the default host API's entry wins.
    No match, or several: one line naming ``what`` and listing the ``available`` ones."""
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec.strip())
    if isinstance(spec, int):
        for d in devices:
            if d.index == spec:
                return d
        raise BridgeError(f"no {what} has index {spec}; {available}")
    try:
        sd = _sounddevice()
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
        raise BridgeError(f"{what} {wanted!r} is ambiguous: it matches {names}; "
                          f"give the exact name, 'name, host API' or the index; {available}")  # fmt: skip
    raise BridgeError(f"no {what} matches {wanted!r}; {available}")


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
    starts); the stream is opened by :meth:`start`.  Every PortAudio control call
    runs on a worker thread with a timeout (bridge/audio/portaudio_control.py):
    the hop loop that calls :meth:`start`, :meth:`lose`, :meth:`reopen` and
    :meth:`stop` never waits on the device for long.

    A device that goes away is let go (:meth:`lose`) and looked for again
    (:meth:`reopen`, one attempt in the background each call).  Each stream it
    opens writes into the same ring and starts a new *segment*: ``segment`` counts
    them, ``segment_start`` is the ring frame where the newest one began.
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
        self.segment = 0  #: capture streams opened so far (each a segment of the ring)
        self.segment_start = 0  #: ring frame where the newest segment begins
        self.last_look_error: str | None = None  #: why the last look for a lost device failed
        self._stream: Any = None
        self._generation = 0  #: bumped (by the controlling thread only) to silence old streams
        self._closed = False
        self._interrupted: str | None = None
        self._callback_exc: Exception | None = None
        self._worker = PortAudioWorker(dev.name)
        self._index_valid = True  #: self.device.index still names this device in PortAudio
        self._to_close: list[Any] = []  #: streams let go and not closed yet (kept referenced)
        self._jack_loaded = jack_host_api_loaded(_sounddevice())
        self._unexpected = (
            f"input device '{dev.name}' stopped capturing unexpectedly "
            "(unplugged, or taken by another program?)"
        )

    # ---- PortAudio callback thread ------------------------------------------------
    def _callbacks(self, generation: int) -> tuple[Callable[..., None], Callable[[], None]]:
        """The stream and finished callbacks of one stream (made once per open, not per block)."""
        write, note, now = self.ring.write, self.ring.note_status, time.monotonic

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            """PortAudio's stream callback: runs on its real-time audio thread.

            Contract (as python-sounddevice documents for callbacks): it must not block
            or take long, or the device overflows and audio is lost.  So it only copies
            ``indata`` (a view of PortAudio's buffer, valid during this call only) into
            the preallocated ring, stamped with ``time.monotonic()`` at arrival, and
            counts a truthy ``status`` (``input_overflow`` = audio PortAudio dropped).
            No allocation of arrays, no locks, no logging, no printing, no I/O.  No
            exception escapes: sounddevice would print it and abort the stream; instead
            it is kept and surfaced by :attr:`error`, and capture carries on.  A stream
            that has been let go (lost, stopped) writes nothing: the ring has one producer.
            """
            if self._generation != generation:
                return
            try:
                write(indata, now())
                if status:
                    note(status.input_overflow)
            except Exception as exc:  # must not escape into PortAudio
                self._callback_exc = exc

        def finished() -> None:
            """PortAudio's finished callback: the stream went inactive."""
            if self._generation == generation and not self._closed:
                self._interrupted = self._unexpected

        return callback, finished

    # ---- control (the hop loop's thread; PortAudio itself only on the worker) ----------
    def start(self) -> None:
        """Open the device and start capturing; PortAudio failures become one-line BridgeErrors."""
        if self._stream is not None:
            return
        self._closed = False
        self._interrupted = None
        try:
            self._worker.call(self._open_stream, "opening the device", OPEN_TIMEOUT_S)
        except PortAudioHung:
            raise BridgeError(
                f"input device '{self.name}' did not open within {OPEN_TIMEOUT_S:g} s; check it "
                "with `a2e-bridge devices` (is its audio server running?)"
            ) from None

    def _open_stream(self, quiet: bool = False) -> None:
        """Worker thread: open and start a stream into the ring (a new segment)."""
        sd = _sounddevice()
        generation = self._generation
        callback, finished = self._callbacks(generation)
        stream = None
        try:
            stream = sd.InputStream(
                device=self.device.index,
                samplerate=self.samplerate,
                channels=self.channels,
                dtype="float32",
                blocksize=self.blocksize,
                latency="low",
                callback=callback,
                finished_callback=finished,
            )
            self.segment_start = self.ring.written
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            if stream is not None:
                stream.close(ignore_errors=True)
            if quiet:
                raise
            raise BridgeError(self._open_error(exc)) from exc
        if self._closed or self._generation != generation:  # let go while it was opening
            _close_stream(stream)
            return
        self._stream = stream
        self.segment += 1

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

    def lose(self) -> None:
        """The stream stopped delivering: let it go now, close it on the worker (never waits)."""
        self._generation += 1
        stream, self._stream = self._stream, None
        self._interrupted = None
        if self._jack_loaded:
            mark_unsafe_to_terminate("a capture stream was lost while PortAudio's JACK host API was loaded")
        if stream is not None:
            # Closed now if the worker is free, else before the next look (or at stop).
            self._to_close.append(stream)
            self._worker.submit(self._close_let_go, "closing the lost stream", CLOSE_TIMEOUT_S)

    def _close_let_go(self) -> None:
        """Worker thread: close the streams let go so far."""
        while self._to_close:
            _close_stream(self._to_close[0])
            self._to_close.pop(0)

    def reopen(self) -> bool:
        """Look for the lost device once, in the background; False if the last look is still on.

        Opens the same device again; where that fails and PortAudio can safely be
        re-initialised (needed to see a device that came back as a new one, e.g. a USB
        microphone plugged in again), re-initialises it and finds the device by name.
        """
        if self._closed or self._stream is not None:
            return True
        return self._worker.submit(self._look, "looking for the device", OPEN_TIMEOUT_S)

    def _look(self) -> None:
        """Worker thread: one attempt to capture from the lost device again."""
        sd = _sounddevice()
        try:
            self._close_let_go()  # no stream of ours may be open while PortAudio re-initialises
            with quiet_native_stderr():
                if self._index_valid:
                    try:
                        self._open_stream(quiet=True)
                        self.last_look_error = None
                        return
                    except (sd.PortAudioError, ValueError):
                        if unsafe_to_terminate() is not None or jack_host_api_loaded(sd):
                            raise
                reinitialise(sd)
                self._jack_loaded = jack_host_api_loaded(sd)
                # Indices changed: the old one may now name another device, or none.
                self._index_valid = False
                self.device = _find_again(self.device)
                self._index_valid = True
                self._open_stream(quiet=True)
            self.last_look_error = None
        except Exception as exc:  # not there (yet): the hop loop looks again later
            self.last_look_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.debug("input device '%s' not back yet: %s", self.name, self.last_look_error)

    def stop(self) -> None:
        """Stop and close the stream; safe to call twice or before :meth:`start`.

        Returns within ``CLOSE_TIMEOUT_S``: a stream PortAudio cannot close in that
        time is left behind (it writes nothing more into the ring).
        """
        self._closed = True
        self._generation += 1

        def close_current() -> None:
            stream, self._stream = self._stream, None
            if stream is not None:
                _close_stream(stream)
            self._close_let_go()

        # A hang is said once by the worker; the process can still end (PortAudio left to the OS).
        with contextlib.suppress(PortAudioHung):
            self._worker.call(close_current, "closing the device", CLOSE_TIMEOUT_S)

    @property
    def worker(self) -> PortAudioWorker:
        """The thread PortAudio is driven from: another stream of this process (the voice
        passthrough) shares it, since PortAudio must be called from one thread at a time."""
        return self._worker

    @property
    def finished(self) -> bool:
        """A device never runs out of audio."""
        return False

    @property
    def interrupted(self) -> str | None:
        """Why PortAudio ended the stream by itself (the device went away), if it did."""
        return self._interrupted

    @property
    def error(self) -> str | None:
        """Why capture failed in a way no reconnecting mends (its callback raised), if it did."""
        if self._callback_exc is not None:
            return f"input device '{self.name}' capture callback failed: {self._callback_exc!r}"
        return None


def _close_stream(stream: Any) -> None:
    """Worker thread: abort (not stop: a dead device never drains) and close a stream."""
    try:
        stream.abort(ignore_errors=True)
    finally:
        stream.close(ignore_errors=True)


def _find_again(device: InputDevice) -> InputDevice:
    """The same device after PortAudio was re-initialised (its index may have changed)."""
    for d in list_input_devices():
        if d.name == device.name and d.hostapi == device.hostapi:
            return d
    raise BridgeError(f"input device '{device.name}' ({device.hostapi}) is not listed")
