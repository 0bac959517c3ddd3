"""PortAudio control calls (open, start, abort, close, re-initialise) kept off the hop loop.

PortAudio can block for a long time on a device that went away: ALSA polls a
dead stream for ~35 s before it gives up, and a stream whose JACK server died may
never return from ``Pa_StopStream``.  So every control call runs on a worker
thread: :meth:`PortAudioWorker.call` waits for it at most a timeout,
:meth:`PortAudioWorker.submit` does not wait at all.  Calls run one at a time
(PortAudio is not thread-safe); a call that outlives its timeout is abandoned:
its (daemon) thread is left to finish or not, no other call starts while it
runs (if it returns at last, calls go on), and PortAudio is marked unsafe to
terminate.

Terminating PortAudio is unsafe in two cases, both seen here: a call is stuck
in it (``Pa_Terminate`` would wait on it), or its JACK host API is loaded and a
capture stream was lost (the JACK server may have died: PortAudio 19.6's JACK
``Terminate`` then fails ``assert(err == 0)`` and aborts the process, exit 134).
Then PortAudio is never terminated in this process, not even at exit
(sounddevice's exit handler is unregistered); the OS reclaims it, and a living
JACK server notices its client is gone.

While a lost device is being looked for, every failed open makes PortAudio, ALSA
and JACK print their own diagnostics on stderr, several lines every half second.
:func:`quiet_native_stderr` routes file descriptor 2 to a file during such an
attempt and writes back everything but those diagnostics.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

_unsafe: str | None = None  #: why PortAudio must not be terminated in this process any more


class PortAudioHung(Exception):
    """A PortAudio call did not return within its timeout (and was abandoned)."""


def mark_unsafe_to_terminate(reason: str) -> None:
    """Never terminate PortAudio in this process from now on (see the module docstring)."""
    global _unsafe
    if _unsafe is not None:
        return
    _unsafe = reason
    sd = sys.modules.get("sounddevice")
    handler = getattr(sd, "_exit_handler", None)
    if handler is not None:
        atexit.unregister(handler)
    log.debug("PortAudio will not be terminated at exit: %s", reason)


def unsafe_to_terminate() -> str | None:
    return _unsafe


def jack_host_api_loaded(sd: ModuleType) -> bool:
    """Whether PortAudio holds a client on a JACK server (its JACK host API is loaded)."""
    try:
        return any(str(h["name"]).startswith("JACK") for h in sd.query_hostapis())
    except Exception:
        return False


def reinitialise(sd: ModuleType) -> None:
    """Terminate and initialise PortAudio again, so it enumerates the devices there are now.

    Device indices change, and every open stream is closed: only for when the one
    stream this process uses is already closed.
    """
    levels = max(int(sd._initialized), 1)
    while sd._initialized > 0:
        sd._terminate()
    for _ in range(levels):
        sd._initialize()


class PortAudioWorker:
    """Runs PortAudio control calls one at a time on daemon threads, with timeouts."""

    def __init__(self, name: str) -> None:
        self.name = name  #: the device, for the one line said when PortAudio hangs
        self._thread: threading.Thread | None = None
        self._what = ""
        self._since = 0.0
        self._timeout = 0.0
        self.hung: str | None = None  #: the call that hung, once one has

    def busy(self) -> bool:
        """Whether a call is still running; one running longer than its timeout has hung."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            if self.hung is not None:  # it returned at last: PortAudio can be used again
                log.warning("input device '%s': PortAudio returned after %.1f s (%s)",
                            self.name, time.monotonic() - self._since, self._what)  # fmt: skip
                self.hung = None
            return False
        if self.hung is None and time.monotonic() - self._since > self._timeout:
            self._abandon()
        return True

    def submit(self, fn: Callable[[], Any], what: str, timeout: float) -> bool:
        """Start ``fn`` on a worker thread and return at once; False if a call is still running.

        A call still running past ``timeout`` is found hung by the next ``submit`` or ``busy``.
        """
        if self.busy():
            return False
        self._start(fn, what, timeout)
        return True

    def call(self, fn: Callable[[], Any], what: str, timeout: float) -> Any:
        """Run ``fn`` on a worker thread; its result, or its exception, within ``timeout``.

        Waits for a call still running first (within the same timeout).  Raises
        :class:`PortAudioHung` when either does not return in time.
        """
        deadline = time.monotonic() + timeout
        if self.busy() and self.hung is not None:
            raise PortAudioHung(self.hung)  # PortAudio is stuck already: no use waiting again
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self._abandon()
                raise PortAudioHung(self.hung)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["value"] = fn()
            except BaseException as e:  # handed to the caller
                result["error"] = e

        thread = self._start(run, what, timeout)
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            self._abandon()
            raise PortAudioHung(self.hung)
        if "error" in result:
            raise result["error"]
        return result.get("value")

    def _start(self, fn: Callable[[], Any], what: str, timeout: float) -> threading.Thread:
        thread = threading.Thread(target=fn, name=f"a2e-portaudio: {what}", daemon=True)
        self._thread, self._what, self._since, self._timeout = thread, what, time.monotonic(), timeout
        thread.start()
        return thread

    def _abandon(self) -> None:
        if self.hung is not None:
            return
        waited = time.monotonic() - self._since
        self.hung = f"{self._what} has not returned after {waited:.1f} s"
        mark_unsafe_to_terminate(f"PortAudio is stuck: {self.hung}")
        log.warning(
            "input device '%s': PortAudio is stuck (%s); the device is not looked for until it "
            "returns (if it never does, as with a JACK server gone under PortAudio's JACK host "
            "API, restart the bridge)",
            self.name, self.hung,
        )  # fmt: skip


#: Lines PortAudio, ALSA and JACK print on stderr when a device cannot be opened.
_NATIVE_NOISE = re.compile(
    rb"^(Expression '.*' failed in '|ALSA lib |Cannot connect to server|jack server is not running"
    rb"|JackShm|Jack[A-Za-z]*::|connect\(2\) call to |Cannot open .* server|Cannot lock down)"
)
_stderr_lock = threading.Lock()


@contextlib.contextmanager
def quiet_native_stderr(max_s: float = 2.0) -> Iterator[None]:
    """Hide native libraries' diagnostics written to fd 2 meanwhile; keep everything else.

    Other threads' lines (the hop loop's log) are held back until the end and then
    written in order.  If the block does not end within ``max_s`` (a hung call), fd 2
    is given back then anyway.
    """
    if not _stderr_lock.acquire(blocking=False):  # another attempt is quieting already
        yield
        return
    restored = False
    saved = tmp = None
    guard = threading.Lock()

    def restore() -> None:
        nonlocal restored
        with guard:
            if restored or saved is None or tmp is None:
                return
            restored = True
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().splitlines(keepends=True) if not _NATIVE_NOISE.match(line)]
            tmp.close()
            if kept:
                with contextlib.suppress(OSError):
                    os.write(2, b"".join(kept))
            _stderr_lock.release()

    try:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        tmp = tempfile.TemporaryFile()  # noqa: SIM115 (closed by restore(), maybe on a timer)
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
    except OSError:  # no fd 2 to redirect: say everything, as without this
        if tmp is not None:
            tmp.close()
        if saved is not None:
            os.close(saved)
        saved = tmp = None
        _stderr_lock.release()
        yield
        return
    watchdog = threading.Timer(max_s, restore)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
        restore()
