"""Soak test: the bridge for a long time at real-time pace into real receivers, checked.

``scripts/soak.sh [--minutes N | --seconds S] [--model PRESET] [--json FILE]`` (default 60 min)

* Audio: a speech-like 48 kHz signal (``python3 -m bridge.signals``, at most 60 s) looped
  into a WAV as long as the soak, played by ``a2e-bridge run`` at real-time pace.
* Outputs: Live Link (UDP), OSC (``/arkit/*`` bundles) and ZeroMQ PUB (JSON) on free
  loopback ports, from a temporary TOML config.
* Receivers, started here (this process, not the bridge's): a UDP socket decoding Live
  Link frame numbers (and checking the 61 values are finite), a python-osc server reading
  ``/arkit/frame``, a ZeroMQ SUB parsing each JSON message with NaN/Infinity refused.
* Measured: per receiver, frames received, lost (published by the bridge but never
  received), duplicated and out of order; the bridge process's RSS when its first frame
  arrives, at the end and at most, and its CPU use (share of one core) in between.

Exit status 0 when every receiver got every published frame once and in order, the
bridge exited 0 and nothing invalid arrived; 1 otherwise; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BASE_SECONDS = 60.0  #: the generated signal, looped (a multiple of its 7.5 s phrase cycle)
TOPIC = "soak"


# -- receivers -------------------------------------------------------------------------------------


class Tally:
    """Frame numbers as they arrived, and how many messages were unusable."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.frames: list[int] = []
        self.invalid = 0  #: messages that did not parse, or carried NaN/Inf
        self.first_at: float | None = None

    def add(self, frame: int) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()
        self.frames.append(frame)

    def report(self, published: int) -> dict[str, Any]:
        f = self.frames
        out_of_order, highest = 0, -(2**63)
        for n in f:
            if n <= highest:
                out_of_order += 1  # arrived after a frame with a higher (or the same) number
            highest = max(highest, n)
        unique = len(set(f))
        return {
            "received": len(f),
            "lost": max(published - unique, 0),
            "duplicated": len(f) - unique,
            "out_of_order": out_of_order,
            "invalid": self.invalid,
            "first_frame": f[0] if f else None,
            "last_frame": max(f) if f else None,
        }


class LiveLinkReceiver:
    def __init__(self) -> None:
        self.tally = Tally("livelink")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-livelink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            try:
                (id_len,) = struct.unpack_from(">i", data, 1)
                (subj_len,) = struct.unpack_from(">i", data, 5 + id_len)
                at = 9 + id_len + subj_len
                (frame,) = struct.unpack_from(">i", data, at)
                count = data[at + 16]
                values = struct.unpack_from(f">{count}f", data, at + 17)
            except (struct.error, IndexError):
                self.tally.invalid += 1
                continue
            if count != 61 or not all(map(math.isfinite, values)):
                self.tally.invalid += 1
            self.tally.add(frame)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


class OscReceiver:
    def __init__(self) -> None:
        from pythonosc.dispatcher import Dispatcher
        from pythonosc.osc_server import BlockingOSCUDPServer

        self.tally = Tally("osc")
        disp = Dispatcher()
        disp.map("/arkit/frame", self._frame)
        self.server = BlockingOSCUDPServer(("127.0.0.1", 0), disp)
        self.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, name="soak-osc", daemon=True
        )
        self._thread.start()

    def _frame(self, _address: str, *args: Any) -> None:
        if len(args) == 1 and isinstance(args[0], int):
            self.tally.add(args[0])
        else:
            self.tally.invalid += 1

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class ZmqReceiver:
    def __init__(self, port: int) -> None:
        import zmq

        self.tally = Tally("zmq")
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, TOPIC.encode())
        self.sub.setsockopt(zmq.RCVHWM, 0)  # keep everything: the soak counts, it must not drop
        self.sub.setsockopt(zmq.RECONNECT_IVL, 20)  # join the bridge's PUB within 20 ms of its bind
        self.sub.setsockopt(zmq.RCVTIMEO, 200)
        self.sub.connect(f"tcp://127.0.0.1:{port}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-zmq", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import zmq

        skip = len(TOPIC) + 1
        while not self._stop.is_set():
            try:
                msg = self.sub.recv()
            except zmq.Again:
                continue
            try:
                doc = json.loads(msg[skip:], parse_constant=_no_constants)  # NaN/Infinity: invalid
                self.tally.add(int(doc["frame"]))
            except (ValueError, KeyError, TypeError):
                self.tally.invalid += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sub.close(linger=0)
        self.ctx.term()


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the bridge process ----------------------------------------------------------------------------


class ProcWatch:
    """RSS and CPU time of one process from ``/proc`` (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss_mb(self) -> float | None:
        try:
            with open(f"/proc/{self.pid}/statm", encoding="ascii") as f:
                return int(f.read().split()[1]) * self.page / 2**20
        except (OSError, ValueError, IndexError):
            return None

    def cpu_s(self) -> float | None:
        try:
            with open(f"/proc/{self.pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime
        except (OSError, ValueError, IndexError):
            return None


def make_wav(path: Path, seconds: float, work: Path) -> None:
    """A WAV of ``seconds``: the speech-like signal from ``bridge.signals``, looped."""
    import numpy as np
    import soundfile

    base = work / "base.wav"
    subprocess.run(
        [sys.executable, "-m", "bridge.signals", str(base), f"{min(seconds, BASE_SECONDS):g}"],
        check=True, timeout=120, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    audio, rate = soundfile.read(str(base), dtype="float32")
    total = int(round(seconds * rate))
    with soundfile.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        written = 0
        while written < total:
            block = audio[: total - written]
            out.write(np.ascontiguousarray(block))
            written += len(block)
    base.unlink()


def write_config(path: Path, wav: Path, model: str, ll_port: int, osc_port: int, zmq_port: int) -> None:
    path.write_text(
        f"""# written by scripts/soak.py
[input]
kind = "file"
file = "{wav}"
realtime = true

[model]
preset = "{model}"
providers = ["cpu"]

[[output]]
kind = "livelink"
host = "127.0.0.1"
port = {ll_port}

[[output]]
kind = "osc"
host = "127.0.0.1"
port = {osc_port}
scheme = "arkit"

[[output]]
kind = "zmq"
endpoint = "tcp://127.0.0.1:{zmq_port}"
format = "json"
topic = "{TOPIC}"
""",
        encoding="utf-8",
    )


def soak(seconds: float, model: str, progress_every: float, say: Any = print) -> dict[str, Any]:
    """Run one soak; returns the report document."""
    with tempfile.TemporaryDirectory(prefix="a2e-soak-") as tmp:
        work = Path(tmp)
        wav, cfg = work / "soak.wav", work / "soak.toml"
        stats_path, log_path = work / "stats.json", work / "bridge.log"
        say(f"soak: writing {seconds:g} s of speech-like audio (48 kHz, looped) ...")
        make_wav(wav, seconds, work)
        ll, osc = LiveLinkReceiver(), OscReceiver()
        zmq_port = _free_tcp_port()
        zr = ZmqReceiver(zmq_port)
        receivers = [ll.tally, osc.tally, zr.tally]
        write_config(cfg, wav, model, ll.port, osc.port, zmq_port)
        cmd = [sys.executable, "-m", "bridge", "run", "-c", str(cfg), "--stats", str(stats_path)]
        say(f"soak: {' '.join(cmd[1:])}")
        limit = seconds * 1.2 + 300.0  # model load (a synthetic-full build the first time) included
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
            watch = ProcWatch(proc.pid)
            t_start = time.monotonic()
            start: tuple[float, float, float] | None = None  #: (time, cpu s, rss MB) at the first frame
            last: tuple[float, float, float] | None = None
            rss_max = 0.0
            warm_after = min(60.0, 0.1 * seconds)  #: allocator and caches settle: growth counts after this
            rss_warm: float | None = None
            next_note = t_start + progress_every
            timed_out = False
            while proc.poll() is None:
                time.sleep(0.5)
                now, cpu, rss = time.monotonic(), watch.cpu_s(), watch.rss_mb()
                if cpu is None or not rss:  # gone, or a zombie (no pages) while it exits
                    continue
                rss_max = max(rss_max, rss)
                if start is None and ll.tally.first_at is not None:
                    start = (now, cpu, rss)
                if start is not None:
                    last = (now, cpu, rss)
                    if rss_warm is None and now - start[0] >= warm_after:
                        rss_warm = rss
                if now >= next_note:
                    next_note += progress_every
                    counts = ", ".join(f"{t.name} {len(t.frames)}" for t in receivers)
                    say(f"soak: {now - t_start:6.0f} s: frames {counts}; bridge RSS {rss:.1f} MB")
                if now - t_start > limit:
                    timed_out = True
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            rc = proc.returncode
        time.sleep(0.5)  # the last datagrams and messages
        for r in (ll, osc, zr):
            r.close()
        log_tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        try:
            stats = json.loads(stats_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stats = {}
    published = int(stats.get("frames_published", 0))
    doc: dict[str, Any] = {
        "seconds": seconds,
        "model": model,
        "bridge_exit": rc,
        "timed_out": timed_out,
        "bridge_stats": stats,
        "receivers": {t.name: t.report(published) for t in receivers},
        "rss_mb": {
            "start": round(start[2], 1) if start else None,
            "after_warmup": round(rss_warm, 1) if rss_warm is not None else None,
            "warmup_s": round(warm_after, 1),
            "end": round(last[2], 1) if last else None,
            "max": round(rss_max, 1),
        },
        "cpu_percent": (
            round(100.0 * (last[1] - start[1]) / (last[0] - start[0]), 1)
            if start and last and last[0] > start[0]
            else None
        ),
    }
    doc["ok"] = bool(
        rc == 0
        and not timed_out
        and published > 0
        and all(r["lost"] == 0 and r["duplicated"] == 0 and r["out_of_order"] == 0 and r["invalid"] == 0
                for r in doc["receivers"].values())
    )  # fmt: skip
    if rc != 0 or timed_out:
        doc["bridge_log_tail"] = log_tail
    return doc


def format_report(doc: dict[str, Any]) -> str:
    s = doc["bridge_stats"]
    lat = s.get("latency_ms", {})
    lines = [
        f"soak: {doc['seconds']:g} s at real-time pace, model {doc['model']}",
        f"bridge: exit {doc['bridge_exit']}{' (timed out)' if doc['timed_out'] else ''}, published "
        f"{s.get('frames_published', '?')} of {s.get('frames_expected', '?')} frames, dropped "
        f"{s.get('frames_dropped', '?')}; latency p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms",
        f"{'receiver':<10}{'received':>10}{'lost':>8}{'duplicated':>12}{'out of order':>14}{'invalid':>9}",
    ]
    for name, r in doc["receivers"].items():
        lines.append(
            f"{name:<10}{r['received']:>10}{r['lost']:>8}{r['duplicated']:>12}{r['out_of_order']:>14}"
            f"{r['invalid']:>9}"
        )
    rss = doc["rss_mb"]
    lines.append(
        f"bridge process: RSS {rss['start']} MB at its first frame, {rss['after_warmup']} MB "
        f"{rss['warmup_s']:g} s later, {rss['end']} MB at the end (max {rss['max']} MB); "
        f"CPU {doc['cpu_percent']} % of one core"
    )
    lines += [f"  | {ln}" for ln in doc.get("bridge_log_tail", [])]
    lines.append("soak: PASS" if doc["ok"] else "soak: FAIL")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/soak.sh", description=__doc__.split("\n\n")[0])
    length = ap.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=None, help="how long (default 60)")
    length.add_argument("--seconds", type=float, default=None, help="how long, in seconds (for tests)")
    ap.add_argument("--model", default="synthetic", help="model preset or .onnx path (default synthetic)")
    ap.add_argument("--json", dest="json_path", help="also write the report as JSON here")
    ap.add_argument("--progress", type=float, default=60.0, help="seconds between progress lines")
    args = ap.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60.0 * (args.minutes or 60.0)
    if not 1.0 <= seconds <= 7 * 24 * 3600:
        ap.error(f"the soak must last 1 s to 7 days, not {seconds:g} s")
    doc = soak(seconds, args.model, args.progress, say=lambda m: print(m, flush=True))
    print(format_report(doc), flush=True)
    if args.json_path:
        with contextlib.suppress(OSError):
            Path(args.json_path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
