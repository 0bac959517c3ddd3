"""The one exception type a user ever sees.

Every bad input (config, device, model file, audio file, port) is raised as a
``BridgeError`` whose message is a single line: what is wrong, where, what is
allowed and how to fix it.  The CLI prints it and exits non-zero; nothing
else in the package prints tracebacks at users.
"""

from __future__ import annotations


class BridgeError(Exception):
    """A user-facing, one-line error."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
