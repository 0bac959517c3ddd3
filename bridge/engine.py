"""The daemon: wires sources -> streams -> scheduler -> batched model -> post -> outputs.

``Bridge`` only connects stages and runs the hop loop; each stage lives in its
own module.  The hop loop runs in the caller's thread; each source fills its
ring from its own thread; with several performers and a model on a GPU the sends
(:mod:`bridge.sender`) and the model calls (:mod:`bridge.model.call_thread`) run on
threads of their own: when the loop is behind, the next hop's call runs while the
last hop's frames are posted and sent.

Several performers (``[[performer]]``): each has its own stream, scheduler, speech
track, rest pose and frame numbering (:class:`~bridge.streams.performer.Performer`);
performers on the channels of one device or file share its capture
(:class:`~bridge.streams.capture.CaptureGroup`: one source, one ring, read once).
Per turn, the performers whose hop is due are planned once when they are in step,
computed in one model call (``ModelRunner.infer_batch``, or ``advance_batch`` when
the windows on the device only move on by the new samples), post-processed in one call
per stride, and their frames sent to the outputs as one batch, routed by performer.  A performer whose
input is lost drops out of the batch (its face eased to rest, its numbers going
on) and comes back; the others never notice.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bridge import interrupt
from bridge.audio.base import AudioSource
from bridge.audio.liveness import LOOK_EVERY_S, InputWatch, Loss
from bridge.blendshapes import resolve_order
from bridge.config import BridgeConfig, InputConfig, ModelConfig, PerformerConfig, _capture_key
from bridge.control import Control
from bridge.errors import BridgeError
from bridge.frame import FPS, SAMPLE_RATE, frame_end_sample
from bridge.model.call_thread import ModelThread
from bridge.model.fallback import FallbackEvent, FallbackSwitch
from bridge.model.hub import locate_model
from bridge.model.presets import description_for, get_preset
from bridge.model.runner import ModelRunner
from bridge.outputs import build_output, performers_served
from bridge.outputs.base import Output, describe_health
from bridge.post import PostChain, build_post_chain
from bridge.post.finite import OutputGuard
from bridge.publisher import FaceBlock, FrameHook, FramePublisher
from bridge.stats import RunStats
from bridge.streams.batch import HopBatch
from bridge.streams.capture import CaptureGroup
from bridge.streams.performer import Performer
from bridge.streams.scheduler import Hop
from bridge.streams.stream import InputStream
from bridge.sync.hub import SyncHub

log = logging.getLogger(__name__)

#: How long the hop loop sleeps when no frame is ready (bounds added latency).
POLL_S = 0.001
#: A hop loop kept from its hops this long (outside inference) was held up: a stall, an
#: input gap, a starved process.  What follows says nothing about the model's speed.
HELD_UP_S = 0.1
#: Batches from this many rows on send only their new samples to windows kept on the
#: device (``ModelRunner.advance_batch``); smaller ones upload whole windows.
ADVANCE_MIN_ROWS = 16
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


def _load_preset(cfg: ModelConfig, preset_name: str, path: str | None, performers: int = 1) -> ModelRunner:
    order = resolve_order(cfg.output_order) if cfg.output_order is not None else None
    preset = get_preset(preset_name)
    model_path = locate_model(preset, path, fetch_missing=cfg.fetch)

    def runner(cuda_graph: bool) -> ModelRunner:
        return ModelRunner(model_path, description_for(preset, order), providers=cfg.providers,
                           threads=cfg.threads, identity=cfg.identity, cuda_graph=cuda_graph,
                           window_samples=round(cfg.window_s * SAMPLE_RATE),
                           max_batch=cfg.max_batch or performers)  # fmt: skip

    if not cfg.cuda_graph or "cuda" not in [p.lower() for p in cfg.providers]:
        return runner(False)
    try:
        return runner(True)
    except BridgeError:
        raise
    except Exception as e:  # graph capture refused by this model/driver: run it uncaptured
        log.warning("CUDA graph capture failed (%s); running without it", str(e).splitlines()[0])
        return runner(False)


def load_model(cfg: ModelConfig, performers: int = 1) -> LoadedModel:
    """Load the configured model (prepared for batches of ``performers`` windows unless
    ``[model] max_batch`` says); on failure load ``fallback`` (if set) and say why."""
    try:
        return LoadedModel(_load_preset(cfg, cfg.preset, cfg.path, performers), cfg.preset)
    except BridgeError as e:
        interrupt.check()  # a load cut short by Ctrl-C is not a load failure: no fallback
        if not cfg.fallback or cfg.fallback == cfg.preset:
            raise
        failed = time.monotonic()
        log.warning("model %s failed to load (%s); falling back to %s", cfg.preset, e, cfg.fallback)
        try:
            runner = _load_preset(cfg, cfg.fallback, None, performers)
        except BridgeError as e2:
            offline = "; try the pipeline offline with --model synthetic"
            hint = "" if "--model synthetic" in f"{e}{e2}" else offline
            raise BridgeError(f"{e} -- and the fallback {cfg.fallback!r} failed too: {e2}{hint}") from None
        event = FallbackEvent(cfg.preset, cfg.fallback, str(e), time.monotonic() - failed, 0)
        return LoadedModel(runner, cfg.fallback, event)


@dataclass(eq=False)
class _Call:
    """What one model call gave."""

    out: np.ndarray  #: blendshapes ``[B, F, 52]`` (reused by the next call)
    logits: np.ndarray | None  #: CTC logits ``[B, T, V]`` (reused by the next call)
    seconds: float
    cpu_seconds: float  #: CPU time of the thread it ran on
    elsewhere: bool  #: it ran on the model thread


@dataclass(eq=False)
class _Flight:
    """A hop whose model call is out on the model thread."""

    due: list[tuple[Performer, Hop]]
    hop_start: float


@dataclass(eq=False)
class InputGroup:
    """A capture group as the hop loop runs it: how its source is paced and watched."""

    capture: CaptureGroup
    performers: list[Performer]
    cfg: InputConfig
    realtime: bool  #: paced like a live input (a device, or a file played at real time)
    live: bool  #: a device: can be lost and come back
    block16k: float  #: one capture block in 16 kHz samples (the granularity audio arrives at)
    #: the stream sample count the members' earliest next frame needs; None: work it out
    #: again (their schedulers moved).  Keeps a polling turn O(1) however many members.
    needed: int | None = None
    #: whether the last plan found every member in step (one plan for all): then the first
    #: member's next frame is every member's
    in_step: bool = False

    @property
    def source(self) -> AudioSource:
        return self.capture.source

    @property
    def watch(self) -> InputWatch:
        return self.capture.watch


def _group_input(members: list[PerformerConfig]) -> InputConfig:
    """The input settings the members' one source is opened with: every channel any of them takes."""
    inp = members[0].input
    channels = [p.input.channel for p in members]
    if len(members) == 1 or "mix" in channels:
        return inp if len(members) == 1 else dataclasses.replace(inp, channel="mix")
    return dataclasses.replace(inp, channel=max(int(c) for c in channels))


class Bridge:
    """One running bridge: the performers' inputs, one model, the post chain and the outputs."""

    def __init__(
        self,
        cfg: BridgeConfig,
        *,
        raw: bool = False,
        duration: float | None = None,
        on_frame: FrameHook | None = None,
        live_hops: bool = False,
        batched: bool = True,
    ) -> None:
        """``live_hops`` makes a fast (unpaced) file hop like a live input that keeps up:
        one frame per model call, audio pulled only when the next frame needs it.  Offline
        comparisons and calibration use it to reproduce realtime's frames exactly.
        ``batched`` False runs each due performer's window in a model call of its own
        (the reference the batched path is checked against)."""
        self.cfg = cfg
        self.live_hops = live_hops
        self.batched = batched
        cast = cfg.cast
        window_frames = round(cfg.model.window_s * FPS)
        if cfg.schedule.lookahead_frames >= window_frames:
            raise BridgeError(
                f"{cfg.source}: schedule.lookahead_frames = {cfg.schedule.lookahead_frames} must be "
                f"smaller than the window ({window_frames} frames for model.window_s = {cfg.model.window_s})"
            )
        post = build_post_chain([p.post for p in cast], raw=raw)
        # Cheap checks first (the inputs, the ports), so a typo costs no model load.
        self.outputs: list[Output] = []
        sources: list[AudioSource] = []
        try:
            self.outputs = [build_output(o, performers_served(cfg, o)) for o in cfg.outputs]
            grouped: dict[tuple[Any, ...], list[int]] = {}
            for i, p in enumerate(cast):
                grouped.setdefault(_capture_key(p.input), []).append(i)
            for members in grouped.values():
                sources.append(self._source([cast[i] for i in members], duration, len(cast) > 1))
            self.model = load_model(cfg.model, len(cast))
        except BaseException:
            for s in sources:
                s.stop()
            self.close()
            raise
        self.runner = self.model.runner
        limit = round(duration * SAMPLE_RATE) if duration is not None else None
        default_subject = next((o.subject for o in cfg.outputs), "")
        self.performers: list[Performer] = []
        self.groups: list[InputGroup] = []
        try:
            for g, (members, source) in enumerate(zip(grouped.values(), sources, strict=True)):
                streams = []
                for i in members:
                    p = cast[i]
                    stream = self._stream(p, source, window_frames, limit, len(cast) > 1)
                    identity = cfg.model.identity if p.identity is None else p.identity
                    subject = p.subject or default_subject
                    self.performers.append(Performer(i, p.name, subject, identity, stream, g))
                    streams.append(stream)
                inp = cast[members[0]].input
                block_s = inp.blocksize / source.samplerate
                self.groups.append(InputGroup(
                    CaptureGroup(source, streams, block_s), [p for p in self.performers if p.group == g], inp,
                    realtime=inp.kind == "device" or inp.realtime, live=inp.kind == "device",
                    block16k=inp.blocksize * SAMPLE_RATE / source.samplerate))  # fmt: skip
        except BaseException:
            for s in sources:
                s.stop()
            self.close()
            raise
        self.performers.sort(key=lambda p: p.index)
        try:
            captures = [g.capture for g in self.groups]
            self.sync = SyncHub(cfg, self.outputs, self.performers, captures, window_frames)
        except BaseException:
            for s in sources:
                s.stop()
            self.close()
            raise
        self.max_latency_s = cfg.schedule.max_latency_ms / 1000.0
        self.stats = RunStats(provider=self.runner.provider, model=self.model.preset)
        if self.model.fallback is not None:
            self.stats.extra["fallback"] = self.model.fallback.as_dict()
        fb = cfg.model.fallback
        can_switch = bool(fb) and fb != self.model.preset and self.model.fallback is None
        self.fallback = FallbackSwitch(
            (lambda: LoadedModel(_load_preset(cfg.model, fb, None, len(cast)), fb)) if can_switch else None,
            cfg.model.fallback_after_s,
            cfg.schedule.max_latency_ms,
        )
        names = [p.name for p in cast] if len(cast) > 1 else None
        # NaN/Inf never reach post or outputs
        self.guard = OutputGuard(max_frames=window_frames, performers=len(cast), names=names)
        self.batch = HopBatch(len(cast), self.runner.window_samples, window_frames)
        several_on_device = len(cast) > 1 and self._model_leaves_cpu()
        self.publisher = FramePublisher(post, self.guard, self.outputs, self.stats, self.performers,
                                        self.batch.speech, self.sync, on_frame,
                                        threaded=several_on_device)  # fmt: skip
        #: the model calls' own thread (several performers, a model off the CPU): a hop's
        #: frames are posted and sent while the next hop's call runs (bridge/model/call_thread.py)
        self.model_thread = ModelThread() if several_on_device and batched else None
        self._flight: _Flight | None = None  #: the hop whose call is out on the model thread
        self._held_logits = np.zeros(0, np.float32)  #: a landed call's CTC logits, kept past the next call
        #: identities go to the model only when some performer differs from [model] identity
        self._identities = any(p.identity != cfg.model.identity for p in self.performers)
        self._est_inference_s = 0.0
        self._held_up_s = max([HELD_UP_S] + [2.0 * g.block16k / SAMPLE_RATE for g in self.groups])
        self._last_hop_end: float | None = None
        self._gap_before_hop = False  #: an input gap since the last hop (not the model's doing)
        self.batches = 0  #: model calls made for due performers
        self.batch_rows = 0  #: windows in them, over all calls
        self.batch_max = 0
        # the live console: settings and hooks always; its servers when configured
        self.control = Control(self, lambda name: LoadedModel(_load_preset(cfg.model, name, None, len(cast)),
                                                              name))
        self.post = self.control.live.around(self.post)  # the console's hooks around the chain
        try:
            self.control_lines = self.control.start(cfg)
        except BaseException:
            for s in sources:
                s.stop()
            self.close()
            raise

    def _model_leaves_cpu(self) -> bool:
        """Whether the model runs off the CPU (a GPU provider): only then do sends on a thread
        of their own overlap it; on the CPU they would only take cores from the model."""
        return self.runner.provider != "CPUExecutionProvider"

    def _source(self, members: list[PerformerConfig], duration: float | None, several: bool) -> AudioSource:
        """The one source ``members`` share; with several performers, a refusal names them
        (e.g. a device with fewer channels than the highest one asked for)."""
        try:
            return build_source(_group_input(members), duration)
        except BridgeError as e:
            if not several:
                raise
            names = ", ".join(repr(p.name) for p in members)
            who = f"performer{'s' if len(members) > 1 else ''} {names}"
            raise BridgeError(f"{self.cfg.source}: {who}: {e}") from None

    def _stream(self, p: PerformerConfig, source: AudioSource, window_frames: int, limit: int | None,
                several: bool) -> InputStream:  # fmt: skip
        """Performer ``p``'s stream on ``source``; a channel the source lacks is one line naming it."""
        try:
            stream = InputStream(source, channel=p.input.channel, window_samples=self.runner.window_samples,
                                 window_frames=window_frames, lookahead=self.cfg.schedule.lookahead_frames,
                                 limit_samples=limit)  # fmt: skip
        except BridgeError as e:
            if not several:
                raise
            raise BridgeError(f"{self.cfg.source}: performer {p.name!r}: {e} ({source.name})") from None
        if self.live_hops:
            stream.scheduler.max_stride = 1
        return stream

    @property
    def post(self) -> PostChain:
        """The post chain (the publisher's: it runs there); settable before :meth:`run`."""
        return self.publisher.post

    @post.setter
    def post(self, chain: PostChain) -> None:
        self.publisher.post = chain

    @property
    def stream(self) -> InputStream:
        """The first performer's stream (the only one, for one performer)."""
        return self.performers[0].stream

    def describe(self) -> str:
        r = self.runner
        outs = ", ".join(o.name for o in self.outputs) or "none"
        inputs = "; ".join(f"{g.source.name} ({g.source.samplerate} Hz, {g.source.channels} ch)"
                           for g in self.groups)  # fmt: skip
        who = f"{len(self.performers)} performers, " if len(self.performers) > 1 else ""
        return (
            f"model {self.model.preset} ({r.path.name}) on {r.provider}, loaded in "
            f"{r.load_seconds:.2f} s; {who}input {inputs}; outputs: {outs}"
        )

    # ---- the hop loop ---------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> RunStats:
        """Run until every input ends, ``stop`` is set, or the duration is reached."""
        stop = stop or threading.Event()
        stats = self.stats
        self._next_status = time.monotonic() + STATUS_EVERY_S
        try:
            if self.model_thread is not None:
                # ONNX Runtime keeps its CUDA graphs per calling thread: capture them again on
                # the thread that makes the calls, or its first hops pay for it (0.5 s at 256).
                self.model_thread.start(self.runner.warmup)
                self.model_thread.result()
            self.publisher.prepare(speech=self.runner.description.asr_output is not None)
            for g in self.groups:
                g.source.start()
                g.watch.start(time.monotonic())
            self.sync.start()
            while not stop.is_set():
                t_busy, c_busy = time.perf_counter(), time.thread_time()
                if self._flight is None:
                    self.control.apply()  # console commands, between hops (see also _land)
                wait = self._step()
                stats.busy_s += time.perf_counter() - t_busy
                stats.busy_cpu_s += time.thread_time() - c_busy
                if wait is None:
                    break
                if wait:
                    time.sleep(wait)
            if self._flight is not None:  # stopped with a call out: its frames still go
                self._land(more=False)
            self.publisher.sender.flush()  # every frame handed over is sent before the totals
        finally:
            if self.model_thread is not None:
                self.model_thread.close()  # an error with a call out: let it finish first
            self._flight = None
            for g in self.groups:
                g.source.stop()
            self.sync.stop()
            self._finish_stats()
        return stats

    def _finish_stats(self) -> None:
        """Fill in the totals; also when the run ends on an error, so --stats can still say."""
        stats = self.stats
        stats.frames_dropped = sum(p.scheduler.dropped for p in self.performers)
        stats.frames_expected = sum(p.stream.frames_total for p in self.performers)
        stats.nonfinite_frames = self.guard.finish()
        stats.extra.update(self._input_counters())
        stats.extra.update(self.sync.counters())
        if len(self.performers) > 1:
            stats.extra.update(self.publisher.sender.counters())
            stats.extra["model_thread"] = self.model_thread is not None
            stats.extra["hop_phases_ms"] = {k: h.summary() for k, h in stats.phases.items()}
            stats.extra["batch"] = self.batch_summary()
            # frames per window (a batch's windows each publish their own frames)
            rows = self.batch_rows
            stats.extra["stride"] = round(stats.frames_published / rows, 3) if rows else None
            stats.extra["performers"] = {
                p.name: {"frames_published": p.published, "frames_dropped": p.scheduler.dropped,
                         "frames_expected": p.stream.frames_total}
                for p in self.performers
            }  # fmt: skip

    def batch_summary(self) -> dict[str, float]:
        """Windows per model call: mean and max."""
        mean = self.batch_rows / self.batches if self.batches else 0.0
        return {"mean": round(mean, 3), "max": self.batch_max}

    def _step(self) -> float | None:
        """One turn of the hop loop: seconds to sleep next, or None when every input is done."""
        if self._flight is not None:
            self._land()
            self._maybe_log_status()
            return 0.0
        due: list[tuple[Performer, Hop]] = []
        waits = [w for g in self.groups if (w := self._plan_group(g, due)) is not None]
        if due:
            self._hop(due)
            self._maybe_log_status()
            return 0.0
        return min(waits) if waits else None

    def _hop(self, due: list[tuple[Performer, Hop]]) -> None:
        """``due``'s hops: handed to the model thread (:meth:`_land` finishes them), or run
        here start to end."""
        if self.model_thread is not None and len(due) <= self.runner.max_batch:
            self._launch(due)
            return
        self._run_batch(due)
        for p, hop in due:
            p.scheduler.done(hop)

    def _plan_group(self, g: InputGroup, due: list[tuple[Performer, Hop]]) -> float | None:
        """Pull ``g``'s audio and add its performers' ready hops to ``due``; return how long the
        group may wait (None: it is done)."""
        if g.watch.loss is not None:
            return self._step_lost(g)
        source = g.source
        members = g.performers
        missing = self._missing(g)
        # A ring half full is drained whatever the next frame needs: a source that waits for
        # room (a fast file) must never wait on a frame whose audio the ring cannot hold.
        filling = source.ring.available() < source.ring.capacity // 2
        if missing > 0 and filling and not g.capture.ended and not source.finished:
            if source.error:
                raise BridgeError(source.error)
            if g.live and self._input_lost(g):
                return 0.0
            # Audio lands a capture block at a time: sleep until about a block before the
            # frame's last sample is due, then poll cheaply (no pull) until it lands.
            return min(max(POLL_S / 2, (missing - g.block16k) / SAMPLE_RATE), 0.010)
        # live_hops: keep the history no further ahead than the next frame needs.
        if not self.live_hops or any(p.stream.history.count < self._next_needed(p) for p in members):
            # A source faster than real time waits for ring space: take only what the
            # history can hold, so none of its frames is ever skipped.
            gaps = g.capture.gaps
            g.capture.pull(bounded=not g.realtime)
            self._gap_before_hop |= g.capture.gaps != gaps
        if source.error:
            raise BridgeError(source.error)
        waiting = False
        g.needed = None  # hops planned (and, after the turn, done) move the schedulers
        # Members in step (one capture: the same history and, unless a command set one apart,
        # the same schedule) get one plan: the first's decision, its Hop object shared.
        step_key: tuple[int, ...] | None = None
        usable, planned, keys = 0, None, 0
        for p in members:
            stream, sched = p.stream, p.scheduler
            history = stream.history
            key = (sched.next_frame, sched.lookahead, sched.max_stride, history.count,
                   history.first_window_end, stream.gap_end_frame, stream.ended)  # fmt: skip
            if key == step_key:
                sched.drop_until(usable)
                if planned is not None:
                    sched.next_frame = planned.first  # where plan() left the first
                    due.append((p, planned))
                elif not stream.ended:
                    waiting = True
                continue
            # Frames whose audio was lost, or that fell out of the history, are skipped and counted.
            step_key, usable, keys = key, stream.first_usable_frame(), keys + 1
            sched.drop_until(usable)
            planned = sched.plan(history.count, self._oldest_in_time(p) if g.realtime else None)
            if planned is not None:
                due.append((p, planned))
            elif not stream.ended:
                waiting = True
        g.in_step = keys == 1
        return POLL_S if waiting else None

    def _missing(self, g: InputGroup) -> float:
        """Samples of ``g``'s next frame's audio that have not arrived yet (<= 0: all in)."""
        members = g.performers
        if g.needed is None:  # members planned in step last turn need the same audio
            g.needed = self._next_needed(members[0]) if g.in_step else min(map(self._next_needed, members))
        # the members share one capture, so one sample clock: the first one's estimate is theirs
        return g.needed - members[0].stream.expected_count()

    def _maybe_log_status(self) -> None:
        if time.monotonic() >= self._next_status:
            self._next_status += STATUS_EVERY_S
            self._log_status()

    # ---- a lost input: keep the outputs alive, look for it, resume ----------------------
    def _input_lost(self, g: InputGroup) -> bool:
        """Whether ``g``'s live input has just been lost (then the loss has begun)."""
        now = time.monotonic()
        reason = g.watch.check(now)
        if reason is None:
            return False
        source = g.source
        lose = getattr(source, "lose", None)
        if lose is not None:
            lose()  # lets go of the lost stream on PortAudio's worker thread, never here
        if not g.cfg.reconnect:
            g.watch.lose(now, reason)
            raise BridgeError(
                f"input {source.name!r} lost: {reason} (unplugged, or its audio server stopped); "
                "input.reconnect = false ends the run: set it to true to keep the outputs alive "
                "and resume when the input returns"
            )
        loss = g.watch.lose(now, reason)
        self.publisher.start_rest(g.performers)
        looking = f"looking for it every {LOOK_EVERY_S:g} s" if lose is not None else "waiting for it"
        log.warning(
            "input %r lost (%s): easing the face to rest, frames go on from %d; %s%s",
            source.name, loss.reason, g.performers[0].scheduler.next_frame, looking, self._whose(g),
        )  # fmt: skip
        return True

    def _whose(self, g: InputGroup) -> str:
        """`` (performers a, b)`` when there are several performers; empty for one."""
        if len(self.performers) == 1:
            return ""
        return f" (performer{'s' if len(g.performers) > 1 else ''} {', '.join(p.name for p in g.performers)})"

    def _step_lost(self, g: InputGroup) -> float:
        """One turn while ``g``'s input is lost: frames at rest when due, a look for the device."""
        now = time.monotonic()
        loss, source = g.watch.loss, g.source
        assert loss is not None
        if source.error:
            raise BridgeError(source.error)
        if g.watch.back():
            self._input_back(g, now)
            return 0.0
        self.sync.tick()
        if now >= loss.next_frame_due:
            self._publish_rest(g, now, loss)
            # 30 fps on the wall clock; after a hold-up, go on from now rather than burst.
            loss.next_frame_due = max(loss.next_frame_due + 1.0 / FPS, now)
        reopen = getattr(source, "reopen", None)
        if reopen is not None and now >= loss.next_look:
            # A look that cannot start yet (the last one is still closing) is retried soon.
            loss.next_look = now + (LOOK_EVERY_S if reopen() else 0.05)
        self._maybe_log_status()
        due = min(loss.next_frame_due, loss.next_look if reopen is not None else loss.next_frame_due)
        return min(max(due - now, POLL_S), 0.010)

    def _publish_rest(self, g: InputGroup, now: float, loss: Loss) -> None:
        """Each of ``g``'s performers: its next frame number, easing from its last pose to rest."""
        prob = 0.0 if self.runner.last_asr_logits is not None else None
        numbers = [p.scheduler.take_rest_frame() for p in g.performers]
        g.needed = None
        self.publisher.rest(g.performers, numbers, loss.frames / FPS, now, prob)
        g.watch.rest_frames += len(numbers)
        loss.frames += 1

    def _input_back(self, g: InputGroup, now: float) -> None:
        """Audio is back: each performer goes on from its next frame number, after a silent gap."""
        resume = g.watch.resume_frame()
        firsts = g.capture.restart([p.scheduler.next_frame for p in g.performers], resume)
        for p in g.performers:
            p.scheduler.drop_until(p.stream.first_usable_frame())
        g.needed = None
        loss = g.watch.resumed(now)
        every = len(g.performers) == len(self.performers)
        rows = None if every else np.array([p.index for p in g.performers], dtype=np.intp)
        self.publisher.restart(rows)
        self._gap_before_hop = True
        log.warning(
            "input %r is back after %.1f s: capture resumed at frame %d (%d frame(s) sent at rest)%s",
            g.source.name, now - loss.since, firsts[0], loss.frames, self._whose(g),
        )  # fmt: skip

    def _next_needed(self, p: Performer) -> int:
        """Stream sample count at which ``p``'s next frame can be published."""
        sched = p.scheduler
        return frame_end_sample(sched.next_frame + sched.lookahead)

    def _oldest_in_time(self, p: Performer) -> int | None:
        """Oldest ready frame of ``p`` that can still be sent within ``max_latency_ms``."""
        sched, stream = p.scheduler, p.stream
        ready = sched.ready(stream.history.count)
        k = sched.next_frame
        if ready <= k:
            return None
        deadline = time.monotonic() + self._est_inference_s - self.max_latency_s
        while k < ready - 1 and stream.capture_time(frame_end_sample(k) - 1) < deadline:
            k += 1
        return k

    def _switch_model(self, loaded: LoadedModel, first_frame: int) -> None:
        """Hand the hops to the fallback; the streams and the outputs carry on untouched."""
        sw = self.fallback
        event = FallbackEvent(self.model.preset, loaded.preset, sw.reason,
                              time.monotonic() - sw.first_miss, first_frame)  # fmt: skip
        log.warning("switching to fallback model %s at frame %d: %s", loaded.preset, first_frame, sw.reason)
        self.model, self.runner = loaded, loaded.runner
        self.stats.provider, self.stats.model = loaded.runner.provider, loaded.preset
        self.stats.extra["fallback"] = event.as_dict()

    # ---- the batched hop ----------------------------------------------------------------
    def _run_batch(self, due: list[tuple[Performer, Hop]]) -> None:
        """The due performers' hops, here: one model call (per ``max_batch`` rows), then their
        blocks handed to the publisher (post per stride, outputs)."""
        hop_start = self._begin_hop(due)
        step = self.runner.max_batch if self.batched else 1
        worst_ms, dt_total, now = 0.0, 0.0, hop_start
        for lo in range(0, len(due), step):
            part = due[lo : lo + step]
            call = self._call(*self._inputs(part))
            self._count_call(part, call)
            dt_total += call.seconds
            worst, now = self._post_and_publish(part, call.out, call.logits)
            worst_ms = max(worst_ms, worst)
        self._end_hop(due, hop_start, now, worst_ms, dt_total)

    def _begin_hop(self, due: list[tuple[Performer, Hop]]) -> float:
        """A hop starts: a fallback model loaded in the background takes over; how late the
        hop started after its newest audio arrived (``wake``).  Returns the start time."""
        hop_start = time.monotonic()
        loaded = self.fallback.take()
        if loaded is not None:
            self._switch_model(loaded, due[0][1].first)
        elif self.fallback.error:
            log.error("the fallback model failed to load: %s", self.fallback.error)
            self.stats.extra["fallback_error"] = self.fallback.error
            self.fallback.error = None
        first, hop0 = due[0]
        newest = first.stream.capture_time(frame_end_sample(hop0.last) - 1)
        self.stats.phases["wake"].add(max(0.0, hop_start - newest) * 1000.0)
        return hop_start

    def _end_hop(self, due: list[tuple[Performer, Hop]], hop_start: float, now: float, worst_ms: float,
                 inference_s: float) -> None:  # fmt: skip
        """A hop's frames are handed to the outputs: its time, and what the fallback makes of it."""
        self.stats.phases["hop"].add((now - hop_start) * 1000.0)
        if self.fallback.armed:
            missed = any(hop.dropped > 0 for _p, hop in due) or worst_ms > self.max_latency_s * 1000.0
            self.fallback.observe(now, missed, held_up=self._held_up(hop_start, now, inference_s))
        self._last_hop_end = now

    # ---- a call on the model thread, and the hop after it while it runs ------------------------
    def _launch(self, due: list[tuple[Performer, Hop]]) -> None:
        """Hand ``due``'s model call to the model thread; :meth:`_land` finishes the hop."""
        assert self.model_thread is not None
        hop_start = self._begin_hop(due)
        inputs = self._inputs(due)
        self.model_thread.start(lambda: self._call(*inputs, elsewhere=True))
        self._flight = _Flight(due, hop_start)

    def _land(self, more: bool = True) -> None:
        """Collect the call out and publish its frames.  When the next hop's audio is already
        in (the loop is behind), that hop's call goes out first and runs while these frames
        are posted and sent (``more``: look for such a hop)."""
        assert self.model_thread is not None and self._flight is not None
        flight, self._flight = self._flight, None
        part = flight.due
        call: _Call = self.model_thread.result()
        self._count_call(part, call)
        strides = self._strides(part)
        if len(strides) != 1:  # rows at different strides share the block buffers: one by one
            for p, hop in part:
                p.scheduler.done(hop)
            worst_ms, now = self._post_and_publish(part, call.out, call.logits)
            self._end_hop(part, flight.hop_start, now, worst_ms, call.seconds)
            return
        # This hop's frames and audio are copied out of the model's and the history's buffers
        # before anything moves them on.
        stride, rows = next(iter(strides.items()))
        block = self._block(part, call.out, call.logits, rows, stride)
        for p, hop in part:
            p.scheduler.done(hop)
        nxt: list[tuple[Performer, Hop]] = []
        if more:
            self.control.apply()  # between hops: the landed one is done, the next not planned
            landed = {part[i][0].group for i, _j in self.batch.runs(part)}  # a run is one group's
            for i, g in enumerate(self.groups):
                # A turn for every other group (a lost one's frames at rest, a loss noticed);
                # the landed performers only when their next audio is in: a loss noticed now
                # would ease them to rest from before the frames about to be sent.
                if i not in landed or self._missing(g) <= 0:
                    self._plan_group(g, nxt)
        if nxt and len(nxt) <= self.runner.max_batch:
            if block.logits is not None:  # the next call writes its logits where these are
                block.logits = self._hold_logits(block.logits)
            self._launch(nxt)
            nxt = []
        worst_ms, now = self.publisher.block(block)
        self._end_hop(part, flight.hop_start, now, worst_ms, call.seconds)
        if nxt:  # more rows than one call takes: run them here
            self._run_batch(nxt)
            for p, hop in nxt:
                p.scheduler.done(hop)

    def _hold_logits(self, logits: np.ndarray) -> np.ndarray:
        """A copy of ``logits`` in a buffer of the engine's own (grown once, then reused)."""
        if self._held_logits.size < logits.size:
            self._held_logits = np.zeros(logits.size, np.float32)
        held = self._held_logits[: logits.size].reshape(logits.shape)
        np.copyto(held, logits)
        return held

    # ---- the model call -------------------------------------------------------------------
    def _inputs(self, part: list[tuple[Performer, Hop]]) -> tuple[np.ndarray | None, np.ndarray | None,
                                                                  np.ndarray | None]:  # fmt: skip
        """What ``part``'s model call reads: the new samples (when the windows on the device
        can move on) or the whole windows, and the identities (None: the configured one)."""
        batch, runner = self.batch, self.runner
        identities = batch.identities_for(part) if self._identities else None
        # Moving the windows on the device pays off for big batches (16 MB not copied at 256
        # rows); for a few rows the extra small graph run costs more than their upload, and
        # one performer keeps the path its figures were measured on.
        new = batch.continuing(part) if self.batched and len(part) >= ADVANCE_MIN_ROWS else None
        if new is not None and not runner.can_advance(len(part)):
            new = None
        windows = batch.gather_windows(part) if new is None else None
        return new, windows, identities

    def _call(self, new: np.ndarray | None, windows: np.ndarray | None, identities: np.ndarray | None,
              elsewhere: bool = False) -> _Call:  # fmt: skip
        """One model call (in the hop thread, or ``elsewhere``: the model thread): blendshapes
        ``[B, F, 52]``, CTC logits ``[B, T, V]`` or None, and its wall and CPU time."""
        runner = self.runner
        t0, c0 = time.perf_counter(), time.thread_time()
        if windows is None:  # the windows kept on the device move on: only the new samples cross
            assert new is not None
            out = runner.advance_batch(new, identities)
        else:
            out = runner.infer_batch(windows, identities)
        dt, cpu = time.perf_counter() - t0, time.thread_time() - c0
        return _Call(out, runner.last_asr_logits, dt, cpu, elsewhere)

    def _count_call(self, part: list[tuple[Performer, Hop]], call: _Call) -> None:
        """A call's time into the stats (in the hop thread)."""
        stats, dt = self.stats, call.seconds
        stats.inference_cpu_s += call.cpu_seconds
        if call.elsewhere:  # the hop loop's work, done on the model thread
            stats.busy_cpu_s += call.cpu_seconds
        stats.inference.add(dt * 1000.0)
        stats.inference_s += dt
        stats.inferences += 1
        self.batches += 1
        self.batch_rows += len(part)
        self.batch_max = max(self.batch_max, len(part))
        self._est_inference_s = dt if stats.inferences == 1 else 0.9 * self._est_inference_s + 0.1 * dt

    def _strides(self, part: list[tuple[Performer, Hop]]) -> dict[int, list[int]]:
        """``part``'s rows by stride (a run's rows share one hop, so one stride)."""
        strides: dict[int, list[int]] = {}
        for i, j in self.batch.runs(part):
            strides.setdefault(part[i][1].stride, []).extend(range(i, j))
        return strides

    def _block(self, part: list[tuple[Performer, Hop]], out: np.ndarray, logits: np.ndarray | None,
               rows: list[int], stride: int) -> FaceBlock:  # fmt: skip
        """Rows ``rows`` of ``part`` (all at ``stride``) as the publisher's block."""
        frames = out.shape[1]
        _first, hop0 = part[rows[0]]
        lo = frames - 1 - (hop0.window_last_frame - hop0.first)
        values, ctx = self.batch.block(out, rows, part, lo, stride)
        sel = None
        if logits is not None:
            first, count = rows[0], len(rows)
            # the rows' logits [R, T, V]: a view when they are consecutive (the usual case)
            sel = logits[first : first + count] if rows[-1] - first + 1 == count else logits[rows]
        hops = part if len(rows) == len(part) else [part[b] for b in rows]
        return FaceBlock(hops, values, ctx, sel, frames, lo, self.runner.window_samples)

    def _post_and_publish(self, part: list[tuple[Performer, Hop]], out: np.ndarray,
                          logits: np.ndarray | None) -> tuple[float, float]:  # fmt: skip
        """``part``'s published frames as one block per stride, each post-processed and sent
        by the publisher; return the worst latency (ms) and the time of the last send."""
        worst_ms, now = 0.0, time.monotonic()
        for stride, rows in self._strides(part).items():
            w, now = self.publisher.block(self._block(part, out, logits, rows, stride))
            worst_ms = max(worst_ms, w)
        return worst_ms, now

    def _held_up(self, hop_start: float, hop_end: float, inference_s: float) -> bool:
        """Whether this hop was held up by something other than the model (an input gap,
        a stall, a slow output or hook): its misses are then not the model's."""
        waited = hop_start - self._last_hop_end if self._last_hop_end is not None else 0.0
        outside = hop_end - hop_start - inference_s
        gap, self._gap_before_hop = self._gap_before_hop, False
        return gap or waited > self._held_up_s or outside > self._held_up_s

    def _log_status(self) -> None:
        if self.control.terminal_active:  # the terminal's status lines say it
            return
        s = self.stats
        nonfinite = f", {self.guard.describe()}" if self.guard.frames else ""
        dropped = sum(p.scheduler.dropped for p in self.performers)
        batch = ""
        if len(self.performers) > 1:
            b = self.batch_summary()
            batch = f", {len(self.performers)} performers, batch mean {b['mean']:g} max {b['max']}"
        log.info(
            "frames %d (dropped %d%s), latency p50 %s ms p99 %s ms, inference p50 %s ms%s%s%s; outputs: %s",
            s.frames_published, dropped, nonfinite, s.latency.percentile(50),
            s.latency.percentile(99), s.inference.percentile(50), batch, self._input_status(),
            self.sync.describe(), describe_health(self.outputs),
        )  # fmt: skip

    def _input_status(self) -> str:
        """The inputs' part of the status line: only when something happened to one."""
        parts = []
        for g in self.groups:
            w, c = g.watch, g.capture
            name = f"input {g.source.name!r} " if len(self.groups) > 1 else "input "
            if w.loss is not None:
                parts.append(f"{name}LOST for {time.monotonic() - w.loss.since:.0f} s")
            if w.losses:
                parts.append(f"{name}lost {w.losses}x, back {w.reconnects}x")
            if c.gaps:
                gap = "audio gaps" if len(self.groups) == 1 else f"{name}audio gaps"
                parts.append(f"{gap} {c.gaps} ({c.lost_samples / SAMPLE_RATE:.1f} s lost)")
        return "; " + ", ".join(parts) if parts else ""

    def _input_counters(self) -> dict[str, object]:
        """For ``--stats``: one input's counters as before; several inputs summed, with names."""
        now = time.monotonic()
        per = []
        for g in self.groups:
            ring = g.source.ring
            per.append({
                "input": g.source.name,
                "input_overflows": ring.overflows,
                "input_status_flags": ring.status_flags,
                "ring_overruns": ring.overrun,
                "audio_gaps": g.capture.gaps,
                "audio_lost_s": round(g.capture.lost_samples / SAMPLE_RATE, 3),
                **g.watch.counters(now),
                "nonfinite_samples": sum(p.stream.conditioner.nonfinite_samples for p in g.performers),
            })  # fmt: skip
        if len(per) == 1:
            doc: dict[str, object] = per[0]
        else:
            doc = {"input": [d["input"] for d in per]}
            for key in per[0]:
                if key != "input":
                    total = sum(d[key] for d in per)  # type: ignore[misc]
                    doc[key] = round(total, 3) if isinstance(total, float) else total
        doc["outputs"] = {o.name: o.stats() for o in self.outputs}
        return doc

    def close(self) -> None:
        model_thread = getattr(self, "model_thread", None)
        if model_thread is not None:
            model_thread.close()
        publisher = getattr(self, "publisher", None)
        if publisher is not None:
            publisher.sender.close()
        control = getattr(self, "control", None)
        if control is not None:
            control.close()
        for o in self.outputs:
            o.close()
