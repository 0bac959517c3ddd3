"""What the live console costs the hop loop: the same run three times, in one process.

1. ``no hooks``: the live hooks and the command check stubbed out (the bridge as before the
   console existed);
2. ``console off``: the default (the hooks fill the live state; no server);
3. ``console + browser``: the web console and OSC control on, a headless chromium showing
   the page (WebSocket at 20 Hz) and /metrics scraped every second.

Each run plays the same speech-like 48 kHz file at real time through the ``synthetic``
model on CPU into a Live Link output.  Reported per run: the hop thread's CPU time per frame
outside inference (``overhead_ms_per_frame``, immune to waiting for a core), latency p50 and
p99, and the whole process's CPU.

    python3 scripts/bench_console.py --seconds 20 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.config import parse_config  # noqa: E402
from bridge.engine import Bridge  # noqa: E402
from bridge.signals import speech_like  # noqa: E402


def _config(wav: Path, port: int, console: bool) -> dict:
    return {
        "input": {"kind": "file", "file": str(wav), "realtime": True},
        "model": {"preset": "synthetic", "providers": ["cpu"], "threads": 1, "fallback": ""},
        "console": {"enabled": console, "port": 0},
        "control": {"enabled": console, "osc_port": 0},
        "output": [{"kind": "livelink", "port": port}],
    }


def _browser(url: str):  # noqa: ANN202 - a selenium driver, or None without chromium
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        print("no chromium/chromedriver: the console run has no browser", file=sys.stderr)
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    d.get(url)
    return d


def run(wav: Path, seconds: float, mode: str) -> dict:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    bridge = Bridge(parse_config(_config(wav, sink.getsockname()[1], mode == "console + browser"), "bench"),
                    duration=seconds)  # fmt: skip
    if mode == "no hooks":
        bridge.post = bridge.post.chain  # the chain without the console's wrapper
        bridge.control.apply = lambda: None  # type: ignore[method-assign]
    driver, stop = None, threading.Event()
    scraper = None
    if bridge.control.web is not None:
        url = f"http://127.0.0.1:{bridge.control.web.port}"
        driver = _browser(url + "/")

        def scrape() -> None:
            while not stop.wait(1.0):
                urllib.request.urlopen(url + "/metrics", timeout=5).read()

        scraper = threading.Thread(target=scrape, daemon=True)
        scraper.start()
    try:
        stats = bridge.run().as_dict()
    finally:
        stop.set()
        if driver is not None:
            driver.quit()
        bridge.close()
        sink.close()
    return {
        "mode": mode,
        "frames_published": stats["frames_published"],
        "overhead_ms_per_frame": stats["overhead_ms_per_frame"],
        "latency_ms_p50": stats["latency_ms"]["p50"],
        "latency_ms_p99": stats["latency_ms"]["p99"],
        "cpu_percent": stats["cpu_percent"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        import soundfile

        soundfile.write(str(wav), speech_like(args.seconds + 1.0, 48000), 48000)
        rows = [run(wav, args.seconds, mode) for mode in ("no hooks", "console off", "console + browser")]
    for r in rows:
        print(f"{r['mode']:<18} frames {r['frames_published']:5d}  hop overhead "
              f"{r['overhead_ms_per_frame']:.4f} ms/frame  latency p50 {r['latency_ms_p50']} "
              f"p99 {r['latency_ms_p99']} ms  "
              f"process CPU {r['cpu_percent']} %")  # fmt: skip
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
