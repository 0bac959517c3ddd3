"""Follow the avatar: hear VRChat's ``/avatar/change`` and switch the VRChat output to it.

VRChat sends ``/avatar/change <avatar id>`` to its OSC output port (9001) whenever an
avatar loads, and writes that avatar's parameter list to
``<OSC folder>/<user id>/Avatars/<avatar id>.json``.  :class:`AvatarFollower` runs on its
own small thread: it waits on the socket, reads and parses the file, builds the new
:class:`~bridge.outputs.vrchat.VrchatPlan` and hands it to the encoder with one reference
swap.  The hop loop never waits for any of it.

A file that is missing or bad keeps the previous parameter set; the warning is logged once
per avatar id (it ends with the line that says the next avatar loaded), and counted.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

from pythonosc.osc_packet import OscPacket, ParseError

from bridge.outputs.vrchat import VrchatEncoder
from bridge.outputs.vrchat_avatar import (
    AvatarConfigError,
    find_avatar_file,
    load_avatar_config,
    valid_avatar_id,
)

log = logging.getLogger(__name__)

AVATAR_CHANGE = "/avatar/change"
_CHANGE_BYTES = AVATAR_CHANGE.encode()
#: VRChat may announce an avatar a moment before its file is (re)written: look again this
#: many times, this far apart, before giving up on it.
FILE_RETRIES, FILE_RETRY_S = 4, 0.25


class AvatarFollower:
    """Listens on ``sock`` (bound) and keeps ``encoder`` on the current avatar's parameters."""

    def __init__(self, encoder: VrchatEncoder, sock: socket.socket, osc_folder: Path | None,
                 label: str = "vrchat") -> None:  # fmt: skip
        self.encoder = encoder
        self.osc_folder = osc_folder
        self.label = label
        self.changes = 0  #: /avatar/change messages heard
        self.loads = 0  #: avatar files loaded and in use
        self.errors = 0  #: avatar changes that kept the previous set (no file, bad file)
        self.retries, self.retry_s = FILE_RETRIES, FILE_RETRY_S
        self._sock = sock
        self._sock.settimeout(0.2)
        self._warned: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{label}-avatar", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self._sock.getsockname()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except (TimeoutError, BlockingIOError, InterruptedError):
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue  # e.g. Windows' WSAECONNRESET on UDP: nothing to do with us
            if _CHANGE_BYTES not in data:  # VRChat sends every parameter change here: skip fast
                continue
            for avatar_id in _avatar_ids(data):
                self.changes += 1
                try:
                    self.change(avatar_id)
                except Exception as e:  # never let one odd avatar end the follower
                    self._fail(avatar_id, f"{type(e).__name__}: {e}")

    def change(self, avatar_id: str) -> None:
        """Load ``avatar_id``'s file and switch to it, or keep the current set and say why once."""
        if not valid_avatar_id(avatar_id):
            self._fail(avatar_id, f"{avatar_id!r} is not an avatar id")
            return
        if self.osc_folder is None:
            self._fail(avatar_id, "no OSC folder is known on this system; set output.osc_folder")
            return
        error = ""
        for attempt in range(self.retries):
            if attempt and self._stop.wait(self.retry_s):
                return
            path = find_avatar_file(self.osc_folder, avatar_id)
            if path is None:
                error = f"no {avatar_id}.json in {self.osc_folder}/*/Avatars (set output.osc_folder)"
                continue
            try:
                config = load_avatar_config(path)
            except AvatarConfigError as e:
                error = str(e)
                continue
            break
        else:
            self._fail(avatar_id, error)
            return
        plan = self.encoder.plan_for(config)
        self.encoder.use(plan)
        self.loads += 1
        self._warned.discard(avatar_id)
        if len(plan):
            log.info("%s output: avatar %s (%s) loaded: %s", self.label, avatar_id, config.name,
                     plan.describe())  # fmt: skip
        else:
            log.info("%s output: avatar %s (%s) has no face-tracking parameters the bridge drives; "
                     "sending nothing until the next avatar", self.label, avatar_id, config.name)  # fmt: skip

    def _fail(self, avatar_id: str, why: str) -> None:
        self.errors += 1
        if avatar_id in self._warned:
            return
        self._warned.add(avatar_id)
        log.warning("%s output: avatar change to %s: %s; keeping the previous parameters", self.label,
                    avatar_id[:80], why)  # fmt: skip

    def stats(self) -> dict[str, int]:
        return {"avatar_changes": self.changes, "avatar_loads": self.loads, "avatar_errors": self.errors}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sock.close()


def _avatar_ids(data: bytes) -> list[str]:
    """The string argument of every ``/avatar/change`` message in one datagram."""
    try:
        packet = OscPacket(data)
    except ParseError:
        return []
    out = []
    for timed in packet.messages:
        msg = timed.message
        if msg.address == AVATAR_CHANGE and msg.params and isinstance(msg.params[0], str):
            out.append(msg.params[0])
    return out
