"""``a2e-bridge run`` (the live bridge) and ``a2e-bridge devices``."""

from __future__ import annotations

import sys
from typing import Any

import click

from bridge import interrupt
from bridge.cli.common import (
    apply_overrides,
    check_writable,
    config_option,
    friendly,
    log,
    setup_logging,
    write_json,
)
from bridge.config import load_config
from bridge.errors import BridgeError


def _interrupted_stats(e: interrupt.Interrupted, phase: str, bridge: Any) -> dict[str, Any]:
    interrupted = {"signal": e.name, "phase": phase}
    if bridge is not None and phase == "run":
        return {**bridge.stats.as_dict(), "interrupted": interrupted}
    # Nothing ran; plain values only (numpy may be the import the signal cut short).
    return {"frames_published": 0, "frames_expected": 0, "frames_dropped": 0, "interrupted": interrupted}


def _stopped_early(e: interrupt.Interrupted, phase: str, bridge: Any, stats_path: str | None) -> None:
    """A signal before the run (or a second one during it): one line, ``--stats``, exit 128 + n."""
    where = {"start": "while starting", "load": "while loading the model", "run": "during the run"}[phase]
    with interrupt.exiting():
        interrupt.say(f"a2e-bridge: stopped by {e.name} {where}")
        if stats_path:
            write_json(stats_path, _interrupted_stats(e, phase, bridge))
    sys.exit(e.exit_code)


@click.command()
@config_option("TOML config file (default: built-in defaults, see configs/default.toml)")
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
@click.option(
    "--console",
    "console_port",
    is_flag=False,
    flag_value=-1,
    type=int,
    default=None,
    metavar="[PORT]",
    help="serve the live console (default port 8766, [console] port) and OSC control ([control])",
)
@click.option("-v", "--verbose", is_flag=True)
@friendly(arm=False)
def run(config_path: str | None, input_file: str | None, device: str | None, model: str | None,
        duration: float | None, raw: bool, fast: bool, stats_path: str | None,
        console_port: int | None, verbose: bool) -> None:  # fmt: skip
    """Run the bridge until the input ends, --duration passes, or Ctrl-C."""
    setup_logging(verbose)
    if not interrupt.installed():  # entered other than through bridge/__main__.py
        interrupt.install()
    phase, bridge = "start", None

    def last_words(e: interrupt.Interrupted) -> None:  # the watchdog's, if this thread gets stuck
        if stats_path:
            write_json(stats_path, _interrupted_stats(e, phase, bridge))

    interrupt.last_words(last_words)
    try:
        interrupt.arm()  # a signal during the imports stops here, with --stats
        if stats_path:
            check_writable(stats_path, "--stats")
        from bridge.engine import Bridge
        from bridge.outputs.livelink import timecode_stats

        cfg = apply_overrides(load_config(config_path), input_file=input_file, device=device,
                              model=model, realtime=False if fast else None)  # fmt: skip
        if console_port is not None:
            cfg = _with_console(cfg, console_port)
        phase = "load"
        bridge = Bridge(cfg, raw=raw, duration=duration)
        interrupt.check()  # in case a library swallowed the signal while loading
        phase = "run"
        log.info("%s", bridge.describe())
        for line in bridge.control_lines:  # the console's URL (and its token, once)
            log.info("%s", line)
        if sys.stdout.isatty():
            bridge.control.start_terminal()
        stats = bridge.run(interrupt.defer()).as_dict()  # a signal now ends the run at a hop
        stats.update(timecode_stats(bridge.outputs))  # system timecode sent: its first and last frames
    except interrupt.Interrupted as e:
        _stopped_early(e, phase, bridge, stats_path)
        raise  # not reached
    except BridgeError:
        if stats_path and bridge is not None and phase == "run":  # ended on a fault (input lost, ...)
            write_json(stats_path, {**bridge.stats.as_dict(), **timecode_stats(bridge.outputs)})
        raise
    finally:
        if bridge is not None:
            bridge.close()
    stopped_by = interrupt.received()
    if stopped_by:
        stats["stopped_by"] = stopped_by
    log.info(
        "published %d of %d frames (%d dropped); latency p50 %s ms, p99 %s ms%s",
        stats["frames_published"], stats["frames_expected"], stats["frames_dropped"],
        stats["latency_ms"]["p50"], stats["latency_ms"]["p99"],
        f"; stopped by {stopped_by}" if stopped_by else "",
    )  # fmt: skip
    if stats.get("frames_at_rest"):
        log.info("%d more frame(s) sent at rest while the input was lost (%d time(s), %.1f s)",
                 stats["frames_at_rest"], stats["input_losses"], stats["input_lost_s"])  # fmt: skip
    if stats_path:
        with interrupt.exiting():
            write_json(stats_path, stats)


def _with_console(cfg: Any, port: int) -> Any:
    """``--console [PORT]``: the web console on, OSC control on, the port if given."""
    import dataclasses

    if not -1 <= port <= 65535:
        raise BridgeError(f"--console {port}: a port is 1..65535 (0: any free port)")

    console = dataclasses.replace(cfg.console, enabled=True, **({"port": port} if port >= 0 else {}))
    return cfg.replace(console=console, control=dataclasses.replace(cfg.control, enabled=True))


@click.command()
@click.option("--output", is_flag=True, help="list output devices (for [sync] passthrough_device)")
@friendly
def devices(output: bool) -> None:
    """List audio input (or output) devices with their rates and channel counts."""
    if output:
        from bridge.sync.devices import describe_output_devices

        click.echo(describe_output_devices())
        return
    from bridge.audio.device import describe_devices

    click.echo(describe_devices())
