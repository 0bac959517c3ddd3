"""The console page in a real browser (Debian's headless chromium through selenium).

One bridge and one browser session for the module (chromium is heavy on a small machine):
a file of 1-s tone bursts, then a steady tone, through the oracle model and the default
post chain (whose silence gate closes the mouth between bursts), to a real Live Link
receiver.  The page loads with no console errors; its level meter rises and its face's jaw
opens during a burst; clicking Mute brings JawOpen to rest on the receiver within two
frames and clicking again brings it back.  ``A2E_SCREENSHOT=docs/console.png`` saves the
page as shown during the steady tone (docs/console.md shows it)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bridge.config import parse_config
from bridge.engine import Bridge
from tests.console_bridge import JAW, Running, config
from tests.receivers import LiveLinkReceiver

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401

    MISSING = None if CHROMIUM and DRIVER else "chromium and chromium-driver (scripts/setup.sh --test)"
except ImportError:
    MISSING = "selenium (pip install -e .[test])"
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"needs {MISSING}")

RATE = 16000
BURSTS = 3  # 1 s of silence, 1 s of tone, three times; then a steady tone


def tone_bursts(path: Path) -> Path:
    t = np.arange(RATE) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
    silence = np.zeros(RATE, np.float32)
    steady = np.tile(tone, 50)
    soundfile.write(str(path), np.concatenate([silence, tone] * BURSTS + [steady]), RATE, subtype="FLOAT")
    return path


class Lines(logging.Handler):
    """The bridge's log lines, as they come."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def applied(self, command: str, after: int) -> int:
        """The frame the ``after``-th-or-later log line of ``command`` says it applied at."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for m in self.messages[after:]:
                hit = re.match(rf"command {re.escape(command)} \(ws [^)]*\) at frame (\d+)", m)
                if hit:
                    return int(hit.group(1))
            time.sleep(0.01)
        raise AssertionError(f"no log line for {command!r}: {self.messages[-5:]}")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, object, Lines]]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    tmp = tmp_path_factory.mktemp("console-browser")
    wav = tone_bursts(tmp / "bursts.wav")
    receiver = LiveLinkReceiver()
    lines = Lines()
    logger = logging.getLogger("bridge.control")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(lines)
    post = {"blink": {"seed": 3}}  # the default chain: smoothing, gate, blinks
    bridge = Bridge(parse_config(config(wav, receiver.port, raw_post=post), "test.toml"))
    r = Running(bridge, receiver)
    r.thread.start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1100", "--disable-extensions", "--no-first-run"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=DRIVER)
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(30)
    try:
        driver.get(r.url + "/")
        yield r, driver, lines
    finally:
        driver.quit()
        proc = getattr(service, "process", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
        r.stop.set()
        r.thread.join(10)
        bridge.close()
        receiver.close()
        logger.removeHandler(lines)
        logger.setLevel(level)


def poll(fn, timeout: float, what: str):  # noqa: ANN001, ANN201 - any predicate
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.03)
    raise AssertionError(f"timed out waiting for {what}")


def test_page_loads_without_console_errors(console) -> None:  # noqa: ANN001
    r, driver, _lines = console
    poll(lambda: driver.find_elements("id", "face-0"), 15, "the performer's card")
    poll(lambda: driver.find_element("id", "health").text.startswith(("ok", "degraded")), 10, "health")
    assert driver.title == "a2e-bridge live console"
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


def test_level_meter_rises_and_jaw_opens_during_a_tone_burst(console) -> None:  # noqa: ANN001
    r, driver, _lines = console
    face = driver.find_element("id", "face-0")
    meter = driver.find_element("id", "level-0")

    def sample() -> tuple[float, float]:
        return float(meter.get_attribute("data-db") or -120), float(face.get_attribute("data-jaw") or 0)

    seen_quiet = seen_loud = False
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline and not (seen_quiet and seen_loud):
        level, jaw = sample()
        if level < -60 and jaw < 0.02:
            seen_quiet = True  # between bursts: the meter is down and the gate has shut the mouth
        if level > -20 and jaw > 0.1:
            seen_loud = True  # a burst: the meter is up and the jaw open
        time.sleep(0.03)
    assert seen_quiet and seen_loud, sample()
    width = driver.find_element("css selector", "#level-0 .level").value_of_css_property("width")
    assert width.endswith("px")


def test_clicking_mute_rests_jaw_on_the_receiver_within_two_frames_and_unmute_brings_it_back(
    console,  # noqa: ANN001
) -> None:
    r, driver, lines = console
    steady = 2 * BURSTS * 30 + 15  # frames: well into the steady tone
    poll(lambda: r.receiver.packets and r.receiver.packets[-1]["frame"] > steady, 20, "the steady tone")
    assert r.receiver.packets[-1]["values"][JAW] > 0.1
    shot = os.environ.get("A2E_SCREENSHOT")
    if shot:
        time.sleep(0.3)
        driver.save_screenshot(shot)
    mute = driver.find_element("id", "mute-0")
    seen = len(lines.messages)
    mute.click()
    f = lines.applied("mute 1", seen)
    after = r.packets_from(f, 12)
    assert all(p["values"][JAW] == 0.0 for p in after[1:]), [p["values"][JAW] for p in after]
    poll(lambda: "Muted" in mute.text, 5, "the button to say muted")
    seen = len(lines.messages)
    mute.click()
    f = lines.applied("mute 0", seen)
    back = r.packets_from(f, 6)
    assert all(p["values"][JAW] > 0.1 for p in back[1:]), [p["values"][JAW] for p in back]
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors



