"""``python -m bridge`` and the ``a2e-bridge`` console script.

The signal handlers go in first, before click, numpy and ONNX Runtime are imported
(half a second): Ctrl-C, SIGTERM, SIGHUP or SIGQUIT at any moment then ends the
process with one line and an exit status, never a traceback (bridge/interrupt.py).
"""

from __future__ import annotations

import sys

from bridge import interrupt


def main() -> None:
    interrupt.install()
    try:
        from bridge.cli.main import main as cli

        cli()
    except interrupt.Interrupted as e:  # raised outside a command (while click parses)
        interrupt.say(f"a2e-bridge: stopped by {e.name}")
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
