"""``a2e-bridge bench``: its receivers run in a child process that always ends.

All real: the receiver process, its loopback UDP and ZeroMQ sockets, the bridge on a
synthetic oracle model, signals sent to real processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.bench import ReceiverProcess, run_bench
from bridge.errors import BridgeError

ROOT = Path(__file__).resolve().parent.parent


def children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid``, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended while we looked
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")


def test_bench_receivers_run_in_another_process_and_leave_none_behind() -> None:
    before = children(os.getpid())
    doc = run_bench(model="oracle", seconds=1.0)
    rx = doc["receivers"]
    assert rx["pid"] != os.getpid()
    assert not alive(rx["pid"]) and children(os.getpid()) == before
    assert rx["rcvbuf_requested_bytes"] >= 8 << 20
    assert set(rx["rcvbuf_granted_bytes"]) == {"livelink", "osc"}
    assert all(v > 0 for v in rx["rcvbuf_granted_bytes"].values())
    published = doc["frames_published"]
    assert published > 0 and published == doc["osc_bundles_received"] == doc["zmq_messages_received"]
    assert doc["livelink_receiver"] == {"received": published, "duplicates": 0, "out_of_order": 0,
                                        "not_received": 0}  # fmt: skip


def test_bench_that_fails_leaves_no_receiver_process(tmp_path: Path) -> None:
    """The model fails to load after the receivers started: one BridgeError, no child left."""
    before = children(os.getpid())
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(BridgeError):
        run_bench(model=str(bad), seconds=1.0)
    assert children(os.getpid()) == before


def test_receiver_process_that_does_not_answer_is_killed(tmp_path: Path) -> None:
    rx = ReceiverProcess(str(tmp_path / "rx.log"))
    assert alive(rx.pid)
    os.kill(rx.pid, signal.SIGSTOP)  # it can no longer read its stdin: close() must kill it
    try:
        t0 = time.monotonic()
        rx.close()
        assert not alive(rx.pid) and rx.proc.returncode == -signal.SIGKILL
        assert time.monotonic() - t0 < 8
    finally:
        if alive(rx.pid):  # only if close() failed: never leave a stopped process behind
            os.kill(rx.pid, signal.SIGKILL)


def test_receiver_process_ends_when_the_bench_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves the bench no chance to clean up: the receiver sees its stdin close."""
    script = (f"from bridge.bench import ReceiverProcess; r = ReceiverProcess({str(tmp_path / 'rx.log')!r}); "
              "print(r.pid, flush=True); import time; time.sleep(60)")  # fmt: skip
    bench = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert bench.stdout is not None
        pid = int(bench.stdout.readline())
        assert alive(pid)
        bench.kill()
        bench.wait(timeout=10)
        assert wait_gone(pid), "the receiver process outlived the bench"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(timeout=10)


def test_ctrl_c_during_a_bench_leaves_no_receiver_process(tmp_path: Path) -> None:
    bench = subprocess.Popen(
        [sys.executable, "-m", "bridge", "bench", "--model", "oracle", "--seconds", "60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not children(bench.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        (pid,) = children(bench.pid)
        time.sleep(0.5)
        bench.send_signal(signal.SIGINT)
        _, err = bench.communicate(timeout=30)
        assert "Traceback" not in err, err
        assert wait_gone(pid), "the receiver process outlived the bench"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(timeout=10)
