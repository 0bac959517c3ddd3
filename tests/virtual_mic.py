"""A real PortAudio capture device on a machine without a sound card.

JACK's ``dummy`` driver gives a real-time clock with no hardware; the ALSA
``jack`` plugin turns it into an ALSA capture PCM; ALSA's ``file`` plugin on top
replaces the (silent) samples with those of a raw file.  PortAudio's ALSA host
API sees the result as an ordinary input device whose callbacks arrive at a
steady real-time pace and whose samples are known exactly, from sample 0 on
every open.  See /work/shared/notes/virtual-mic.md.

The chain, as an ALSA capture PCM named ``name``::

    plug (S16_LE, 1 or 2 ch, rate)        what PortAudio opens, any format it asks
      file (infile = raw S16_LE file)      replaces captured samples with the file's
        plug                               the jack plugin is float-only
          jack (system:capture_1[, _2])    paced by jackd -d dummy -r rate

PortAudio initialisation: PortAudio enumerates (and probes, by opening them)
ALSA devices once, in ``Pa_Initialize``, which ``import sounddevice`` calls.  So
the ALSA config (``ALSA_CONFIG_PATH``) and the running jackd
(``JACK_DEFAULT_SERVER``) must be in place *before* that, or PortAudio never
lists the device.  Found to work here: :func:`virtual_mic` re-initialises
PortAudio when ``sounddevice`` is already imported (``sounddevice._terminate()``
then ``sounddevice._initialize()``, as many times as it was initialised); ALSA
notices the changed ``ALSA_CONFIG_PATH`` and reloads its configuration on the
next open, no ALSA call needed.  On exit it does the same around stopping jackd,
and terminates PortAudio *before* killing jackd (PortAudio's JACK host API holds
a client on the server).  Do not hold a stream open across the ``with`` block.

A device that goes away and comes back: :func:`virtual_mic_server` also yields the
:class:`JackServer`, which a test kills (``kill()``) and starts again under the same
name (``start()``).  PortAudio's JACK host API aborts the process when PortAudio is
terminated after its server died, so such tests capture in a subprocess (the bridge)
and keep this process's PortAudio off the server (``portaudio=False``).  A server that
dies with clients connected leaves their semaphores in /dev/shm; ``stop()`` removes
what is named after its (unique) server.

Command line (used by ``scripts/virtual-mic.sh``)::

    python -m tests.virtual_mic FILE.raw [RATE] [NAME]

starts the same device for a person, prints the lines to export in the shell that
runs ``a2e-bridge run --device NAME``, and keeps jackd running until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ALSA_BASE_CONFIG = "/usr/share/alsa/alsa.conf"
JACK_PERIOD = 256
#: capture ports of jackd's dummy driver (its default): a virtual microphone has up to this many channels
JACK_CAPTURE_PORTS = 2

# The one copy of the ALSA configuration (the shell script reuses it via this module).
ALSA_TEMPLATE = """\
# Virtual microphone {name!r}: raw S16_LE file {raw} ({channels} ch), paced by jackd (dummy driver).
pcm.{name} {{
    type plug
    slave {{
        pcm {{
            type file
            file "/dev/null"
            infile "{raw}"
            format "raw"
            slave.pcm {{
                type plug
                slave.pcm {{
                    type jack
                    capture_ports {{ {ports} }}
                    playback_ports {{ 0 system:playback_1 }}
                }}
            }}
        }}
        format S16_LE
        channels {channels}
        rate {rate}
    }}
}}
"""


# A virtual speaker: what is played is recorded, raw S16_LE mono, into a file (from the open on).
ALSA_PLAYBACK_TEMPLATE = """\
# Virtual speaker {name!r}: records what is played into {record} (raw S16_LE, 1 ch), paced by jackd.
pcm.{name} {{
    type plug
    slave {{
        pcm {{
            type file
            file "{record}"
            format "raw"
            slave.pcm {{
                type plug
                slave.pcm {{
                    type jack
                    playback_ports {{ 0 system:playback_1 }}
                    capture_ports {{ 0 system:capture_1 }}
                }}
            }}
        }}
        format S16_LE
        channels 1
        rate {rate}
    }}
}}
"""


def alsa_config(name: str, raw_path: str | Path, rate: int, channels: int = 1) -> str:
    """ALSA config text defining capture PCM ``name`` that plays ``raw_path`` (interleaved
    S16_LE, ``channels`` channels) at ``rate``."""
    raw = str(Path(raw_path).resolve())
    if int(rate) <= 0:
        raise ValueError(f"rate must be positive, not {rate}")
    if not name.replace("_", "").isalnum():
        raise ValueError(f"device name {name!r}: use letters, digits and '_' only")
    if any(c in raw for c in '"\\\n'):
        raise ValueError(f"raw file path {raw!r} must not contain quotes, backslashes or newlines")
    if not 1 <= int(channels) <= JACK_CAPTURE_PORTS:
        raise ValueError(f"channels must be 1..{JACK_CAPTURE_PORTS} (dummy driver ports), not {channels}")
    ports = " ".join(f"{c} system:capture_{c + 1}" for c in range(int(channels)))
    return ALSA_TEMPLATE.format(name=name, raw=raw, rate=int(rate), channels=int(channels), ports=ports)


def unique_name() -> str:
    """A fresh device name; all have the same length, so none is a prefix of another."""
    return f"a2e_vmic_{secrets.token_hex(4)}"


def _jack_plugin_present() -> bool:
    patterns = ("/usr/lib/*/alsa-lib/", "/usr/lib/alsa-lib/", "/usr/lib64/alsa-lib/")
    return any(glob.glob(p + "libasound_module_pcm_jack.so") for p in patterns)


def virtual_mic_available() -> str | None:
    """Why the virtual microphone cannot be built here (missing packages), or None."""
    missing = [tool for tool in ("jackd", "jack_wait") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found: apt-get install jackd2"
    if not _jack_plugin_present():
        return "ALSA jack plugin not found: apt-get install libasound2-plugins"
    if ctypes.util.find_library("portaudio") is None:
        return "PortAudio library not found: apt-get install libportaudio2"
    if not os.path.exists(ALSA_BASE_CONFIG):
        return f"{ALSA_BASE_CONFIG} not found: apt-get install libasound2"
    return None


def _portaudio_suspend() -> int:
    """Terminate PortAudio if this process initialised it; return how many levels to restore."""
    sd = sys.modules.get("sounddevice")
    levels = 0
    while sd is not None and sd._initialized > 0:
        sd._terminate()
        levels += 1
    return levels


def _portaudio_resume(levels: int) -> None:
    """Re-initialise PortAudio ``levels`` times: it re-enumerates devices with the current env."""
    sd = sys.modules.get("sounddevice")
    for _ in range(levels):
        sd._initialize()


def _wait_for_jackd(proc: subprocess.Popen[bytes], env: dict[str, str], timeout: float = 10.0) -> bool:
    """Wait until the server answers; False if jackd exited or did not answer in time.

    Polls ``jack_wait -c`` every 50 ms: ``jack_wait -w`` re-checks only once a
    second, which added ~1 s to every start.
    """
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if _jackd_running(env):
            return True
        time.sleep(0.05)
    return False


def _jackd_running(env: dict[str, str]) -> bool:
    """Whether the server named by ``env["JACK_DEFAULT_SERVER"]`` answers."""
    check = subprocess.run(["jack_wait", "-c"], env=env, capture_output=True, timeout=10)
    return check.stdout.strip() == b"running"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End our own jackd and wait: a lingering one makes the next start fail."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _clear_stale_jack_registry() -> bool:
    """Forget servers that died without unregistering (killed, as the device-loss tests do).

    JACK keeps up to 8 servers in ``/dev/shm/jack-shm-registry`` and reclaims a dead one's slot
    only for a server of the same name; every test server has a unique name, so killed ones
    would fill the table on a machine that runs the suite often ("Too many servers already
    active").  Only when no jackd runs on this machine at all is the registry removed (JACK
    makes a new one); True if it was.
    """
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "jackd":
                return False
        except OSError:  # the process ended while we looked
            continue
    shm = Path("/dev/shm")
    for p in [shm / "jack-shm-registry", *shm.glob("jack-[0-9]*-[0-9]*")]:
        p.unlink(missing_ok=True)
    return True


class JackServer:
    """Our own ``jackd`` (dummy driver) under a fixed server name: started, killed, restarted.

    Killing it while the device is open is how a test makes a capture device go away;
    :meth:`start` brings back a server with the same name, so the device returns.
    """

    def __init__(self, server: str, rate: int, log_path: Path) -> None:
        self.server = server
        self.rate = rate
        self.log_path = log_path
        self.env = dict(os.environ, JACK_DEFAULT_SERVER=server, JACK_NO_AUDIO_RESERVATION="1")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start jackd and wait until it answers; RuntimeError if it does not."""
        if _jackd_running(self.env):  # ours would fail, and we would talk to the other one
            raise RuntimeError(f"a JACK server named {self.server!r} is already running")
        try:
            self._start_once()
        except RuntimeError as e:
            if "Too many servers already active" not in str(e) or not _clear_stale_jack_registry():
                raise
            self._start_once()

    def _start_once(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["jackd", "--no-realtime", "-d", "dummy", "-r", str(self.rate), "-p", str(JACK_PERIOD)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        if not _wait_for_jackd(self.proc, self.env):
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
            _stop(self.proc)
            why = next((ln for ln in lines if "Too many servers" in ln), None)
            raise RuntimeError(f"jackd ({self.server}) did not start: {why or ' | '.join(lines[-5:])}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """End the server abruptly (as a crash or ``killall jackd`` would) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self, remove_leftovers: bool = True) -> None:
        """End the server cleanly (if running) and remove what it left in /dev/shm.

        A JACK server that dies with clients connected leaves their semaphores and
        shared memory behind (jackd unlinks them only when a client closes); the names
        carry this server's unique name, so only this run's leftovers are removed.
        """
        if self.proc is not None:
            _stop(self.proc)
        if not remove_leftovers:
            return
        for path in self.leftovers():
            with contextlib.suppress(OSError):
                os.unlink(path)

    def leftovers(self) -> list[str]:
        """Files in /dev/shm named after this server."""
        return sorted(glob.glob(f"/dev/shm/jack*_{self.server}_*"))


@contextlib.contextmanager
def virtual_mic_server(
    raw_path: str | Path, rate: int = 16000, name: str | None = None, portaudio: bool = True,
    channels: int = 1, extra_config: str = "",
) -> Iterator[tuple[str, JackServer]]:
    """Run a virtual capture device playing ``raw_path`` (S16_LE mono); yield its name and server.

    Sets ``ALSA_CONFIG_PATH`` and ``JACK_DEFAULT_SERVER`` in ``os.environ`` for the
    duration (restored afterwards) and re-initialises PortAudio if it is loaded.
    The file does not loop: past its end the device repeats stale data.  A test may
    kill and restart the server; PortAudio connected to a server that died must never be
    terminated (its JACK host API asserts and aborts the process), so such a test captures
    in a subprocess and passes ``portaudio=False``: this process's PortAudio (if loaded)
    then stays terminated for the block, holding no client on the server.
    """
    reason = virtual_mic_available()
    if reason is not None:
        raise RuntimeError(f"virtual microphone unavailable: {reason}")
    name = name or unique_name()
    server = f"{name}_server"
    keys = ("ALSA_CONFIG_PATH", "JACK_DEFAULT_SERVER")
    saved = {k: os.environ.get(k) for k in keys}
    with tempfile.TemporaryDirectory(prefix="a2e-vmic-") as tmp:
        conf = Path(tmp) / "asound.conf"
        conf.write_text(alsa_config(name, raw_path, rate, channels) + extra_config)
        levels = _portaudio_suspend()
        os.environ["ALSA_CONFIG_PATH"] = f"{ALSA_BASE_CONFIG}:{conf}"
        os.environ["JACK_DEFAULT_SERVER"] = server
        jack = JackServer(server, rate, Path(tmp) / "jackd.log")
        try:
            jack.start()
            if portaudio:
                _portaudio_resume(levels)
                levels = 0
            yield name, jack
        finally:
            # Still-suspended levels (if startup failed) plus whatever is live now.
            levels += _portaudio_suspend()
            jack.stop()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            _portaudio_resume(levels)


@contextlib.contextmanager
def virtual_mic_and_speaker(raw_samples: np.ndarray, record_path: str | Path, rate: int = 16000,
                            min_seconds: float = 20.0) -> Iterator[tuple[str, str]]:  # fmt: skip
    """A virtual microphone that "hears" ``raw_samples`` (int16 mono) and a virtual speaker
    that records what is played into ``record_path`` (raw S16_LE mono at ``rate``: played at
    another rate, its plug converts first), on one JACK server (one clock); yield their
    names.  The recording starts when the playback stream opens."""
    speaker = unique_name().replace("vmic", "vspk")
    record = Path(record_path).resolve()
    if any(c in str(record) for c in '"\\\n'):
        raise ValueError(f"record path {record!r} must not contain quotes, backslashes or newlines")
    with tempfile.TemporaryDirectory(prefix="a2e-vmic-raw-") as tmp:
        raw = write_raw(Path(tmp) / "mic.raw", raw_samples, rate, min_seconds)
        name = unique_name()
        extra = ALSA_PLAYBACK_TEMPLATE.format(name=speaker, record=record, rate=int(rate))
        with virtual_mic_server(raw, rate, name, extra_config=extra) as (device, _server):
            yield device, speaker


@contextlib.contextmanager
def virtual_mic_file(raw_path: str | Path, rate: int = 16000, name: str | None = None,
                     channels: int = 1) -> Iterator[str]:  # fmt: skip
    """Run a virtual capture device playing ``raw_path`` (S16_LE, ``channels`` interleaved);
    yield its name.  See :func:`virtual_mic_server`, which also yields the server.
    """
    with virtual_mic_server(raw_path, rate, name, channels=channels) as (device, _server):
        yield device


def write_raw(path: str | Path, samples: np.ndarray, rate: int, min_seconds: float = 20.0) -> Path:
    """Write int16 ``samples`` (mono ``[n]``, or ``[n, channels]``) as raw interleaved S16_LE,
    padded with zeros to ``min_seconds``."""
    samples = np.asarray(samples)
    if samples.dtype != np.int16 or samples.ndim not in (1, 2):
        raise ValueError("raw_samples must be int16, [n] (mono) or [n, channels]")
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    pad = max(0, int(min_seconds * rate) - samples.shape[0])
    with open(path, "wb") as f:
        samples.astype("<i2").tofile(f)
        np.zeros(pad * channels, dtype="<i2").tofile(f)
    return Path(path)


@contextlib.contextmanager
def virtual_mic(
    raw_samples: np.ndarray,
    rate: int = 16000,
    name: str | None = None,
    min_seconds: float = 20.0,
) -> Iterator[str]:
    """Run a virtual capture device that "hears" ``raw_samples`` (int16, mono ``[n]`` or
    ``[n, 2]``: a 2-channel device); yield its name.

    The samples are written as raw S16_LE, padded with zeros to ``min_seconds`` so
    that captures shorter than that never run past the end of the file.
    """
    channels = 1 if np.ndim(raw_samples) == 1 else int(np.shape(raw_samples)[1])
    with tempfile.TemporaryDirectory(prefix="a2e-vmic-raw-") as tmp:
        raw = write_raw(Path(tmp) / "mic.raw", raw_samples, rate, min_seconds)
        with virtual_mic_file(raw, rate, name, channels) as device:
            yield device


def main(argv: list[str]) -> int:
    """``python -m tests.virtual_mic FILE.raw [RATE] [NAME]``: run a virtual mic until Ctrl-C."""
    if not 1 <= len(argv) <= 3 or argv[0] in ("-h", "--help"):
        print(
            "usage: virtual-mic.sh FILE.raw [RATE] [NAME]\n"
            "  FILE.raw: headerless S16_LE mono samples, e.g. "
            "ffmpeg -i in.wav -f s16le -ac 1 -ar 16000 FILE.raw",
            file=sys.stderr,
        )
        return 2
    raw = Path(argv[0])
    rate = int(argv[1]) if len(argv) > 1 else 16000
    name = argv[2] if len(argv) > 2 else "a2e_vmic"
    if not raw.is_file():
        print(f"no such file: {raw}", file=sys.stderr)
        return 2
    # SIGTERM ends the with-block like Ctrl-C, so jackd is stopped either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    seconds = raw.stat().st_size / 2 / rate
    try:
        with virtual_mic_server(raw, rate, name) as (device, jack):
            print(f"# virtual microphone '{device}' at {rate} Hz playing {raw} ({seconds:.1f} s,")
            print("# does not loop). In the shell that runs the bridge:")
            print(f"export ALSA_CONFIG_PATH={os.environ['ALSA_CONFIG_PATH']}")
            print(f"export JACK_DEFAULT_SERVER={os.environ['JACK_DEFAULT_SERVER']}")
            print(f"# then: a2e-bridge run --device {device}    (Ctrl-C here stops jackd)")
            print(f"# device lost: kill -USR1 {os.getpid()}; back: kill -USR2 {os.getpid()}")
            sys.stdout.flush()
            signal.signal(signal.SIGUSR1, lambda *_: jack.kill())
            signal.signal(signal.SIGUSR2, lambda *_: jack.start())
            while True:
                signal.pause()
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
