"""Command line: ``a2e-bridge run | devices | models synth | bench``.

Every command turns a :class:`BridgeError` into one line on stderr and exit
status 2; nothing a user does should end in a traceback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bridge import __version__
from bridge.config import BridgeConfig, load_config
from bridge.errors import BridgeError

log = logging.getLogger("bridge")


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print BridgeErrors as one line and exit non-zero."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BridgeError as e:
            click.echo(f"a2e-bridge: error: {e}", err=True)
            sys.exit(e.exit_code)
        except (click.exceptions.Exit, click.ClickException, SystemExit, KeyboardInterrupt):
            raise
        except Exception as e:  # a bug: still one line, the traceback on request
            if os.environ.get("A2E_BRIDGE_DEBUG"):
                raise
            first = str(e).splitlines()[0] if str(e) else ""
            click.echo(
                f"a2e-bridge: internal error: {type(e).__name__}: {first} "
                "(please report it; A2E_BRIDGE_DEBUG=1 shows the traceback)",
                err=True,
            )
            sys.exit(1)

    return wrapper


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="a2e-bridge: %(message)s",
        stream=sys.stderr,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="a2e-bridge")
def main() -> None:
    """Realtime audio -> LAM Audio-to-Expression -> ARKit face frames (Live Link, OSC, ZeroMQ)."""


def apply_overrides(
    cfg: BridgeConfig, *, input_file: str | None = None, device: str | None = None,
    model: str | None = None, realtime: bool | None = None,
) -> BridgeConfig:  # fmt: skip
    """Command-line options over the config file."""
    from bridge.model.presets import PRESETS

    inp, mdl = cfg.input, cfg.model
    if input_file is not None and device is not None:
        raise BridgeError("give either --input FILE or --device NAME, not both")
    if input_file is not None:
        inp = _replace(inp, kind="file", file=input_file)
    if device is not None:
        dev: str | int = int(device) if device.isdigit() else device
        inp = _replace(inp, kind="device", device=dev)
    if realtime is not None:
        inp = _replace(inp, realtime=realtime)
    if model is not None:
        if model in PRESETS:
            mdl = _replace(mdl, preset=model, path=None)
        elif model.endswith(".onnx") or Path(model).exists():
            mdl = _replace(mdl, path=model)
        else:
            raise BridgeError(
                f"--model {model!r} is neither a preset ({', '.join(PRESETS)}) nor an .onnx file"
            )
    return cfg.replace(input=inp, model=mdl)


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)


def _write_json(path: str, data: dict[str, Any]) -> None:
    try:
        Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise BridgeError(f"cannot write {path}: {e.strerror or e}") from None


@main.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML config file (default: built-in defaults, see configs/default.toml)",
)
@click.option("--input", "input_file", metavar="FILE", help="read audio from FILE instead of a device")
@click.option("--device", metavar="NAME", help="capture from this input device (name or index)")
@click.option("--model", metavar="PRESET|PATH", help="model preset (e.g. synthetic) or .onnx path")
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="stop after this many seconds of audio",
)
@click.option("--raw", is_flag=True, help="bypass all post-processing")
@click.option("--fast", is_flag=True, help="file input: as fast as possible, not real time")
@click.option("--stats", "stats_path", metavar="FILE", help="write a JSON summary here on exit")
@click.option("-v", "--verbose", is_flag=True)
@friendly
def run(config_path: str | None, input_file: str | None, device: str | None, model: str | None,
        duration: float | None, raw: bool, fast: bool, stats_path: str | None,
        verbose: bool) -> None:  # fmt: skip
    """Run the bridge until the input ends, --duration passes, or Ctrl-C."""
    from bridge.pipeline import Bridge

    _setup_logging(verbose)
    cfg = apply_overrides(load_config(config_path), input_file=input_file, device=device,
                          model=model, realtime=False if fast else None)  # fmt: skip
    bridge = Bridge(cfg, raw=raw, duration=duration)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("%s", bridge.describe())
    try:
        stats = bridge.run(stop).as_dict()
    except BridgeError:
        if stats_path:  # the run ended on a fault (an input lost, ...): still say what it did
            _write_json(stats_path, bridge.stats.as_dict())
        raise
    finally:
        bridge.close()
    log.info(
        "published %d of %d frames (%d dropped); latency p50 %s ms, p99 %s ms",
        stats["frames_published"], stats["frames_expected"], stats["frames_dropped"],
        stats["latency_ms"]["p50"], stats["latency_ms"]["p99"],
    )  # fmt: skip
    if stats.get("frames_at_rest"):
        log.info("%d more frame(s) sent at rest while the input was lost (%d time(s), %.1f s)",
                 stats["frames_at_rest"], stats["input_losses"], stats["input_lost_s"])  # fmt: skip
    if stats_path:
        _write_json(stats_path, stats)


@main.command()
@friendly
def devices() -> None:
    """List audio input devices with their rates and channel counts."""
    from bridge.sources.device import describe_devices

    click.echo(describe_devices())


@main.command()
@click.option("--model", default="synthetic-full", show_default=True, metavar="PRESET|PATH")
@click.option("--seconds", type=click.FloatRange(min=1), default=60, show_default=True)
@click.option("--json", "json_path", metavar="FILE", help="write the results here")
@click.option(
    "--input",
    "input_file",
    metavar="FILE",
    help="audio file to play (default: a speech-like 48 kHz signal)",
)
@click.option("--providers", default=None, metavar="LIST", help="e.g. cuda,cpu (default: config)")
@click.option("--lookahead", type=click.IntRange(min=0), default=None, help="lookahead_frames")
@click.option("--window", "window_s", type=float, default=None, help="model.window_s (seconds)")
@click.option("--cuda-graph/--no-cuda-graph", default=None, help="model.cuda_graph (default: config)")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False))
@friendly
def bench(model: str, seconds: float, json_path: str | None, input_file: str | None,
          providers: str | None, lookahead: int | None, window_s: float | None, cuda_graph: bool | None,
          config_path: str | None) -> None:  # fmt: skip
    """Run the whole pipeline from a file at real-time pace into all outputs and report."""
    from bridge.bench import run_bench

    _setup_logging(False)
    result = run_bench(model=model, seconds=seconds, input_file=input_file,
                       providers=providers, lookahead=lookahead, window_s=window_s,
                       cuda_graph=cuda_graph,
                       config=load_config(config_path))  # fmt: skip
    click.echo(json.dumps(result, indent=2))
    if json_path:
        _write_json(json_path, result)


def _register_command_modules() -> None:
    """Command families that live in their own modules (bridge/commands/)."""
    from bridge.commands import offline
    from bridge.commands.models import models

    main.add_command(models)
    offline.register(main)  # offline, calibrate


_register_command_modules()

if __name__ == "__main__":  # pragma: no cover
    main()
