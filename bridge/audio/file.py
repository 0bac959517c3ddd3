"""Audio files as a source: the same ring a capture device fills, paced like one.

The reader thread decodes the file block by block (soundfile: WAV, FLAC, OGG, ...,
any rate and channel count) and writes each block into the ring.  ``realtime``
paces the writes on the file's own sample clock (block n is written at
``start + n_samples / rate``, so pacing does not drift); otherwise blocks go in
as fast as the consumer frees room, and nothing is ever overwritten.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from pathlib import Path

import numpy as np

from bridge.audio.ring import SampleRing
from bridge.errors import BridgeError

log = logging.getLogger(__name__)


def open_audio_file(path: str | Path):  # -> soundfile.SoundFile
    """Open ``path`` for reading, or raise a one-line BridgeError saying why not.

    A WAV cut short (its header promises more than the file holds: an interrupted
    copy or recording) is read as far as it goes, with a warning.
    """
    import soundfile

    p = Path(path)
    if not p.is_file():
        raise BridgeError(f"audio file not found: {p} (input.file / --input)")
    try:
        f = soundfile.SoundFile(str(p))
    except (soundfile.LibsndfileError, RuntimeError, OSError) as e:
        raise BridgeError(
            f"cannot read audio file {p}: {e}; give a WAV, FLAC or OGG file "
            "(convert others with e.g. `ffmpeg -i IN out.wav`)"
        ) from None
    promised = wav_promised_frames(p)
    if promised is not None and promised > f.frames:
        log.warning(
            "audio file %s is cut short: its header promises %.2f s, the file holds %.2f s; "
            "playing what is there", p, promised / f.samplerate, f.frames / f.samplerate,
        )  # fmt: skip
    return f


def wav_promised_frames(path: Path) -> int | None:
    """Frames a RIFF/WAVE header's data chunk promises; None if not a WAV or the size is unknown."""
    try:
        with path.open("rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = 0
            while chunk := fh.read(8):
                if len(chunk) < 8:
                    return None
                kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if kind == b"fmt ":
                    fmt = fh.read(size + (size & 1))
                    block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else 0
                elif kind == b"data":
                    # 0 and 0xFFFFFFFF: written by streaming recorders that never fix the size up
                    if not block_align or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                else:
                    fh.seek(size + (size & 1), 1)
    except OSError:
        return None
    return None


class FileSource:
    """Feeds an audio file into a :class:`SampleRing` from a reader thread."""

    def __init__(
        self,
        path: str | Path,
        *,
        realtime: bool = True,
        blocksize: int = 256,
        ring_seconds: float = 4.0,
        max_seconds: float | None = None,
    ) -> None:
        self.name = str(path)
        self._file = open_audio_file(path)
        if self._file.frames <= 0:  # nothing to play: say so rather than run zero frames
            self._file.close()
            raise BridgeError(f"audio file {path} holds no audio (0 frames); give a file with sound in it")
        self.samplerate = int(self._file.samplerate)
        self.channels = int(self._file.channels)
        self.frames_total = int(self._file.frames)
        if max_seconds is not None:
            self.frames_total = min(self.frames_total, int(round(max_seconds * self.samplerate)))
        self.realtime = realtime
        self.blocksize = max(1, int(blocksize))
        capacity = max(int(self.samplerate * ring_seconds), 4 * self.blocksize)
        self.ring = SampleRing(capacity, self.channels)
        self._stop = threading.Event()
        self._done = False
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="a2e-file-source", daemon=True)

    @property
    def finished(self) -> bool:
        return self._done

    @property
    def error(self) -> str | None:
        return self._error

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)
        self._file.close()

    def _run(self) -> None:
        ring = self.ring
        block = np.zeros((self.blocksize, self.channels), dtype=np.float32)
        t0 = time.monotonic()
        sent = 0
        try:
            while sent < self.frames_total and not self._stop.is_set():
                want = min(self.blocksize, self.frames_total - sent)
                n = self._file.read(want, dtype="float32", always_2d=True, out=block[:want]).shape[0]
                if n == 0:
                    break
                if self.realtime:
                    due = t0 + (sent + n) / self.samplerate
                    delay = due - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                else:
                    # As fast as possible, but never overwrite unread audio.
                    while ring.capacity - ring.available() < n and not self._stop.wait(0.001):
                        pass
                ring.write(block[:n], time.monotonic())
                sent += n
        except Exception as e:  # decoding error mid-file: report it, never a traceback
            self._error = f"reading {self.name} failed after {sent} frames: {e}"
        finally:
            self._done = True
