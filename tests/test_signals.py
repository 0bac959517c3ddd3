"""Signals at each phase of a real ``python -m bridge run`` process.

SIGINT (Ctrl-C), SIGTERM, SIGHUP and SIGQUIT are sent to a real subprocess while it
imports its modules, while it loads its model (a preset downloading from a slow hub
on loopback: a real slow part), and while it runs; each time the process ends with
one line, its exit status and the ``--stats`` it was asked for, never a traceback.
"Importing" is known for sure, not guessed from a delay: the bridge catches SIGHUP
only once its own handlers are in (Python leaves it at the default), so the test
watches ``SigCgt`` in /proc and signals the moment that bit appears.  (Before that
the interpreter itself is starting -- site and .pth files, 10-45 ms on the test
machine -- where no code of the bridge can run yet; a test sending "immediately"
would test the interpreter and the scheduler, not the bridge.)
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import soundfile

from bridge.signals import speech_like
from tests.receivers import LiveLinkReceiver

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def caught_signals(pid: int) -> int:
    """The process's mask of signals with a handler (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def wait_for_handlers(proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    """Until the bridge's own handlers are in (SIGHUP caught): it is importing now."""
    deadline = time.monotonic() + timeout
    while not caught_signals(proc.pid) & (1 << (signal.SIGHUP - 1)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the bridge never installed its signal handlers"
        time.sleep(0.0005)


def finish(proc: subprocess.Popen[str]) -> str:
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and "Fatal Python error" not in err, err
    return err


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "speech.wav"
    soundfile.write(str(path), speech_like(4.0, 48000), 48000)
    return path


def livelink_config(tmp_path: Path, port: int, model: str = "") -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'{model}[[output]]\nkind = "livelink"\nport = {port}\n', encoding="utf-8")
    return cfg


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
def test_signal_while_importing_ends_with_stats(sig: signal.Signals, wav: Path, tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    proc = spawn("run", "--model", "synthetic", "--input", str(wav), "-c", str(livelink_config(tmp_path, 9)),
                 "--stats", str(stats))  # fmt: skip
    wait_for_handlers(proc)
    proc.send_signal(sig)
    err = finish(proc)
    assert proc.returncode == 128 + sig
    assert f"stopped by {sig.name} while starting" in err
    doc = json.loads(stats.read_text())
    assert doc["interrupted"] == {"signal": sig.name, "phase": "start"} and doc["frames_published"] == 0


def test_stuck_main_thread_is_ended_by_the_watchdog(tmp_path: Path) -> None:
    """A main thread inside a long C call cannot run a Python handler: the watchdog ends it."""
    words = tmp_path / "last-words.txt"
    script = (
        "import hashlib; from bridge import interrupt; interrupt.GRACE_S = 0.5; interrupt.install(); "
        f"interrupt.last_words(lambda e: open({str(words)!r}, 'w').write(e.name)); "
        "print('ready', flush=True); "
        "hashlib.pbkdf2_hmac('sha256', b'x', b'y', 500_000_000)"  # minutes of C, the GIL released
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and time.monotonic() - sent < 10
    assert words.read_text() == "SIGINT"
    assert "stopped by SIGINT (the main thread did not stop within 0.5 s)" in err and "Traceback" not in err


# ---- during the model load: a preset downloading from a slow hub ---------------------------------

REPO, GRAPH, DATA = "omote-ai/lam-a2e", "model_fp16.onnx", "model_fp16.onnx.data"


class SlowHub:
    """A loopback server in the hub's URL layout that trickles the weights (1 KiB per 50 ms)."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.data_requested = threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _head(self) -> bytes | None:
                file = self.path.split("?")[0].split("/resolve/main/", 1)[-1]
                data = hub.files.get(file)
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self.send_response(200)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", "0" * 40)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                return data

            def do_HEAD(self) -> None:  # noqa: N802
                self._head()

            def do_GET(self) -> None:  # noqa: N802
                data = self._head()
                if data is None:
                    return
                try:
                    if self.path.endswith(DATA):
                        hub.data_requested.set()
                        for i in range(0, len(data), 1024):
                            self.wfile.write(data[i : i + 1024])
                            self.wfile.flush()
                            time.sleep(0.05)
                    else:
                        self.wfile.write(data)
                except OSError:  # the bridge went away mid-file: what this test does
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        serve = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02})
        serve.daemon = True
        serve.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def slow_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowHub]:
    from bridge.modeltools.synth import build_lam, save_model

    folder = tmp_path_factory.mktemp("slow-hub")
    save_model(build_lam("tiny", seed=4), folder / GRAPH)
    hub = SlowHub({GRAPH: (folder / GRAPH).read_bytes(), DATA: (folder / DATA).read_bytes()})
    yield hub
    hub.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_signal_during_model_load_ends_the_run_not_a_fallback(
    sig: signal.Signals, slow_hub: SlowHub, wav: Path, tmp_path: Path
) -> None:
    slow_hub.data_requested.clear()
    cfg = livelink_config(tmp_path, 9, '[model]\npreset = "lam"\nfallback = "synthetic"\n')
    stats = tmp_path / "stats.json"
    env = {"HF_ENDPOINT": slow_hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "",
           "NO_PROXY": "127.0.0.1,localhost", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "A2E_BRIDGE_HOME": str(tmp_path / "home")}  # fmt: skip
    proc = spawn("run", "-c", str(cfg), "--input", str(wav), "--stats", str(stats), env=env)
    assert slow_hub.data_requested.wait(60), finish(proc)  # the weights are downloading now
    proc.send_signal(sig)
    err = finish(proc)
    assert proc.returncode == 128 + sig, err
    assert "fall" not in err, "an interrupted load is not a load failure: no fallback"
    assert f"stopped by {sig.name} while loading the model" in err
    assert json.loads(stats.read_text())["interrupted"] == {"signal": sig.name, "phase": "load"}


# ---- during the run ------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT])
def test_signal_during_the_run_ends_it_cleanly(sig: signal.Signals, wav: Path, tmp_path: Path) -> None:
    receiver = LiveLinkReceiver()
    stats = tmp_path / "stats.json"
    cfg = livelink_config(tmp_path, receiver.port)
    proc = spawn("run", "--model", "synthetic", "--input", str(wav), "-c", str(cfg), "--stats", str(stats))
    try:
        deadline = time.monotonic() + 60
        while not receiver.packets:  # frames are arriving: the run is on
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        sent = time.monotonic()
        proc.send_signal(sig)
        err = finish(proc)
        took = time.monotonic() - sent
    finally:
        receiver.close()
    assert proc.returncode == 0, err
    assert took < 5  # generous: one hop, then closing; the run is 4 s of real-time audio
    doc = json.loads(stats.read_text())
    assert doc["stopped_by"] == sig.name
    assert 0 < doc["frames_published"] < 120 and doc["frames_published"] == len(receiver.packets)
    assert f"stopped by {sig.name}" in err

