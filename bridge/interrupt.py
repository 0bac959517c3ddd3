"""Signals that end a run: SIGINT (Ctrl-C), SIGTERM, SIGHUP and SIGQUIT.

Standard library only, so the entry points (``bridge/__main__.py``) install the
handlers before anything heavy is imported: a signal at any moment ends the
process with one line, an exit status and (for ``run``) its ``--stats``, never a
traceback.  Three phases:

* while the command's modules are being imported, a signal is only recorded
  (``deferred``); the command raises it as soon as it starts (:func:`arm`), so
  ``run`` can still write ``--stats`` for it;
* while a command works (config, model load, downloads: ``raise``), the handler
  raises :class:`Interrupted`, which no ``except Exception`` swallows: an
  interrupted model load is never taken for a load failure;
* while the hop loop runs (:func:`defer`), the handler only sets the stop event
  the loop polls, so the run ends at a hop boundary with its stats complete.

A second signal while deferred raises at once.  Python runs signal handlers only
between bytecodes of the main thread, so a long C call (ONNX Runtime building a
session, a stuck audio driver) would hold the exit back: a watchdog thread woken
through ``signal.set_wakeup_fd`` ends the process ``GRACE_S`` after a signal if the
main thread has not, after writing what ``last_words`` registered (``--stats``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import socket

#: Seconds after a signal before the watchdog ends a process whose main thread is stuck.
GRACE_S = 5.0

#: The signals that end a run (those this platform has).
SIGNALS = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")) if s is not None
)

_stop = threading.Event()
_received: int | None = None  #: the first signal received
_raise = False  #: raise from the handler (True) or only record (False)
_exit_lock = threading.Lock()  #: held by whoever writes the last words and exits
_last_words: Callable[[Interrupted], None] | None = None
_done = False  #: the main thread has said its last words
_wake: tuple[socket.socket, socket.socket] | None = None


class Interrupted(BaseException):  # noqa: N818 -- not an Exception: `except Exception` must not catch it
    """A signal that ends the process; ``exit_code`` is 128 + its number (130 for SIGINT)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal_name(signum)
        self.exit_code = 128 + signum
        super().__init__(self.name)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _handler(signum: int, _frame: object) -> None:
    global _received
    first = _received is None
    if first:
        _received = signum
    _stop.set()
    if _raise or not first:
        raise Interrupted(signum)


def install() -> bool:
    """Take over the signals (deferred phase); False where it cannot (not the main thread)."""
    global _raise, _wake
    if threading.current_thread() is not threading.main_thread():
        return False
    _raise = False
    for sig in SIGNALS:
        signal.signal(sig, _handler)
    if _wake is None:  # after the handlers: socket is a (small) import of its own
        import socket

        with contextlib.suppress(OSError, ValueError):
            r, w = socket.socketpair()
            w.setblocking(False)
            signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
            _wake = (r, w)
            threading.Thread(target=_watchdog, args=(r,), name="a2e-signal-watchdog", daemon=True).start()
    return True


def _watchdog(wake: socket.socket) -> None:
    """Ends the process GRACE_S after the first signal if the main thread has not done so."""
    try:
        data = wake.recv(16)  # the C-level handler writes each signal's number here
    except OSError:
        return
    if not data:
        return
    threading.Event().wait(GRACE_S)
    signum = _received if _received is not None else data[0]
    force_exit(Interrupted(signum), f"(the main thread did not stop within {GRACE_S:g} s)")


def last_words(fn: Callable[[Interrupted], None] | None) -> None:
    """What a forced exit runs first (``run`` writes its ``--stats``); None for nothing."""
    global _last_words
    _last_words = fn


@contextlib.contextmanager
def exiting() -> Iterator[None]:
    """Around the main thread's own last words (stats, the line): the watchdog waits, then
    only ends the process if what follows (closing, interpreter shutdown) gets stuck."""
    global _done, _last_words
    with _exit_lock:
        yield
        _done, _last_words = True, None


def force_exit(e: Interrupted, why: str = "") -> None:
    """Last words (unless the main thread said them), one line, then ``os._exit``."""
    if _exit_lock.acquire(timeout=GRACE_S) and not _done:
        words = _last_words
        if words is not None:
            with contextlib.suppress(Exception):
                words(e)
        say(f"a2e-bridge: stopped by {e.name} {why}".rstrip())
    os._exit(e.exit_code)


def installed() -> bool:
    return bool(SIGNALS) and signal.getsignal(SIGNALS[0]) is _handler


def arm() -> None:
    """From here on a signal raises :class:`Interrupted`; one received already raises now."""
    global _raise
    _raise = True
    check()


def defer() -> threading.Event:
    """From here on a (first) signal only sets the returned event, which the hop loop polls."""
    global _raise
    _raise = False
    return _stop


def check() -> None:
    """Raise :class:`Interrupted` if a signal has been received."""
    if _received is not None:
        raise Interrupted(_received)


def received() -> str | None:
    """Name of the signal received, if any (``"SIGINT"``)."""
    return signal_name(_received) if _received is not None else None


def say(line: str) -> None:
    """One line on stderr; nothing if stderr is gone (SIGHUP: the terminal closed)."""
    import sys

    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)
