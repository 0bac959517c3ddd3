"""Model calls on a thread of their own: one at a time, handed over and collected.

With several performers and a model on a GPU, the hop thread hands each call to this
thread and, while the device computes, posts and sends the frames of the call before
(when the next hop's audio is already in, i.e. whenever the loop has fallen behind).
ONNX Runtime releases the interpreter lock for the whole device call, so the two
overlap; the loop's time per hop is then the model's, not the model's plus its own
work, and a hop that started late is caught up in a few hops rather than many.

ONNX Runtime keeps its CUDA graphs per calling thread: the engine runs the runner's
warm-up on this thread before the first hop (a model switched in mid-run captures its
graphs on its first calls here instead).

Contract: at most one call is out at a time (:meth:`ModelThread.start`, then
:meth:`ModelThread.result`); while it is out, nothing else touches the runner or the
buffers the call reads.  An exception in the call is raised by :meth:`result`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any


class ModelThread:
    """One thread ("a2e-model") that runs the calls handed to it, one at a time."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.busy = False  #: a call is out: its result has not been collected

    def start(self, call: Callable[[], Any]) -> None:
        """Run ``call`` on the thread; collect what it returns with :meth:`result`."""
        if self.busy:
            raise RuntimeError("a model call is already out: collect its result first")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="a2e-model", daemon=True)
            self._thread.start()
        self.busy = True
        self._calls.put(call)

    def result(self) -> Any:
        """Wait for the call out and return its result (or raise its exception)."""
        if not self.busy:
            raise RuntimeError("no model call is out")
        ok, value = self._results.get()
        self.busy = False
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """Wait for a call still out (a session must not be freed under it); end the thread."""
        if self.busy:
            with contextlib.suppress(BaseException):  # the run is ending on an error already
                self.result()
        thread, self._thread = self._thread, None
        if thread is not None:
            self._calls.put(None)
            thread.join(timeout=5.0)

    def _run(self) -> None:
        while (call := self._calls.get()) is not None:
            try:
                self._results.put((True, call()))
            except BaseException as e:  # raised in the hop loop by result()
                self._results.put((False, e))
