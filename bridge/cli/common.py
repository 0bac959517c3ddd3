"""What every command shares: one-line errors, logging, command-line overrides, output paths.

Every command turns a :class:`BridgeError` into one line on stderr and exit status 2;
nothing a user does should end in a traceback.  No command module imports
:mod:`bridge.cli.main`, so the group can import them all without a cycle.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bridge import interrupt
from bridge.config import BridgeConfig
from bridge.errors import BridgeError

log = logging.getLogger("bridge")


def friendly(fn: Callable[..., Any] | None = None, *, arm: bool = True) -> Any:
    """Print BridgeErrors as one line and exit non-zero; a signal exits 128 + its number.

    ``arm``: a signal received while the command was being imported raises as the
    command starts (``run`` arms itself, so it can still write ``--stats``).
    """
    if fn is None:
        return functools.partial(friendly, arm=arm)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            if arm:
                interrupt.arm()
            return fn(*args, **kwargs)
        except BridgeError as e:
            click.echo(f"a2e-bridge: error: {e}", err=True)
            sys.exit(e.exit_code)
        except interrupt.Interrupted as e:
            interrupt.say(f"a2e-bridge: stopped by {e.name}")
            sys.exit(e.exit_code)
        except (click.exceptions.Exit, click.ClickException, SystemExit, KeyboardInterrupt):
            raise
        except MemoryError:  # a setting or input too big for this machine: still one line
            click.echo("a2e-bridge: error: out of memory (a setting or an input too big for this "
                       "machine; see docs/configuration.md for the allowed ranges)", err=True)  # fmt: skip
            sys.exit(BridgeError.exit_code)
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


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="a2e-bridge: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:  # the hub client logs every HTTP request at INFO
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)


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


def write_json(path: str, data: dict[str, Any]) -> None:
    try:
        Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise BridgeError(f"cannot write {path}: {e.strerror or e}") from None


def check_writable(path: str, option: str) -> None:
    """Refuse an output file that cannot be written now, before any work (not after a run)."""
    p = Path(path)
    if p.is_dir():
        raise BridgeError(f"{option} {path} is a folder; give a file name, e.g. {option} run.json")
    existed = p.exists()
    try:
        with open(p, "a", encoding="utf-8"):  # append: an existing file is left as it is
            pass
    except OSError as e:
        raise BridgeError(
            f"{option} {path}: cannot write there ({e.strerror or e}); give a path in a writable folder"
        ) from None
    if not existed:
        p.unlink(missing_ok=True)


CONFIG_HELP = "TOML config file (default: built-in defaults, see configs/default.toml)"


def config_option(help: str = CONFIG_HELP) -> Any:
    """``-c/--config FILE``, the same for every command that reads a config."""
    return click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help=help)
