"""The worker that keeps PortAudio's control calls off the hop loop, and the stderr filter.

The calls here are plain Python functions that return, raise or block: what the
worker does with a call does not depend on what the call is.  The real PortAudio
calls (a device lost and reopened) are in tests/test_device_loss.py.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from bridge.audio.portaudio_control import PortAudioHung, PortAudioWorker, quiet_native_stderr


def test_a_call_returns_its_result_or_its_exception() -> None:
    worker = PortAudioWorker("mic")
    assert worker.call(lambda: 42, "answering", 1.0) == 42
    with pytest.raises(ValueError, match="no such rate"):
        worker.call(lambda: (_ for _ in ()).throw(ValueError("no such rate")), "failing", 1.0)


def test_a_hung_call_is_abandoned_within_its_timeout_and_blocks_no_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unsafe: list[str] = []
    monkeypatch.setattr("bridge.audio.portaudio_control.mark_unsafe_to_terminate", unsafe.append)
    release = threading.Event()
    worker = PortAudioWorker("mic")
    t0 = time.monotonic()
    with pytest.raises(PortAudioHung, match="closing the device has not returned"):
        worker.call(release.wait, "closing the device", 0.2)
    assert time.monotonic() - t0 < 0.5
    assert unsafe and "stuck" in unsafe[0]  # PortAudio is never terminated after this
    # No further call starts while the hung one is still in PortAudio.
    assert worker.submit(lambda: None, "looking for the device", 0.2) is False
    t0 = time.monotonic()
    with pytest.raises(PortAudioHung):
        worker.call(lambda: None, "closing again", 0.2)
    assert time.monotonic() - t0 < 0.5
    release.set()


def test_submit_runs_in_the_background_one_call_at_a_time() -> None:
    started, release = threading.Event(), threading.Event()
    worker = PortAudioWorker("mic")

    def slow() -> None:
        started.set()
        release.wait(5)

    t0 = time.monotonic()
    assert worker.submit(slow, "looking", 5.0) is True
    assert time.monotonic() - t0 < 0.1 and started.wait(1)
    assert worker.submit(slow, "looking", 5.0) is False  # the last look is still on
    release.set()
    assert worker.call(lambda: "after", "next", 1.0) == "after"  # waits for the one in flight


def test_native_diagnostics_are_hidden_and_other_lines_kept(capfd: pytest.CaptureFixture[str]) -> None:
    with quiet_native_stderr():
        os.write(2, b"Expression 'ret' failed in 'src/hostapi/alsa/pa_linux_alsa.c', line: 1736\n")
        os.write(2, b"ALSA lib pcm.c:2664:(snd_pcm_open_noupdate) Unknown PCM cards.pcm.rear\n")
        os.write(2, b"Cannot connect to server socket err = No such file or directory\n")
        print("a2e-bridge: frames 300 (dropped 0)", file=sys.stderr, flush=True)
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert err == "a2e-bridge: frames 300 (dropped 0)\nafter\n"


def test_stderr_is_given_back_when_the_quiet_block_hangs(capfd: pytest.CaptureFixture[str]) -> None:
    release = threading.Event()

    def hung_attempt() -> None:
        with quiet_native_stderr(max_s=0.2):
            os.write(2, b"Expression 'x' failed in 'pa.c'\n")
            release.wait(5)

    thread = threading.Thread(target=hung_attempt)
    thread.start()
    time.sleep(0.4)
    os.write(2, b"the hop loop speaks\n")
    release.set()
    thread.join(5)
    assert capfd.readouterr().err == "the hop loop speaks\n"


def test_a_background_call_past_its_timeout_is_found_hung_by_the_next_look(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bridge.audio.portaudio_control.mark_unsafe_to_terminate", lambda reason: None)
    release = threading.Event()
    worker = PortAudioWorker("mic")
    assert worker.submit(release.wait, "closing the lost stream", 0.1) is True
    assert worker.submit(lambda: None, "looking for the device", 5.0) is False  # still closing
    assert worker.hung is None
    time.sleep(0.2)
    assert worker.submit(lambda: None, "looking for the device", 5.0) is False
    assert worker.hung is not None and worker.hung.startswith("closing the lost stream has not returned")
    release.set()  # it returns at last: looks go on
    time.sleep(0.1)
    assert worker.submit(lambda: None, "looking for the device", 5.0) is True and worker.hung is None
