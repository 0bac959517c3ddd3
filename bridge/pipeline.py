"""The daemon: wires source -> ring -> scheduler -> model -> post-processing -> outputs.

``Bridge`` only connects stages and runs the hop loop; each stage lives in its
own module.  The hop loop runs in the caller's thread; the source fills its
ring from its own thread.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bridge import interrupt
from bridge.blendshapes import HEAD_EYE_NAMES, resolve_order
from bridge.config import BridgeConfig, InputConfig, ModelConfig
from bridge.errors import BridgeError
from bridge.fallback import FallbackEvent, FallbackSwitch
from bridge.finite import OutputGuard
from bridge.frame import FPS, SAMPLE_RATE, FaceFrame, frame_end_sample
from bridge.model.presets import description_for, get_preset, locate_model
from bridge.model.runner import ModelRunner
from bridge.outputs import build_output
from bridge.outputs.base import Output, describe_health
from bridge.post import build_post_chain
from bridge.post.base import FrameContext
from bridge.sources.base import AudioSource
from bridge.speech import SpeechTrack
from bridge.stats import RunStats
from bridge.stream import InputStream

log = logging.getLogger(__name__)

#: How long the hop loop sleeps when no frame is ready (bounds added latency).
POLL_S = 0.001
#: A live input that delivers nothing for this long has stopped (unplugged, server gone).
STALL_S = 2.0
#: How often a progress line is logged.
STATUS_EVERY_S = 10.0


def build_source(cfg: InputConfig, duration: float | None = None) -> AudioSource:
    """The configured audio source; a ring too big for this machine is one line, not a MemoryError."""
    try:
        return _build_source(cfg, duration)
    except MemoryError:
        raise BridgeError(
            f"not enough memory for a {cfg.ring_seconds:g} s input ring (input.ring_seconds) at this "
            "input's rate and channel count; lower input.ring_seconds or pick fewer channels"
        ) from None


def check_ring_holds_a_frame(cfg: BridgeConfig, source: AudioSource) -> None:
    """The hop loop pulls once the next frame and its lookahead are all in the ring: a ring
    smaller than that (plus a capture block and the resampler's ~20 ms hold-back) would
    stall a fast file and overrun a live input."""
    rate, inp = source.samplerate, cfg.input
    need = (cfg.schedule.lookahead_frames + 1) * rate / FPS + 0.03 * rate + inp.blocksize
    if source.ring.capacity < need:
        raise BridgeError(
            f"{cfg.source}: input.ring_seconds = {inp.ring_seconds:g} is too small for "
            f"schedule.lookahead_frames = {cfg.schedule.lookahead_frames} at {rate} Hz: the ring must hold "
            f"at least {math.ceil(100 * need / rate) / 100:.2f} s (the frame, its lookahead, one capture "
            "block and the resampler's delay); raise input.ring_seconds"
        )


def _build_source(cfg: InputConfig, duration: float | None = None) -> AudioSource:
    """The configured audio source (``sounddevice`` is imported only for devices)."""
    if cfg.kind == "file":
        if not cfg.file:
            raise BridgeError('input.kind = "file" needs input.file (or --input FILE)')
        from bridge.sources.file import FileSource

        return FileSource(cfg.file, realtime=cfg.realtime, blocksize=cfg.blocksize,
                          ring_seconds=cfg.ring_seconds, max_seconds=duration)  # fmt: skip
    from bridge.sources.device import DeviceSource

    channels = None if cfg.channel == "mix" else int(cfg.channel) + 1
    return DeviceSource(cfg.device, samplerate=cfg.samplerate, channels=channels,
                        blocksize=cfg.blocksize, ring_seconds=cfg.ring_seconds)  # fmt: skip


@dataclass(frozen=True, slots=True)
class LoadedModel:
    runner: ModelRunner
    preset: str
    fallback: FallbackEvent | None = None  #: set when this is the fallback after a failed load


def _load_preset(cfg: ModelConfig, preset_name: str, path: str | None) -> ModelRunner:
    order = resolve_order(cfg.output_order) if cfg.output_order is not None else None
    preset = get_preset(preset_name)
    model_path = locate_model(preset, path, fetch_missing=cfg.fetch)

    def runner(cuda_graph: bool) -> ModelRunner:
        return ModelRunner(model_path, description_for(preset, order), providers=cfg.providers,
                           threads=cfg.threads, identity=cfg.identity, cuda_graph=cuda_graph,
                           window_samples=round(cfg.window_s * SAMPLE_RATE))  # fmt: skip

    if not cfg.cuda_graph or "cuda" not in [p.lower() for p in cfg.providers]:
        return runner(False)
    try:
        return runner(True)
    except BridgeError:
        raise
    except Exception as e:  # graph capture refused by this model/driver: run it uncaptured
        log.warning("CUDA graph capture failed (%s); running without it", str(e).splitlines()[0])
        return runner(False)


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Load the configured model; on failure load ``fallback`` (if set) and say why."""
    try:
        return LoadedModel(_load_preset(cfg, cfg.preset, cfg.path), cfg.preset)
    except BridgeError as e:
        interrupt.check()  # a load cut short by Ctrl-C is not a load failure: no fallback
        if not cfg.fallback or cfg.fallback == cfg.preset:
            raise
        failed = time.monotonic()
        log.warning("model %s failed to load (%s); falling back to %s", cfg.preset, e, cfg.fallback)
        try:
            runner = _load_preset(cfg, cfg.fallback, None)
        except BridgeError as e2:
            offline = "; try the pipeline offline with --model synthetic"
            hint = "" if "--model synthetic" in f"{e}{e2}" else offline
            raise BridgeError(f"{e} -- and the fallback {cfg.fallback!r} failed too: {e2}{hint}") from None
        event = FallbackEvent(cfg.preset, cfg.fallback, str(e), time.monotonic() - failed, 0)
        return LoadedModel(runner, cfg.fallback, event)


FrameHook = Callable[[FaceFrame], None]


class Bridge:
    """One running bridge: an input, a model, the post chain and the outputs."""

    def __init__(
        self,
        cfg: BridgeConfig,
        *,
        raw: bool = False,
        duration: float | None = None,
        on_frame: FrameHook | None = None,
        live_hops: bool = False,
    ) -> None:
        """``live_hops`` makes a fast (unpaced) file hop like a live input that keeps up:
        one frame per model call, audio pulled only when the next frame needs it.  Offline
        comparisons and calibration use it to reproduce realtime's frames exactly."""
        self.cfg = cfg
        self.live_hops = live_hops
        self.on_frame = on_frame
        window_frames = round(cfg.model.window_s * FPS)
        if cfg.schedule.lookahead_frames >= window_frames:
            raise BridgeError(
                f"{cfg.source}: schedule.lookahead_frames = {cfg.schedule.lookahead_frames} must be "
                f"smaller than the window ({window_frames} frames for model.window_s = {cfg.model.window_s})"
            )
        self.post = build_post_chain([cfg.post], raw=raw)  # one performer
        # Cheap checks first (the input, the ports), so a typo costs no model load.
        self.outputs: list[Output] = []
        source: AudioSource | None = None
        try:
            self.outputs = [build_output(o) for o in cfg.outputs]
            source = build_source(cfg.input, duration)
            check_ring_holds_a_frame(cfg, source)
            self.model = load_model(cfg.model)
        except BaseException:
            if source is not None:
                source.stop()
            self.close()
            raise
        self.runner = self.model.runner
        limit = round(duration * SAMPLE_RATE) if duration is not None else None
        self.stream = InputStream(source, channel=cfg.input.channel,
                                  window_samples=self.runner.window_samples,
                                  window_frames=window_frames,
                                  lookahead=cfg.schedule.lookahead_frames,
                                  limit_samples=limit)  # fmt: skip
        if live_hops:
            self.stream.scheduler.max_stride = 1
        self.realtime = cfg.input.kind == "device" or cfg.input.realtime
        self.max_latency_s = cfg.schedule.max_latency_ms / 1000.0
        self.stats = RunStats(provider=self.runner.provider, model=self.model.preset)
        if self.model.fallback is not None:
            self.stats.extra["fallback"] = self.model.fallback.as_dict()
        fb = cfg.model.fallback
        can_switch = bool(fb) and fb != self.model.preset and self.model.fallback is None
        self.fallback = FallbackSwitch(
            (lambda: LoadedModel(_load_preset(cfg.model, fb, None), fb)) if can_switch else None,
            cfg.model.fallback_after_s,
            cfg.schedule.max_latency_ms,
        )
        self.guard = OutputGuard(max_frames=window_frames)  # NaN/Inf never reach post or outputs
        self._rms = np.zeros(window_frames, dtype=np.float32)
        self._head_block = np.zeros((window_frames, len(HEAD_EYE_NAMES)), dtype=np.float32)
        self._subject = next((o.subject for o in cfg.outputs), "")
        self._est_inference_s = 0.0
        self._speech = SpeechTrack()
        #: one capture block in 16 kHz samples (the granularity at which audio arrives)
        self._block16k = cfg.input.blocksize * SAMPLE_RATE / source.samplerate

    def describe(self) -> str:
        r = self.runner
        outs = ", ".join(o.name for o in self.outputs) or "none"
        return (
            f"model {self.model.preset} ({r.path.name}) on {r.provider}, loaded in "
            f"{r.load_seconds:.2f} s; input {self.stream.source.name} "
            f"({self.stream.source.samplerate} Hz, {self.stream.source.channels} ch); outputs: {outs}"
        )

    # ---- the hop loop ---------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> RunStats:
        """Run until the input ends, ``stop`` is set, or the duration is reached."""
        stop = stop or threading.Event()
        stats, source = self.stats, self.stream.source
        source.start()
        self._next_status = time.monotonic() + STATUS_EVERY_S
        self._last_written, self._last_growth = -1, time.monotonic()
        try:
            while not stop.is_set():
                t_busy, c_busy = time.perf_counter(), time.thread_time()
                wait = self._step()
                stats.busy_s += time.perf_counter() - t_busy
                stats.busy_cpu_s += time.thread_time() - c_busy
                if wait is None:
                    break
                if wait:
                    time.sleep(wait)
        finally:
            source.stop()
        stats.frames_dropped = self.stream.scheduler.dropped
        stats.frames_expected = self.stream.frames_total
        stats.nonfinite_frames = self.guard.finish()
        stats.extra.update(self._input_counters())
        return stats

    def _step(self) -> float | None:
        """One turn of the hop loop: seconds to sleep next, or None when the input is done."""
        stream, sched, source = self.stream, self.stream.scheduler, self.stream.source
        missing = self._samples_missing()
        if missing > 0 and not stream.ended and not source.finished:
            self._check_input_alive()
            # Audio lands a capture block at a time: sleep until about a block before the
            # frame's last sample is due, then poll cheaply (no pull) until it lands.
            return min(max(POLL_S / 2, (missing - self._block16k) / SAMPLE_RATE), 0.010)
        # live_hops: keep the history no further ahead than the next frame needs.
        if not self.live_hops or stream.history.count < self._next_needed():
            stream.pull()
        if source.error:
            raise BridgeError(source.error)
        hop = sched.plan(stream.history.count, self._oldest_in_time() if self.realtime else None)
        if hop is None:
            return None if stream.ended else POLL_S
        self._run_hop(hop)
        sched.done(hop)
        if time.monotonic() >= self._next_status:
            self._next_status += STATUS_EVERY_S
            self._log_status()
        return 0.0

    def _check_input_alive(self) -> None:
        """A live input that stops delivering (unplugged, server gone) ends the run, loudly."""
        source, now = self.stream.source, time.monotonic()
        if source.error:
            raise BridgeError(source.error)
        if source.ring.written != self._last_written:
            self._last_written, self._last_growth = source.ring.written, now
        elif now - self._last_growth > STALL_S:
            raise BridgeError(
                f"input {source.name!r} delivered no audio for {now - self._last_growth:.1f} s "
                "(unplugged, or the audio server dropped the stream); check the device "
                "with `a2e-bridge devices` and restart"
            )

    def _next_needed(self) -> int:
        """Stream sample count at which the next frame can be published."""
        sched = self.stream.scheduler
        return frame_end_sample(sched.next_frame + sched.lookahead)

    def _samples_missing(self) -> float:
        """16 kHz samples still to arrive before the next frame can be published."""
        return self._next_needed() - self.stream.expected_count()

    def _oldest_in_time(self) -> int | None:
        """Oldest ready frame that can still be sent within ``max_latency_ms``."""
        sched, stream = self.stream.scheduler, self.stream
        ready = sched.ready(stream.history.count)
        k = sched.next_frame
        if ready <= k:
            return None
        deadline = time.monotonic() + self._est_inference_s - self.max_latency_s
        while k < ready - 1 and stream.capture_time(frame_end_sample(k) - 1) < deadline:
            k += 1
        return k

    def _switch_model(self, loaded: LoadedModel, first_frame: int) -> None:
        """Hand the hops to the fallback; the stream and the outputs carry on untouched."""
        sw = self.fallback
        event = FallbackEvent(self.model.preset, loaded.preset, sw.reason,
                              time.monotonic() - sw.first_miss, first_frame)  # fmt: skip
        log.warning("switching to fallback model %s at frame %d: %s", loaded.preset, first_frame, sw.reason)
        self.model, self.runner = loaded, loaded.runner
        self.stats.provider, self.stats.model = loaded.runner.provider, loaded.preset
        self.stats.extra["fallback"] = event.as_dict()

    def _run_hop(self, hop) -> None:
        stats = self.stats
        loaded = self.fallback.take()
        if loaded is not None:
            self._switch_model(loaded, hop.first)
        elif self.fallback.error:
            log.error("the fallback model failed to load: %s", self.fallback.error)
            self.stats.extra["fallback_error"] = self.fallback.error
            self.fallback.error = None
        window = self.stream.history.window_ending(hop.window_end)
        t0, c0 = time.perf_counter(), time.thread_time()
        out = self.runner.infer(window)
        dt = time.perf_counter() - t0
        stats.inference_cpu_s += time.thread_time() - c0
        stats.inference.add(dt * 1000.0)
        stats.inference_s += dt
        stats.inferences += 1
        self._est_inference_s = dt if stats.inferences == 1 else 0.9 * self._est_inference_s + 0.1 * dt
        frames = out.shape[0]
        lo = frames - 1 - (hop.window_last_frame - hop.first)
        block = out[lo : lo + hop.stride]
        ctx = self._context(hop)
        text = ""
        logits = self.runner.last_asr_logits
        if logits is not None:
            ctx.speech_prob = self._speech.frames(logits, frames, lo, hop.stride)
            text = self._speech.new_text(logits, hop.window_end, self.runner.window_samples,
                                         frame_end_sample(hop.last))  # fmt: skip
        self.guard.check(block, ctx.speech_prob, hop.first)
        self.post.process(block[None], ctx.as_batch())  # a batch of one (views: ctx sees the head)
        worst_ms = 0.0
        for i in range(hop.stride):
            number = hop.first + i
            capture = self.stream.capture_time(frame_end_sample(number) - 1)
            head = ctx.head[i]  # zeros unless a stage (head motion) filled them
            prob = float(ctx.speech_prob[i]) if ctx.speech_prob is not None else None
            frame = FaceFrame(number, block[i], capture, head, self._subject, prob,
                              text if i == hop.stride - 1 else "")  # fmt: skip
            for output in self.outputs:
                output.publish(frame)
            now = time.monotonic()
            latency_ms = (now - capture) * 1000.0
            stats.record_send(now, latency_ms)
            worst_ms = max(worst_ms, latency_ms)
            if self.on_frame is not None:
                self.on_frame(frame)
        if self.fallback.armed:
            self.fallback.observe(now, hop.dropped > 0 or worst_ms > self.max_latency_s * 1000.0)

    def _context(self, hop) -> FrameContext:
        """The block's own audio and each frame's loudness, for stages that gate on them."""
        n = hop.stride
        rms = self._rms[:n]
        history = self.stream.history
        start = frame_end_sample(hop.first - 1) if hop.first else 0
        end = frame_end_sample(hop.last)
        audio = history.window_ending(end)[history.window - (end - start) :]
        for i in range(n):
            k = hop.first + i
            lo = (frame_end_sample(k - 1) if k else 0) - start
            span = audio[lo : frame_end_sample(k) - start]
            rms[i] = np.sqrt(np.dot(span, span) / span.shape[0])
        self._head_block[:n] = 0.0
        return FrameContext(hop.first, rms, None, self._head_block[:n], audio=audio)

    def _log_status(self) -> None:
        s = self.stats
        nonfinite = f", {self.guard.describe()}" if self.guard.frames else ""
        log.info(
            "frames %d (dropped %d%s), latency p50 %s ms p99 %s ms, inference p50 %s ms; outputs: %s",
            s.frames_published, self.stream.scheduler.dropped, nonfinite, s.latency.percentile(50),
            s.latency.percentile(99), s.inference.percentile(50), describe_health(self.outputs),
        )  # fmt: skip

    def _input_counters(self) -> dict[str, object]:
        ring = self.stream.source.ring
        return {
            "input": self.stream.source.name,
            "input_overflows": ring.overflows,
            "input_status_flags": ring.status_flags,
            "ring_overruns": ring.overrun,
            "nonfinite_samples": self.stream.conditioner.nonfinite_samples,
            "outputs": {o.name: o.stats() for o in self.outputs},
        }

    def close(self) -> None:
        for o in self.outputs:
            o.close()
