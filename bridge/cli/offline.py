"""``a2e-bridge offline`` (render a whole file) and ``a2e-bridge calibrate`` (neutral pose)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np

from bridge.cli.common import apply_overrides, check_writable, config_option, friendly, setup_logging
from bridge.config import load_config
from bridge.errors import BridgeError
from bridge.frame import FPS


@contextlib.contextmanager
def _progress(label: str, total: int, enabled: bool = True) -> Iterator[Any]:
    """Progress on stderr, fed ``(done, total)`` frames: a bar on a terminal, else a line per 10 %.

    Silent for short jobs (under 10 s of audio) or when disabled.
    """
    if not enabled or total < 10 * FPS:
        yield None
        return
    if not sys.stderr.isatty():
        state = {"next": 0.1}

        def line(done: int, _total: int) -> None:
            if done >= state["next"] * total or done >= total:
                click.echo(f"{label}: {100 * done // total}% ({done}/{total} frames)", err=True)
                state["next"] = (done * 10 // total + 1) / 10

        yield line
        return
    with click.progressbar(length=total, label=label, file=sys.stderr, show_eta=True,
                           show_pos=True) as bar:  # fmt: skip
        state = {"done": 0}

        def update(done: int, _total: int) -> None:
            if done > state["done"]:
                bar.update(done - state["done"])
                state["done"] = done

        yield update


def _lookaheads(values: tuple[str, ...]) -> list[int]:
    """``--lookahead 0 --lookahead 3`` or ``--lookahead 0,3,6``; default 0, 3, 6."""
    out: list[int] = []
    for v in values or ("0,3,6",):
        for part in v.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit():
                raise BridgeError(f"--lookahead {v!r}: give whole numbers of frames, e.g. --lookahead 0,3,6")
            out.append(int(part))
    return sorted(set(out))


def _with_window(cfg: Any, window: float | None) -> Any:
    if window is None:
        return cfg
    if not 0.1 <= window <= 10 or abs(window * 10 - round(window * 10)) > 1e-9:
        raise BridgeError(f"--window {window}: must be a multiple of 0.1 s between 0.1 and 10")
    return cfg.replace(model=dataclasses.replace(cfg.model, window_s=window))


@click.command()
@click.argument("input_file", metavar="IN")
@click.option(
    "-o",
    "--output",
    "out",
    metavar="OUT.csv|.json|.npy",
    help="Live Link Face CSV, JSON or npy (n x 61: 52 weights + 9 head/eye values)",
)
@config_option("TOML config: model, [post] chain, input.channel")
@click.option("--model", metavar="PRESET|PATH", help="model preset (e.g. synthetic) or .onnx path")
@click.option("--raw", is_flag=True, help="bypass all post-processing")
@click.option(
    "--timecode-fps",
    type=click.Choice(["60", "30"]),
    help="CSV timecode rate: 60 (default, the Live Link Face app's: the frame field steps by 2) or 30",
)
@click.option(
    "--timecode",
    "timecode",
    metavar="stream|system|HH:MM:SS[.fff]",
    help="CSV timecodes from: stream (default, 00:00:00 at the first row), system (the time of day the "
    "file was recorded: its bext TimeReference, else modification time minus duration) or a start time",
)
@click.option("--plot", "plot_path", metavar="OUT.png", help="draw the main channels above the waveform")
@click.option(
    "--window", type=float, metavar="SECONDS", help="model window for this render (default: model.window_s)"
)
@click.option(
    "--compare-streaming",
    is_flag=True,
    help="also run the realtime path and report its difference per lookahead",
)
@click.option(
    "--lookahead",
    "lookahead",
    multiple=True,
    metavar="N[,N..]",
    help="lookahead_frames to compare (default 0,3,6)",
)
@click.option("--report", "report_path", metavar="FILE.json", help="write the comparison per channel here")
@click.option("-q", "--quiet", is_flag=True, help="no progress bar")
@friendly
def offline(input_file: str, out: str | None, config_path: str | None, model: str | None, raw: bool,
            timecode_fps: str | None, timecode: str | None, plot_path: str | None, window: float | None,
            compare_streaming: bool, lookahead: tuple[str, ...], report_path: str | None,
            quiet: bool) -> None:  # fmt: skip
    """Render a whole audio file with full context (no latency limit) to CSV, JSON or npy.

    Overlapping model windows are stitched keeping each window's middle frames;
    frame k depicts audio [k/30, (k+1)/30).  The post chain of the config runs
    over the frames in order, as in realtime.
    """
    from bridge.clock import format_time_of_day
    from bridge.engine import load_model
    from bridge.filetime import file_start_time_of_day, parse_time_of_day
    from bridge.offline import (
        OUTPUT_SUFFIXES,
        compare,
        comparison_table,
        plot_render,
        read_audio,
        render,
        render_streaming,
        with_fixed_blinks,
        write_render,
    )  # fmt: skip

    setup_logging(False)
    if not (out or plot_path or compare_streaming):
        raise BridgeError("nothing to do: give -o OUT.csv|.json|.npy, --plot OUT.png or --compare-streaming")
    if out and Path(out).suffix.lower() not in OUTPUT_SUFFIXES:
        raise BridgeError(f"-o {out}: unknown format; use a .csv, .json or .npy name")
    if report_path and not compare_streaming:
        raise BridgeError("--report needs --compare-streaming")
    for given, option in ((timecode_fps, "--timecode-fps"), (timecode, "--timecode")):
        if given and not (out and Path(out).suffix.lower() == ".csv"):
            got = f"-o {out}" if out else "no -o"
            raise BridgeError(f"{option} is for a Live Link Face CSV: give -o OUT.csv (got {got})")
    start_of_day = None
    if timecode not in (None, "stream", "system"):
        start_of_day = parse_time_of_day(timecode)
    for path, option in ((out, "-o"), (plot_path, "--plot"), (report_path, "--report")):
        if path:
            check_writable(path, option)  # now, not after the render
    lookaheads = _lookaheads(lookahead) if compare_streaming else []
    cfg = _with_window(apply_overrides(load_config(config_path), model=model), window)
    if compare_streaming:
        cfg = with_fixed_blinks(cfg)
    audio = read_audio(input_file, cfg.input.channel)
    loaded = load_model(cfg.model)
    with _progress("rendering", audio.frames, not quiet) as progress:
        result = render(cfg, audio, raw=raw, progress=progress, model=loaded)
    click.echo(
        f"{input_file}: {audio.duration_s:.2f} s ({audio.source_rate} Hz, {audio.source_channels} ch) "
        f"-> {result.frames} frames; model {result.model}; {result.post}",
        err=True,
    )
    if timecode == "system":
        start_of_day, how = file_start_time_of_day(input_file, audio.duration_s)
        click.echo(f"timecode: first row at {format_time_of_day(start_of_day, 30)} (30 fps), from {how}",
                   err=True)  # fmt: skip
    if out:
        write_render(out, result, int(timecode_fps) if timecode_fps else None, start_of_day)
        click.echo(f"wrote {out}", err=True)
    if plot_path:
        plot_render(plot_path, result)
        click.echo(f"wrote {plot_path}", err=True)
    if not compare_streaming:
        return
    results = []
    for la in lookaheads:
        with _progress(f"streaming, lookahead {la}", result.frames, not quiet) as progress:
            streamed = render_streaming(cfg, input_file, lookahead=la, raw=raw, frames=result.frames,
                                        progress=progress)  # fmt: skip
        results.append(compare(result.values, streamed, la))
    click.echo("mean absolute difference, realtime path vs offline render (0..1 weights):")
    click.echo(comparison_table(results))
    if report_path:
        data = {"input": input_file, "frames": result.frames, "model": result.model, "post": result.post,
                "raw": raw, "lookaheads": [r.as_dict() for r in results]}  # fmt: skip
        try:
            Path(report_path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            raise BridgeError(f"cannot write {report_path}: {e.strerror or e}") from None
        click.echo(f"wrote {report_path}", err=True)


class _Recorder:
    """A post 'stage' that keeps what the model said and how loud each frame was."""

    delay_frames = 0

    def __init__(self) -> None:
        self.values: list[np.ndarray] = []
        self.rms: list[np.ndarray] = []

    def process(self, values: np.ndarray, ctx: Any) -> None:
        # one performer, as a batch ([1, F, 52], the chain's form) or not ([F, 52]): keep [F, 52]
        self.values.append(values.reshape(-1, values.shape[-1]).copy())
        self.rms.append(np.array(ctx.rms, dtype=np.float32).reshape(-1)[: self.values[-1].shape[0]])


@click.command()
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.5),
    default=5.0,
    show_default=True,
    help="how much silence to record",
)
@click.option("--device", metavar="NAME", help="record from this input device (name or index)")
@click.option("--input", "input_file", metavar="FILE", help="use a recording of the room instead")
@config_option("TOML config (model, identity, input, schedule.lookahead_frames)")
@click.option("--model", metavar="PRESET|PATH", help="model preset or .onnx path")
@click.option(
    "--offline",
    "offline_path",
    is_flag=True,
    help="with --input: measure through the offline renderer (for `offline` renders)",
)
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    metavar="calibration.toml|.json",
    help='calibration file to write; use it with [post] calibration = "FILE"',
)
@friendly
def calibrate(seconds: float, device: str | None, input_file: str | None, config_path: str | None,
              model: str | None, offline_path: bool, out: str) -> None:  # fmt: skip
    """Record your silence through the model and store its per-channel floor.

    Sit still with your mouth closed and say nothing: the model's output then
    is its floor (what it says when nobody speaks), which the calibration stage
    subtracts so silence is a closed mouth.  The floor belongs to the model, its
    identity and the path (realtime with its lookahead, or --offline).
    """
    from bridge.blendshapes import canonical_index
    from bridge.offline import MAIN_CHANNELS
    from bridge.post.calibration import CalibrationData, save_calibration

    setup_logging(False)
    if Path(out).suffix.lower() not in (".toml", ".json"):
        raise BridgeError(f"-o {out}: use a .toml or .json name")
    if offline_path and not input_file:
        raise BridgeError("--offline measures a file: give --input FILE")
    check_writable(out, "-o")  # now, not after the recording
    cfg = apply_overrides(load_config(config_path), input_file=input_file, device=device, model=model,
                          realtime=False if input_file else None)  # fmt: skip
    cfg = cfg.replace(outputs=())
    source = cfg.input.file if cfg.input.kind == "file" else (cfg.input.device or "the default input")
    if offline_path:
        values, rms, preset = _record_offline(cfg, str(input_file), seconds)
        through = "offline"
    else:
        values, rms, preset = _record_realtime(cfg, seconds, str(source))
        through = f"realtime, lookahead {cfg.schedule.lookahead_frames}"
    facts = {"through": through, "identity": cfg.model.identity}
    data = CalibrationData.from_recording(
        values, rms, model=preset, seconds=values.shape[0] / FPS, extra=facts
    )
    save_calibration(out, data)
    floors = ", ".join(f"{n} {data.offsets[canonical_index(n)]:.3f}" for n in MAIN_CHANNELS)
    click.echo(f"wrote {out}: {data.frames} frames through the {through} path; floor {floors}")
    if data.noise_db is not None:
        g = cfg.post.gate
        click.echo(
            f"room level {data.noise_db:.1f} dBFS; silence gate opens at {g.open_db:g} and closes "
            f"below {g.close_db:g} dBFS (keep close_db at least 6 dB above the room)"
        )
        if data.noise_db > g.close_db - 6:
            click.echo(
                f"warning: the recording is loud for silence ({data.noise_db:.1f} dBFS): if you were "
                "quiet, raise [post.gate] open_db/close_db above it; else record again in silence",
                err=True,
            )
    click.echo(f'use it with: [post] calibration = "{out}"')


def _record_realtime(cfg: Any, seconds: float, source: str) -> tuple[np.ndarray, np.ndarray, str]:
    """The raw model output and frame RMS of ``seconds`` of input through the realtime path."""
    from bridge.engine import Bridge
    from bridge.post import PostChain

    bridge = Bridge(cfg, duration=seconds, live_hops=cfg.input.kind == "file")
    recorder = _Recorder()
    bridge.post = PostChain([recorder])  # the raw model output, whatever the config's chain is
    click.echo(
        f"recording {seconds:g} s of silence from {source} through {bridge.model.preset} ...", err=True
    )
    try:
        bridge.run()
    finally:
        bridge.close()
    values = np.concatenate(recorder.values) if recorder.values else np.zeros((0, 52), np.float32)
    rms = np.concatenate(recorder.rms) if recorder.rms else np.zeros(0, np.float32)
    return values, rms, bridge.model.preset


def _record_offline(cfg: Any, path: str, seconds: float) -> tuple[np.ndarray, np.ndarray, str]:
    """The same through the offline renderer (the first ``seconds`` of the file)."""
    from bridge.offline import Audio, read_audio, render

    audio = read_audio(path, cfg.input.channel)
    n = min(audio.samples.shape[0], round(seconds * 16000))
    clip = Audio(audio.samples[:n], min(audio.frames, -((-n * FPS) // 16000)), audio.source_rate,
                 audio.source_channels, n / 16000, audio.path)  # fmt: skip
    r = render(cfg, clip, raw=True)
    return r.raw, r.rms, r.model
