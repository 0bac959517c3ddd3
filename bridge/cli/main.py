"""The ``a2e-bridge`` command group: ``run``, ``devices``, ``bench``, ``models ...``, ``offline``,
``calibrate``.  Each command lives in its own module; this one only assembles them."""

from __future__ import annotations

import click

from bridge import __version__
from bridge.cli.bench import bench
from bridge.cli.models import models
from bridge.cli.offline import calibrate, offline
from bridge.cli.run import devices, run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="a2e-bridge")
def main() -> None:
    """Realtime audio -> LAM Audio-to-Expression -> ARKit face frames (Live Link, OSC, ZeroMQ)."""


for command in (run, devices, bench, models, offline, calibrate):
    main.add_command(command)

if __name__ == "__main__":  # pragma: no cover
    main()
