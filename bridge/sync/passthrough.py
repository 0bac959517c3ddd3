"""The voice passthrough: one channel of the capture played on an output device, delayed.

The hop thread hands each block it takes from the capture ring to :meth:`Passthrough.feed`
(never the capture callback): the chosen channel is copied into this output's own ring,
after the silence to insert or the samples to drop that keep it ``delay`` behind its
capture (:mod:`bridge.sync.delay`).  The output stream's PortAudio callback only copies
from that ring.  PortAudio is driven on a worker thread with timeouts
(:mod:`bridge.audio.portaudio_control`): a device that hangs or goes away never holds up
the hop loop, so the face is never affected; a lost output device is said, looked for
every 0.5 s, and said again when it is back.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bridge.audio.device import _sounddevice
from bridge.audio.portaudio_control import (
    PortAudioHung,
    PortAudioWorker,
    jack_host_api_loaded,
    mark_unsafe_to_terminate,
    quiet_native_stderr,
)
from bridge.audio.ring import SampleRing
from bridge.errors import BridgeError
from bridge.sync.delay import DelayPolicy
from bridge.sync.devices import OutputDevice
from bridge.sync.drift import WINDOW_S, ClockDrift, clock_offset, recent

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 0.5
#: no callback for this long while playing: the output device is lost
LOST_AFTER_S = 0.5
#: a lost output device is looked for this often
LOOK_EVERY_S = 0.5
#: underruns are said to have ended after this long without one
UNDERRUN_QUIET_S = 2.0
#: the output ring holds this much (the delay is at most 2 s)
RING_S = 4.0
#: auto mode: the delay is kept this much above the longest wait for the hop loop
FEED_MARGIN_MS = 20.0
#: callbacks remembered for the output clock
CALLBACK_SLOTS = 1024


class Passthrough:
    """Plays one channel of a capture group's blocks on ``device``, held ``delay`` behind."""

    def __init__(self, device: OutputDevice, rate: int, channels_in: int, channel: int | None,
                 blocksize: int, policy: DelayPolicy,
                 latency_p95: Callable[[], tuple[float | None, int]],
                 worker: PortAudioWorker | None = None, out_rate: int | None = None) -> None:  # fmt: skip
        """``channel`` None mixes the input's channels; ``latency_p95`` gives the voice's
        performer's latency p95 (ms) and how many frames it is taken from (auto mode).
        ``worker``: the capture device's PortAudio worker, so that PortAudio is only ever
        called from one thread at a time (it is not thread-safe).  ``out_rate``: the rate the
        device is opened at (default ``rate``, the input's); another is resampled with soxr's
        streaming resampler, whose output sample k is input time k / out_rate exactly."""
        self.device = device
        self.name = device.name
        #: the clock callbacks and blocks are stamped with (a test may drive simulated clocks)
        self.clock: Callable[[], float] = time.monotonic
        if channel is not None and channel >= channels_in:
            raise BridgeError(f"sync.channel = {channel}: the input has {channels_in} channel(s) "
                              f"(0..{channels_in - 1})")  # fmt: skip
        self.rate = rate  #: the input's
        self.out_rate = out_rate or rate
        self.channel = channel
        self.blocksize = blocksize  #: the input's
        self.out_blocksize = max(1, round(blocksize * self.out_rate / rate))
        self._resampler: Any = None  #: soxr's stream from the rate to out_rate (None: the same rate)
        self._x_first = 0  #: resampling: the capture sample the resampler started at
        self._out_next = 0  #: resampling: the resampler's next output sample (written or dropped)
        self.policy = policy
        self.latency_p95 = latency_p95
        self.out_channels = min(2, self.device.max_output_channels)
        self.ring = SampleRing(int(self.out_rate * RING_S), 1, time_slots=16)
        self._mix = np.zeros((self.ring.capacity, 1), np.float32)  #: the chosen channel of a block
        self._zeros = np.zeros((int(self.out_rate * 0.5), 1), np.float32)
        self._silence_rms = 0.0
        # Written by the callback only (read by the hop thread).
        self._cb_time = np.zeros(CALLBACK_SLOTS)
        self._cb_start = np.zeros(CALLBACK_SLOTS, np.int64)  #: first stream sample each callback filled
        self._callbacks = 0
        self._stream_samples = 0  #: samples handed to the device so far (ring or zeros)
        self._zero_filled = 0  #: of which zeros, for want of audio in the ring
        self._short = 0  #: callbacks that found too little audio, once the voice had started
        self._status_flags = 0
        self._callback_exc: Exception | None = None
        self._interrupted = False
        self._primed = False  #: the voice has started on this stream (an empty ring is an underrun)
        # Hop thread.
        self.output_latency_s = 0.0
        self._stream: Any = None
        self._generation = 0
        self._worker = worker if worker is not None else PortAudioWorker(self.name)
        self._next_raw: int | None = None
        self._drop_pending = 0
        self._source_ring: SampleRing | None = None  #: the capture ring (its block times: the input clock)
        self._stream_base = 0  #: ring position of the stream's sample 0
        self._opened_at = 0.0  #: when the current stream was opened (no callback yet: lost after a while)
        self._in_offset = 0.0
        self._feed_lag = 0.0  #: the longest a fed block's first sample waited lately (s)
        self._underrun_fed = 0  #: underruns the delay policy has been told of
        self.drift = ClockDrift()
        self.delay_ms: float | None = None  #: the delay measured at the last block
        #: when output stream sample 0 plays minus when capture sample 0 was captured (ms):
        #: delay = this + s / out_rate - (x + 1) / rate
        self.clock_offset_ms: float | None = None
        self.corrections = 0
        self.inserted = 0  #: samples of silence inserted (start excluded)
        self.dropped = 0  #: samples dropped (start excluded)
        self.underruns = 0
        self.losses = 0
        self._lost_since: float | None = None
        self._next_look = 0.0
        self._underrun_seen = 0
        self._underrun_since: float | None = None
        self._underrun_last = 0.0
        self._started = False
        self.log: list[tuple[int, int]] = []  #: (stream sample, samples +inserted/-dropped), the first 1000
        #: (stream sample, clock_offset_ms from there on): the first, then one per clock step
        self.offset_log: list[tuple[int, float]] = []

    def set_silence(self, db: float) -> None:
        self._silence_rms = 10.0 ** (db / 20.0)

    # ---- PortAudio callback thread ------------------------------------------------
    def _make_callback(self, generation: int) -> tuple[Callable[..., None], Callable[[], None]]:
        read, now = self.ring.read, self.clock
        cb_time, cb_start, slots = self._cb_time, self._cb_start, CALLBACK_SLOTS
        stereo = self.out_channels > 1

        def callback(outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            """PortAudio's output callback: runs on its real-time audio thread.

            Obeys the capture callback's rules (bridge/audio/device.py): it only copies the
            next ``frames`` samples from the preallocated ring into ``outdata`` (zeros for
            what the ring lacks) and stamps the callback's time and first sample into
            preallocated slots.  No allocation of arrays, no locks, no logging, no I/O; no
            exception escapes (kept, surfaced by the hop thread).  A stream let go (lost,
            stopped) plays silence and records nothing.
            """
            if self._generation != generation:
                outdata.fill(0)
                return
            try:
                slot = self._callbacks % slots
                cb_time[slot] = now()
                cb_start[slot] = self._stream_samples
                n = read(outdata[:, :1])
                if n < frames:
                    outdata[n:, :1] = 0.0
                    self._zero_filled += frames - n
                    if self._primed:
                        self._short += 1
                if stereo:
                    outdata[:, 1:] = outdata[:, :1]
                self._stream_samples += frames
                self._callbacks += 1  # last: the slot is complete when the hop thread sees it
                if status:
                    self._status_flags += 1
            except Exception as exc:  # must not escape into PortAudio
                self._callback_exc = exc

        def finished() -> None:
            if self._generation == generation and self._stream is not None:
                self._interrupted = True

        return callback, finished

    # ---- control (hop thread; PortAudio itself only on the worker) ---------------------
    def start(self) -> None:
        """Open the output device and start playing (silence until the voice is due)."""
        try:
            self._worker.call(self._open, "opening the output device", OPEN_TIMEOUT_S)
        except PortAudioHung:
            raise BridgeError(f"sync.passthrough_device '{self.name}' did not open within "
                              f"{OPEN_TIMEOUT_S:g} s (is its audio server running?)") from None
        self._started = True

    def _open(self, quiet: bool = False) -> None:
        """Worker thread: a fresh ring position and callback records, then the stream."""
        sd = _sounddevice()
        self._generation += 1
        generation = self._generation
        self._reset_clock()
        callback, finished = self._make_callback(generation)
        stream = None
        try:
            stream = sd.OutputStream(device=self.device.index, samplerate=self.out_rate,
                                     channels=self.out_channels, dtype="float32",
                                     blocksize=self.out_blocksize, latency="low",
                                     callback=callback, finished_callback=finished)  # fmt: skip
            latency = float(stream.latency)
            self.output_latency_s = latency if 0.0 <= latency < 1.0 else 0.0
            self._interrupted = False
            self._stream = stream
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            self._stream = None
            if stream is not None:
                stream.close(ignore_errors=True)
            if quiet:
                raise
            raise BridgeError(
                f"sync.passthrough_device: cannot open output device {self.device.label()} at "
                f"{self.out_rate} Hz, {self.out_channels} ch: {exc}; set sync.samplerate to a rate it "
                f"plays (e.g. its default, {self.device.default_samplerate:g})"
            ) from exc

    def _reset_clock(self) -> None:
        """Nothing of a previous stream counts: the ring is emptied, the callback records restart."""
        self.ring.skip_to(self.ring.written)
        self._callbacks = 0
        self._stream_samples = 0
        self._zero_filled = 0
        self._underrun_seen = self._short
        self._primed = False
        self.ring.read_pos = self.ring.written
        self._stream_base = self.ring.written
        self._opened_at = self.clock()
        self.policy.restart()
        self.drift.restart()

    def stop(self) -> None:
        """Stop and close the output (within ``CLOSE_TIMEOUT_S``); safe to call twice."""
        self._started = False
        self._generation += 1

        def close() -> None:
            stream, self._stream = self._stream, None
            if stream is not None:
                _close(stream)

        with contextlib.suppress(PortAudioHung):
            self._worker.call(close, "closing the output device", CLOSE_TIMEOUT_S)
        if self._underrun_since is not None:
            self._say_underruns_ended()

    def tick(self) -> None:
        """While no audio is fed (the input is lost): still notice a lost output, look for it."""
        if self._started:
            now = self.clock()
            if self._output_alive(now):
                self._say_underruns(now)

    # ---- the hop thread's tap ----------------------------------------------------------
    def feed(self, block: np.ndarray, raw_end: int) -> None:
        """The capture group just read ``block`` (ring frames ``raw_end - len(block)`` up to
        ``raw_end``) from ``ring``: play its channel, ``delay`` behind its capture."""
        if not self._started:
            return
        now = self.clock()
        if self._callback_exc is not None:
            raise BridgeError(f"passthrough to '{self.name}': its callback failed: {self._callback_exc!r}")
        if not self._output_alive(now):
            self._next_raw = raw_end
            return
        self._say_underruns(now)
        n = block.shape[0]
        x0 = raw_end - n
        if self._next_raw is not None and x0 != self._next_raw:
            lost = x0 - self._next_raw
            if 0 < lost < self.ring.capacity // 4 and self.policy.aligned and self._resampler is None:
                self._write_zeros(lost)  # audio the capture lost: its time, in silence
            else:  # the capture jumped (a device back): start the voice again at the delay
                self.policy.restart()
                self._primed = False
        self._next_raw = raw_end
        if n > self._mix.shape[0]:
            self._mix = np.zeros((n, 1), np.float32)
        col = self._mix[:n]
        if self.channel is None:
            np.mean(block, axis=1, out=col[:, 0])
        else:
            col[:] = block[:, self.channel : self.channel + 1]
        flat = col[:, 0]
        silent = n == 0 or float(np.dot(flat, flat)) < n * self._silence_rms**2
        resampling = self.out_rate != self.rate
        if resampling and not self.policy.aligned:  # (re)start: the resampler from this block on
            import soxr

            self._resampler = soxr.ResampleStream(self.rate, self.out_rate, 1, dtype="float32", quality="HQ")
            self._x_first, self._out_next = x0, 0
        delay = self._measure(self._next_input(x0), now)
        if delay is None:
            return
        if self._short > self._underrun_fed:
            self._underrun_fed = self._short
            self.policy.underran(delay)
        p95, frames = self.latency_p95()
        self.policy.follow(p95, frames, silent, self._feed_floor_ms(x0, now))
        starting = not self.policy.aligned
        k = self.policy.correction(delay, silent)
        if k < 0 and not starting:
            # drop only from this silent block, never from the speech after it
            k = max(k, -int(n * self.out_rate / self.rate))
        if k and not starting:
            self.corrections += 1
            if len(self.log) < 1000:
                self.log.append((self._stream_position(), k))
        if k > 0:
            self._write_zeros(k)
            if not starting:
                self.inserted += k
        elif k < 0:
            self._drop_pending += -k
            if not starting:
                self.dropped += -k
        if not self.policy.aligned:
            return
        out = col
        if self._resampler is not None:
            out = self._resampler.resample_chunk(flat)[:, None]
            self._out_next += out.shape[0]
        m = out.shape[0]
        skip = min(self._drop_pending, m)
        self._drop_pending -= skip
        if skip < m:
            self.ring.write(out[skip:], now)
            self._primed = True

    def _next_input(self, x0: int) -> float:
        """The capture sample (fractional when resampling) the next sample written will be."""
        if self._resampler is None:
            return x0 + self._drop_pending
        return self._x_first + (self._out_next + self._drop_pending) * self.rate / self.out_rate

    def _feed_floor_ms(self, x0: int, now: float) -> float:
        """The least delay that feeds the voice in time: the longest a block waited for the hop
        loop lately (its first sample's age now), plus the output's latency and a margin."""
        age = now - self._in_offset - (x0 + 1) / self.rate
        decay = 0.9995 if self._feed_lag > age else 0.0  # falls slowly (~30 s), rises at once
        self._feed_lag = max(age, self._feed_lag * decay)
        return (self._feed_lag + self.output_latency_s) * 1000.0 + FEED_MARGIN_MS

    def _stream_position(self) -> int:
        """Output stream sample at which the next sample written will play."""
        return self.ring.written - self._stream_base + self._zero_filled

    def _measure(self, x_next: float, now: float) -> float | None:
        """The delay (ms) at which capture sample ``x_next`` plays if written next; None until
        both clocks have been seen."""
        count = self._callbacks
        source_ring = self._source_ring
        if source_ring is None or count < 4 or source_ring.blocks < 2:
            return None
        keep_out = max(4, int(WINDOW_S * self.out_rate / self.out_blocksize))
        keep_in = max(4, int(WINDOW_S * self.rate / self.blocksize))
        t_out, s_out = recent(self._cb_time, self._cb_start, count, keep_out)
        out_offset = clock_offset(t_out, s_out, self.out_rate)
        slots = source_ring._slots
        t_in, e_in = recent(source_ring._block_time, source_ring._block_end, source_ring.blocks,
                            min(slots, keep_in))  # fmt: skip
        in_offset = clock_offset(t_in, e_in, self.rate)
        steps = self.drift.steps
        self.drift.observe(now, out_offset, in_offset)
        self._in_offset = in_offset
        self.clock_offset_ms = (out_offset + self.output_latency_s - in_offset) * 1000.0
        if (self.drift.steps != steps or not self.offset_log) and len(self.offset_log) < 1000:
            self.offset_log.append((self._stream_position(), round(self.clock_offset_ms, 3)))
        plays = out_offset + self.output_latency_s + self._stream_position() / self.out_rate
        captured = in_offset + (x_next + 1) / self.rate
        self.delay_ms = (plays - captured) * 1000.0
        return self.delay_ms

    def attach(self, source_ring: SampleRing) -> None:
        """The capture ring whose blocks are fed (its block times are the input clock)."""
        self._source_ring = source_ring

    def _write_zeros(self, k: int) -> None:
        zeros = self._zeros
        while k > 0:
            m = min(k, zeros.shape[0])
            self.ring.write(zeros[:m], 0.0)
            k -= m

    # ---- faults: said once when they start, once when they end --------------------------
    def _output_alive(self, now: float) -> bool:
        """Whether the output plays; a lost one is said and looked for (never waited on)."""
        if self._lost_since is None:
            count = self._callbacks
            last = self._cb_time[(count - 1) % CALLBACK_SLOTS] if count else self._opened_at
            silent_for = now - last
            if not self._interrupted and silent_for < LOST_AFTER_S:
                return True
            self._lost_since, self._next_look = now, now + LOOK_EVERY_S
            self.losses += 1
            self._generation += 1
            if jack_host_api_loaded(_sounddevice()):
                mark_unsafe_to_terminate("an output stream was lost while PortAudio's JACK host API "
                                         "was loaded")  # fmt: skip
            stream, self._stream = self._stream, None
            if stream is not None:
                _abandon(stream)
            log.warning("passthrough: output device '%s' lost (%s); the face goes on, the voice is not "
                        "played; looking for it every %g s", self.name,
                        "its stream stopped" if self._interrupted else f"no callback for {silent_for:.1f} s",
                        LOOK_EVERY_S)  # fmt: skip
            return False
        if self._stream is not None and self._callbacks >= 4:
            log.warning("passthrough: output device '%s' is back after %.1f s; the voice plays again",
                        self.name, now - self._lost_since)  # fmt: skip
            self._lost_since = None
            return True
        if now >= self._next_look and self._stream is None:
            self._next_look = now + LOOK_EVERY_S
            self._worker.submit(self._look, "looking for the output device", OPEN_TIMEOUT_S)
        return False

    def _look(self) -> None:
        """Worker thread: one attempt to open the lost output again."""
        try:
            with quiet_native_stderr():
                self._open(quiet=True)
        except Exception as exc:
            log.debug("passthrough: output device '%s' not back yet: %s", self.name, exc)

    def _say_underruns(self, now: float) -> None:
        short = self._short
        if short > self._underrun_seen:
            self.underruns += short - self._underrun_seen
            self._underrun_seen = short
            self._underrun_last = now
            if self._underrun_since is None:
                self._underrun_since = now
                self._underrun_count0 = self.underruns - 1
                log.warning("passthrough: output underrun: the voice was not there when '%s' wanted it "
                            "(delay %s ms is shorter than the hop loop can feed it); silence is played "
                            "meanwhile", self.name, _ms(self.policy.target_ms))  # fmt: skip
        elif self._underrun_since is not None and now - self._underrun_last > UNDERRUN_QUIET_S:
            self._say_underruns_ended()

    def _say_underruns_ended(self) -> None:
        since = self._underrun_since or 0.0
        log.warning("passthrough: underruns ended (%d over %.1f s)", self.underruns - self._underrun_count0,
                    self._underrun_last - since)  # fmt: skip
        self._underrun_since = None

    @property
    def lost(self) -> bool:
        """Whether the output device is lost now (said, and looked for)."""
        return self._lost_since is not None

    def describe(self) -> str:
        """``voice on 'CABLE Input': delay 212.0 ms (auto), drift +3.1 ppm, underruns 0``."""
        if self._lost_since is not None:
            return f"voice on '{self.name}': LOST for {self.clock() - self._lost_since:.0f} s"
        delay = "starting" if self.delay_ms is None or not self.policy.aligned else f"{self.delay_ms:.1f} ms"
        ppm = self.drift.ppm
        drift = f", drift {ppm:+.1f} ppm" if ppm is not None else ""
        mode = "auto" if self.policy.auto else "fixed"
        return f"voice on '{self.name}': delay {delay} ({mode}){drift}, underruns {self.underruns}"

    def counters(self) -> dict[str, object]:
        """For ``--stats``: the delay now and held, drift, corrections, underruns, losses."""
        return {
            "device": self.name,
            "delay_ms": round(self.delay_ms, 2) if self.delay_ms is not None else None,
            "target_ms": round(self.policy.target_ms, 2) if self.policy.target_ms is not None else None,
            "mode": "auto" if self.policy.auto else "fixed",
            "auto_steps": self.policy.steps,
            "drift_ppm": self.drift.ppm,
            "clock_steps": self.drift.steps,
            "corrections": self.corrections,
            "inserted_samples": self.inserted,
            "dropped_samples": self.dropped,
            "underruns": self.underruns,
            "status_flags": self._status_flags,
            "output_losses": self.losses,
            "output_latency_ms": round(self.output_latency_s * 1000.0, 2),
            "clock_offset_ms": round(self.clock_offset_ms, 3) if self.clock_offset_ms is not None else None,
            "stream_samples": self._stream_samples,
            "corrections_log": self.log[:50],
            "clock_offset_log": self.offset_log[:50],
        }


def _ms(v: float | None) -> str:
    return "?" if v is None else f"{v:.0f}"


def _abandon(stream: Any) -> None:
    """Let a lost output stream go for good: never closed, never freed.

    Closing a playback stream whose audio server died crashed PortAudio's ALSA host API
    here (a segfault in ``Pa_CloseStream`` over the ALSA jack plugin, at once or when the
    server was back), and so did freeing it at exit (its native thread still calls the
    callback's trampoline).  So it keeps a reference nothing drops, not even interpreter
    shutdown; its callback calls nothing of ours (an old generation).  One stream per loss.
    """
    _ABANDONED.append(stream)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(stream))


#: lost output streams (see :func:`_abandon`)
_ABANDONED: list[Any] = []


def _close(stream: Any) -> None:
    """Worker thread: abort (a dead device never drains) and close."""
    try:
        stream.abort(ignore_errors=True)
    finally:
        stream.close(ignore_errors=True)
