"""The daemon: wires source -> ring -> scheduler -> model -> post-processing -> outputs.

``Bridge`` only connects stages and runs the hop loop; each stage lives in its
own module.  The hop loop runs in the caller's thread; the source fills its
ring from its own thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bridge import interrupt
from bridge.audio.base import AudioSource
from bridge.audio.liveness import LOOK_EVERY_S, InputWatch, Loss
from bridge.blendshapes import HEAD_EYE_NAMES, resolve_order
from bridge.config import BridgeConfig, InputConfig, ModelConfig
from bridge.errors import BridgeError
from bridge.frame import FPS, SAMPLE_RATE, FaceFrame, frame_end_sample
from bridge.model.fallback import FallbackEvent, FallbackSwitch
from bridge.model.hub import locate_model
from bridge.model.presets import description_for, get_preset
from bridge.model.runner import ModelRunner
from bridge.outputs import build_output
from bridge.outputs.base import Output, describe_health
from bridge.post import build_post_chain
from bridge.post.base import FrameContext
from bridge.post.finite import OutputGuard
from bridge.stats import RunStats
from bridge.streams.keepalive import RestPose
from bridge.streams.speech import SpeechTrack
from bridge.streams.stream import InputStream

log = logging.getLogger(__name__)

#: How long the hop loop sleeps when no frame is ready (bounds added latency).
POLL_S = 0.001
#: A hop loop kept from its hops this long (outside inference) was held up: a stall, an
#: input gap, a starved process.  What follows says nothing about the model's speed.
HELD_UP_S = 0.1
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


def _build_source(cfg: InputConfig, duration: float | None = None) -> AudioSource:
    """The configured audio source (``sounddevice`` is imported only for devices)."""
    if cfg.kind == "file":
        if not cfg.file:
            raise BridgeError('input.kind = "file" needs input.file (or --input FILE)')
        from bridge.audio.file import FileSource

        return FileSource(cfg.file, realtime=cfg.realtime, blocksize=cfg.blocksize,
                          ring_seconds=cfg.ring_seconds, max_seconds=duration)  # fmt: skip
    from bridge.audio.device import DeviceSource

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
            self.outputs = [build_output(o, [(0, None)]) for o in cfg.outputs]
            source = build_source(cfg.input, duration)
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
        #: a live input can be lost (and come back); a file cannot
        self.live = cfg.input.kind == "device"
        self.watch = InputWatch(source, cfg.input.blocksize / source.samplerate)
        self.rest = RestPose()
        self._held_up_s = max(HELD_UP_S, 2.0 * cfg.input.blocksize / source.samplerate)
        self._last_hop_end: float | None = None
        self._gap_before_hop = False  #: an input gap since the last hop (not the model's doing)

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
        self._next_status = time.monotonic() + STATUS_EVERY_S
        try:
            source.start()
            self.watch.start(time.monotonic())
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
            self._finish_stats()
        return stats

    def _finish_stats(self) -> None:
        """Fill in the totals; also when the run ends on an error, so --stats can still say."""
        stats = self.stats
        stats.frames_dropped = self.stream.scheduler.dropped
        stats.frames_expected = self.stream.frames_total
        stats.nonfinite_frames = self.guard.finish()
        stats.extra.update(self._input_counters())

    def _step(self) -> float | None:
        """One turn of the hop loop: seconds to sleep next, or None when the input is done."""
        if self.watch.loss is not None:
            return self._step_lost()
        stream, sched, source = self.stream, self.stream.scheduler, self.stream.source
        missing = self._samples_missing()
        # A ring half full is drained whatever the next frame needs: a source that waits for
        # room (a fast file) must never wait on a frame whose audio the ring cannot hold.
        filling = source.ring.available() < source.ring.capacity // 2
        if missing > 0 and filling and not stream.ended and not source.finished:
            if source.error:
                raise BridgeError(source.error)
            if self.live and self._input_lost():
                return 0.0
            # Audio lands a capture block at a time: sleep until about a block before the
            # frame's last sample is due, then poll cheaply (no pull) until it lands.
            return min(max(POLL_S / 2, (missing - self._block16k) / SAMPLE_RATE), 0.010)
        # live_hops: keep the history no further ahead than the next frame needs.
        if not self.live_hops or stream.history.count < self._next_needed():
            # A source faster than real time waits for ring space: take only what the
            # history can hold, so none of its frames is ever skipped.
            gaps = stream.gaps
            stream.pull(bounded=not self.realtime)
            self._gap_before_hop |= stream.gaps != gaps
        if source.error:
            raise BridgeError(source.error)
        # Frames whose audio was lost, or that fell out of the history, are skipped and counted.
        sched.drop_until(stream.first_usable_frame())
        hop = sched.plan(stream.history.count, self._oldest_in_time() if self.realtime else None)
        if hop is None:
            return None if stream.ended else POLL_S
        self._run_hop(hop)
        sched.done(hop)
        self._maybe_log_status()
        return 0.0

    def _maybe_log_status(self) -> None:
        if time.monotonic() >= self._next_status:
            self._next_status += STATUS_EVERY_S
            self._log_status()

    # ---- a lost input: keep the outputs alive, look for it, resume ----------------------
    def _input_lost(self) -> bool:
        """Whether the live input has just been lost (then the loss has begun)."""
        now = time.monotonic()
        reason = self.watch.check(now)
        if reason is None:
            return False
        source = self.stream.source
        lose = getattr(source, "lose", None)
        if lose is not None:
            lose()  # lets go of the lost stream on PortAudio's worker thread, never here
        if not self.cfg.input.reconnect:
            self.watch.lose(now, reason)
            raise BridgeError(
                f"input {source.name!r} lost: {reason} (unplugged, or its audio server stopped); "
                "input.reconnect = false ends the run: set it to true to keep the outputs alive "
                "and resume when the input returns"
            )
        loss = self.watch.lose(now, reason)
        self.rest.start()
        looking = f"looking for it every {LOOK_EVERY_S:g} s" if lose is not None else "waiting for it"
        log.warning(
            "input %r lost (%s): easing the face to rest, frames go on from %d; %s",
            source.name, loss.reason, self.stream.scheduler.next_frame, looking,
        )  # fmt: skip
        return True

    def _step_lost(self) -> float:
        """One turn while the input is lost: a frame at rest when due, a look for the device."""
        now = time.monotonic()
        loss, source = self.watch.loss, self.stream.source
        assert loss is not None
        if source.error:
            raise BridgeError(source.error)
        if self.watch.back():
            self._input_back(now)
            return 0.0
        if now >= loss.next_frame_due:
            self._publish_rest(now, loss)
            # 30 fps on the wall clock; after a hold-up, go on from now rather than burst.
            loss.next_frame_due = max(loss.next_frame_due + 1.0 / FPS, now)
        reopen = getattr(source, "reopen", None)
        if reopen is not None and now >= loss.next_look:
            # A look that cannot start yet (the last one is still closing) is retried soon.
            loss.next_look = now + (LOOK_EVERY_S if reopen() else 0.05)
        self._maybe_log_status()
        due = min(loss.next_frame_due, loss.next_look if reopen is not None else loss.next_frame_due)
        return min(max(due - now, POLL_S), 0.010)

    def _publish_rest(self, now: float, loss: Loss) -> None:
        """The next frame number, easing from the last published pose to rest."""
        number = self.stream.scheduler.take_rest_frame()
        values, head = self.rest.at(loss.frames / FPS)
        prob = 0.0 if self.runner.last_asr_logits is not None else None
        frame = FaceFrame(number, values, now, head, self._subject, prob, "")
        for output in self.outputs:
            output.publish(frame)
        loss.frames += 1
        self.watch.rest_frames += 1
        if self.on_frame is not None:
            self.on_frame(frame)

    def _input_back(self, now: float) -> None:
        """Audio is back: it goes on from the next frame number, after a silent gap."""
        stream, sched = self.stream, self.stream.scheduler
        first = stream.restart(sched.next_frame, self.watch.resume_frame())
        sched.drop_until(stream.first_usable_frame())
        loss = self.watch.resumed(now)
        self.post.restart()
        self._gap_before_hop = True
        log.warning(
            "input %r is back after %.1f s: capture resumed at frame %d (%d frame(s) sent at rest)",
            stream.source.name, now - loss.since, first, loss.frames,
        )  # fmt: skip

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
        hop_start = time.monotonic()
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
        self.rest.remember(block[hop.stride - 1], ctx.head[hop.stride - 1])
        if self.fallback.armed:
            missed = hop.dropped > 0 or worst_ms > self.max_latency_s * 1000.0
            self.fallback.observe(now, missed, held_up=self._held_up(hop_start, now, dt))
        self._last_hop_end = now

    def _held_up(self, hop_start: float, hop_end: float, inference_s: float) -> bool:
        """Whether this hop was held up by something other than the model (an input gap,
        a stall, a slow output or hook): its misses are then not the model's."""
        waited = hop_start - self._last_hop_end if self._last_hop_end is not None else 0.0
        outside = hop_end - hop_start - inference_s
        gap, self._gap_before_hop = self._gap_before_hop, False
        return gap or waited > self._held_up_s or outside > self._held_up_s

    def _context(self, hop) -> FrameContext:
        """The block's own audio and each frame's loudness, for stages that gate on them."""
        n = hop.stride
        rms = self._rms[:n]
        history = self.stream.history
        start = frame_end_sample(hop.first - 1) if hop.first else 0
        end = frame_end_sample(hop.last)
        audio = history.span(start, end)
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
            "frames %d (dropped %d%s), latency p50 %s ms p99 %s ms, inference p50 %s ms%s; outputs: %s",
            s.frames_published, self.stream.scheduler.dropped, nonfinite, s.latency.percentile(50),
            s.latency.percentile(99), s.inference.percentile(50), self._input_status(),
            describe_health(self.outputs),
        )  # fmt: skip

    def _input_status(self) -> str:
        """The input's part of the status line: only when something happened to it."""
        w, stream = self.watch, self.stream
        parts = []
        if w.loss is not None:
            parts.append(f"input LOST for {time.monotonic() - w.loss.since:.0f} s")
        if w.losses:
            parts.append(f"input lost {w.losses}x, back {w.reconnects}x")
        if stream.gaps:
            parts.append(f"audio gaps {stream.gaps} ({stream.lost_samples / SAMPLE_RATE:.1f} s lost)")
        return "; " + ", ".join(parts) if parts else ""

    def _input_counters(self) -> dict[str, object]:
        ring = self.stream.source.ring
        return {
            "input": self.stream.source.name,
            "input_overflows": ring.overflows,
            "input_status_flags": ring.status_flags,
            "ring_overruns": ring.overrun,
            "audio_gaps": self.stream.gaps,
            "audio_lost_s": round(self.stream.lost_samples / SAMPLE_RATE, 3),
            **self.watch.counters(time.monotonic()),
            "nonfinite_samples": self.stream.conditioner.nonfinite_samples,
            "outputs": {o.name: o.stats() for o in self.outputs},
        }

    def close(self) -> None:
        for o in self.outputs:
            o.close()
