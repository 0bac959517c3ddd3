"""ZeroMQ PUB output: single-part messages ``topic + b" " + payload``.

Single-part on purpose: ``ZMQ_CONFLATE`` (keep only the newest message) works only with
single-part messages, and a subscriber that wants the latest face wants exactly that.
The payload is JSON (any language, no schema) or the Live Link Face packet bytes.
"""

from __future__ import annotations

import errno
import json
import math
import re
import time
from collections.abc import Iterable
from typing import Literal

import numpy as np
import zmq

from bridge.blendshapes import EPIC_NAMES, NUM_BLENDSHAPES, mirror_permutation
from bridge.clock import wall_time
from bridge.errors import BridgeError
from bridge.frame import FPS, FaceFrame
from bridge.outputs.base import Buffer, Health, inverse_permutation
from bridge.outputs.livelink import LiveLinkEncoder

ZmqFormat = Literal["json", "livelink"]
FORMATS: tuple[str, ...] = ("json", "livelink")

#: Significant digits of each JSON value: float32 carries ~7.
_VALUE_FORMAT = "%.7g"


def _check_topic(topic: str) -> None:
    if " " in topic:
        raise BridgeError(
            f"zmq output: topic {topic!r} contains a space, which separates topic from "
            "payload; choose a topic without spaces (output.topic)"
        )


class ZmqEncoder:
    """FaceFrame -> ``topic + b" " + payload`` for a PUB socket.

    ``json``: ``{"subject", "frame", "time", "capture_time", "latency_ms", "names", "values",
    "speech", "text"}`` from a precomputed %-template (the names and key text are constant); a
    non-finite number (a value, the speech probability) is written as ``null``, so every message
    is standard JSON (what ``json.dumps(..., allow_nan=False)`` accepts).  ``livelink``: the exact
    :class:`~bridge.outputs.livelink.LiveLinkEncoder` packet, patched in place behind the
    topic.  ``capture_time`` is the time of day (Unix seconds) its last audio sample was
    captured, ``latency_ms`` how long before the frame was sent that was (``null`` for a frame
    not sent live).  ``encode`` returns
    ``bytes``; ``encode_view`` a view valid until the next call.
    ``subject`` is fixed per encoder (its JSON text or packet bytes are built once): an output
    serving several performers holds one encoder per subject.
    """

    def __init__(
        self,
        format: ZmqFormat = "json",
        topic: str = "a2e",
        subject: str = "A2EBridge",
        device_id: str | None = None,
        mirror: bool = False,
    ) -> None:
        if format not in FORMATS:
            raise BridgeError(f"zmq output: format {format!r} is not known; use json or livelink")
        _check_topic(topic)
        self.format = format
        self.topic = topic
        self.subject = subject
        self.mirror = mirror
        self._livelink: LiveLinkEncoder | None = None
        if format == "livelink":
            self._livelink = LiveLinkEncoder(subject, device_id, mirror, prefix=topic.encode() + b" ")
            return

        def lit(obj: object) -> str:  # a constant JSON fragment, safe inside a %-template
            return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).replace("%", "%%")

        values = ",".join([_VALUE_FORMAT] * NUM_BLENDSHAPES)
        # A bytes template: bytes %-formatting is faster than str and needs no encode after.
        # ``%a`` of a float is its repr, as ``%r`` was in the str template.
        #: the subject as JSON (what a template with a ``%s`` subject is given)
        self.subject_json = json.dumps(subject, ensure_ascii=False).encode()
        # the template in the pieces :meth:`json_template` puts together
        self._parts = (
            (topic.replace("%", "%%") + ' {"subject":').encode(),
            lit(subject).encode(),
            b',"frame":%d,"time":%a,"capture_time":%.6f,"latency_ms":',
            (',"names":' + lit(list(EPIC_NAMES)) + ',"values":[').encode(),
            values.encode(),
            b'],"speech":',
            b',"text":%s}',
        )
        self._template = self.json_template()
        self._scratch = np.zeros(NUM_BLENDSHAPES, dtype=np.float32)
        self._dst: slice | np.ndarray = (
            inverse_permutation(mirror_permutation(EPIC_NAMES)) if mirror else slice(None)
        )

    def encode(self, frame: FaceFrame) -> bytes:
        """One complete message as ``bytes``."""
        if self._livelink is not None:
            return self._livelink.encode(frame)
        scratch = self._scratch
        scratch[self._dst] = frame.values
        prob = frame.speech_prob
        speech = b"%.4f" % prob if prob is not None and math.isfinite(prob) else b"null"
        words = json.dumps(frame.text, ensure_ascii=False).encode() if frame.text else b'""'
        n = frame.number
        capture, sent = frame.capture_time, frame.sent_at
        latency = b"%.3f" % ((sent - capture) * 1000.0) if sent is not None else b"null"
        data = self._template % (n, n / FPS, wall_time(capture), latency, *scratch.tolist(), speech, words)
        start = data.rfind(b'"values":[')
        end = data.rfind(b'],"speech":')
        if data.find(b"n", start, end) >= 0:  # nan / inf (a formatted finite number has no 'n')
            data = data[:start] + re.sub(rb"-?inf|nan", b"null", data[start:end]) + data[end:]
        return data

    def encode_view(self, frame: FaceFrame) -> memoryview:
        """The message without an extra copy where the format allows (livelink)."""
        if self._livelink is not None:
            return self._livelink.encode_view(frame)
        return memoryview(self.encode(frame))

    @property
    def packet_encoder(self) -> LiveLinkEncoder | None:
        """The Live Link encoder behind the topic (``livelink`` format), else None."""
        return self._livelink

    @property
    def mirror_order(self) -> np.ndarray | None:
        """Where each JSON value comes from (``values[mirror_order]``), None when not mirrored."""
        if isinstance(self._dst, slice):
            return None
        order = np.empty_like(self._dst)
        order[self._dst] = np.arange(len(self._dst), dtype=self._dst.dtype)
        return order

    def json_template(self, latency: bytes = b"%s", speech: bytes = b"%s", *, subject: bytes | None = None,
                      values: bytes | None = None) -> bytes:  # fmt: skip
        """The ``json`` bytes %-template: [``subject``], frame ``%d``, time ``%a``, capture time
        ``%.6f``, ``latency``, the 52 values ``%.7g`` [or ``values``], ``speech``, text ``%s``.
        The frame path formats latency and speech itself (``%s``); a batch path may put
        ``%.3f`` / ``%.4f`` or ``null`` there, the subject as ``%s`` (given :attr:`subject_json`)
        and the values as one ``%s`` (formatted by :mod:`bridge.outputs.json_floats`)."""
        start, subject_text, head, names, values_text, middle, tail = self._parts
        return (start + (subject_text if subject is None else subject) + head + latency + names
                + (values_text if values is None else values) + middle + speech + tail)  # fmt: skip


class ZmqPubTransport:
    """A PUB socket bound to ``endpoint`` that never blocks the caller.

    ``send`` uses ``NOBLOCK``; a refused message (``zmq.Again``) is counted in ``dropped``.
    Note that PUB itself drops silently, per subscriber, once that subscriber's queue holds
    ``sndhwm`` messages (the builder gives one second of frames of every performer served),
    so ``sent`` counts messages handed to libzmq.  With no subscriber
    every message is discarded at once.  ``linger`` is 0: closing never waits for a reader.
    Not thread-safe (a ZeroMQ socket): publish from one thread, the hop loop.
    """

    def __init__(self, endpoint: str, sndhwm: int = 30, *, label: str = "zmq") -> None:
        self.endpoint = endpoint
        self.sent = 0
        self.dropped = 0
        self._sock = zmq.Context.instance().socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, sndhwm)
        try:
            self._sock.bind(endpoint)
        except zmq.ZMQError as e:
            self._sock.close(linger=0)
            why = "address already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e)).lower()
            raise BridgeError(
                f"{label} output: cannot bind {endpoint}: {why}; choose another endpoint (output.endpoint)"
            ) from None
        #: The endpoint actually bound (resolves a ``*`` port, e.g. ``tcp://127.0.0.1:*``).
        self.last_endpoint: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._health = Health("ok", None, time.monotonic())

    def send(self, data: Buffer) -> None:
        """Queue one single-part message, or count it dropped; never waits."""
        try:
            self._sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
        else:
            self.sent += 1

    def send_many(self, messages: Iterable[Buffer]) -> None:
        """:meth:`send` each message in order (libzmq has no call for many separate messages)."""
        send, noblock, again = self._sock.send, zmq.NOBLOCK, zmq.Again
        dropped = count = 0
        for data in messages:
            count += 1
            try:
                send(data, noblock)
            except again:
                dropped += 1
        self.sent += count - dropped
        self.dropped += dropped

    def close(self) -> None:
        self._sock.close(linger=0)

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "dropped": self.dropped}

    def health(self) -> Health:
        """Always ``ok`` once bound: subscribers come and go by design, and PUB cannot be refused."""
        return self._health
