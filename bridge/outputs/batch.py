"""Whole batches of frames through the Live Link, OSC and ZeroMQ outputs, as arrays.

With hundreds of performers, encoding and sending frame by frame (a FaceFrame, a call and
a syscall per packet) costs more than the model.  Here a :class:`~bridge.frame.FrameBatch`
is encoded all at once: the UDP formats patch every served performer's packets in one
:class:`~bridge.outputs.packet_table.PacketTable` with a few numpy assignments, and the
transport sends them with one ``sendmmsg``; ZeroMQ's JSON takes each field of the batch as
one list and the 52 values of each frame as one text (:mod:`bridge.outputs.json_floats`),
then one ``%`` per message (libzmq has no batch send: one NOBLOCK send per message, as before).

The packets are byte for byte those :meth:`Output.publish <bridge.outputs.base.Output.publish>`
sends for each frame (tests/test_batch_send.py compares them at real receivers), sent frame
by frame across performers: every performer's frame ``f`` before any performer's ``f + 1``.
Encoders stay pure: the batch encoders here read only the batch and the per-performer
encoders' templates (``layout()``), and the transports count and report as for one packet.
:func:`batch_sender` picks the path for an output; None leaves it frame by frame.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridge.clock import wall_clock
from bridge.frame import FPS, FrameBatch
from bridge.outputs.base import BatchSender, Output, UdpTransport
from bridge.outputs.json_floats import Float7g
from bridge.outputs.livelink import FRAME_S, LiveLinkEncoder
from bridge.outputs.osc import OscEncoder
from bridge.outputs.packet_table import PacketTable
from bridge.outputs.zmq import ZmqEncoder, ZmqPubTransport

_DAY_FRAMES = 86_400 * FPS


@dataclass(slots=True)
class Selection:
    """The rows of a batch that an output serves, and where their packets go (cached while
    a batch's performers and stride stay the same, as they do hop after hop)."""

    rows: np.ndarray  #: ``[Rs]`` served rows of the batch, in batch order
    all_rows: bool  #: every row of the batch is served, in order (no gather needed)
    slots: np.ndarray  #: ``[Rs, F]`` each frame's slot, row-major (how the batch's arrays lie)
    send_order: np.ndarray  #: ``[F * Rs]`` the slots frame-major: the order packets leave
    owners: list[int]  #: ``[Rs]`` index of each served row's performer in the encoder's list
    index: dict[str, np.ndarray] = field(default_factory=dict)  #: field -> byte positions


def frame_numbers(batch: FrameBatch, sel: Selection) -> np.ndarray:
    """``[Rs, F]`` int64 frame numbers of the served rows."""
    first = batch.first if sel.all_rows else batch.first[sel.rows]
    return np.asarray(first, dtype=np.int64)[:, None] + np.arange(batch.stride, dtype=np.int64)


def int32_wrapped(numbers: np.ndarray) -> np.ndarray:
    """``numbers`` as big-endian int32 bytes with the wrap of :func:`~bridge.outputs.base.wrap_int32`."""
    return (numbers & 0xFFFF_FFFF).astype(">u4")


class _Router:
    """Which batch rows the encoders serve, cached per (stride, performers)."""

    def __init__(self, performers: Sequence[int]) -> None:
        self.performers = list(performers)
        self._slot_of = np.full(max(self.performers) + 1, -1, dtype=np.intp)
        self._slot_of[self.performers] = np.arange(len(self.performers), dtype=np.intp)
        self._key: tuple[int, bytes] | None = None
        self._selection: Selection | None = None

    def select(self, batch: FrameBatch, slots_per_frame: int) -> Selection | None:
        """The served rows of ``batch`` (None: a performer appears twice; send frame by frame)."""
        performers = np.asarray(batch.performers, dtype=np.intp)
        key = (batch.stride, performers.tobytes())
        if key == self._key:
            return self._selection
        inside = (performers >= 0) & (performers < len(self._slot_of))
        owner = np.full(len(performers), -1, dtype=np.intp)
        owner[inside] = self._slot_of[performers[inside]]
        rows = np.flatnonzero(owner >= 0)
        owner = owner[rows]
        if len(np.unique(owner)) != len(owner):
            self._key, self._selection = key, None
            return None
        stride = batch.stride
        slots = np.arange(stride, dtype=np.intp)[None, :] * slots_per_frame + owner[:, None]  # [Rs, F]
        all_rows = len(rows) == len(performers)
        sel = Selection(rows, all_rows, slots, np.ascontiguousarray(slots.T).reshape(-1), owner.tolist())
        self._key, self._selection = key, sel
        return sel


class PacketBatchEncoder(ABC):
    """Base of the UDP-format batch encoders: routing, and a table sized to the stride.

    ``encoders`` maps a performer index to its per-frame encoder (one with ``layout()``);
    subclasses fill the fields from the batch in :meth:`_fill`.
    """

    def __init__(self, encoders: dict[int, Any]) -> None:
        self._router = _Router(sorted(encoders))
        self.encoders = [encoders[p] for p in self._router.performers]
        self.table: PacketTable | None = None

    def encode(self, batch: FrameBatch) -> Selection | None:
        """Write every served frame of ``batch`` into :attr:`table`; the selection says which
        slots to send (None: this batch needs the frame-by-frame path)."""
        stride = batch.stride
        if self.table is None or self.table.frames < stride:
            layouts = [e.layout() for e in self.encoders]
            self.table = PacketTable([t for t, _ in layouts], stride,
                                     {name: (np.stack([f[name][0] for _, f in layouts]), width)
                                      for name, (_, width) in layouts[0][1].items()})  # fmt: skip
            self._router = _Router(self._router.performers)  # slots moved: forget the cached routing
        sel = self._router.select(batch, self.table.performers)
        if sel is None or not len(sel.rows):
            return sel
        if not sel.index:
            flat = sel.slots.reshape(-1)
            sel.index.update((name, self.table.index(name, flat)) for name in self._fields())
        self._fill(batch, sel)
        return sel

    def _rows(self, array: np.ndarray, sel: Selection) -> np.ndarray:
        return array if sel.all_rows else array[sel.rows]

    def _write(self, sel: Selection, name: str, src: np.ndarray, dtype: str) -> None:
        assert self.table is not None
        self.table.write(sel.index[name], np.ascontiguousarray(src, dtype=dtype))

    @abstractmethod
    def _fields(self) -> Sequence[str]:
        """The packet fields this kind writes (names in the table's layout)."""

    @abstractmethod
    def _fill(self, batch: FrameBatch, sel: Selection) -> None:
        """Write the batch's selected rows into the table's packets."""


class LiveLinkBatchEncoder(PacketBatchEncoder):
    """Live Link packets (also ZeroMQ's ``livelink`` messages) of a batch: values, head and
    frame time, ``stream`` or ``system`` timecode as :class:`LiveLinkEncoder` writes them."""

    def __init__(self, encoders: dict[int, LiveLinkEncoder]) -> None:
        super().__init__(encoders)
        clocks = {e.timecode for e in self.encoders}
        if len(clocks) != 1:
            raise ValueError("every Live Link encoder of one output must use the same timecode")
        self.clock = self.encoders[0].clock

    def _fields(self) -> Sequence[str]:
        return ("values", "head", "frame") if self.clock is None else ("values", "head", "frame", "subframe")

    def _fill(self, batch: FrameBatch, sel: Selection) -> None:
        self._write(sel, "values", self._rows(batch.values, sel), ">f4")
        self._write(sel, "head", self._rows(batch.head, sel), ">f4")
        if self.clock is None:
            self._write(sel, "frame", int32_wrapped(frame_numbers(batch, sel)), ">u4")
            return
        # LiveLinkEncoder: clock.time_of_day_frames(capture - FRAME_S), the same float operations
        clock = self.clock
        unix = (self._rows(batch.capture_time, sel) - FRAME_S) + clock.offset  # [Rs, F]
        whole = np.floor(unix)
        seconds, at = np.unique(whole, return_inverse=True)  # a batch spans a second or two
        midnight_to = np.array([clock.seconds_of_day(s) for s in seconds.tolist()])
        x = (midnight_to[at.reshape(whole.shape)] + (unix - whole)) * FPS
        number = np.floor(x + 1e-9)
        sub = np.maximum(x - number, 0.0)
        self._write(sel, "frame", (number % _DAY_FRAMES).astype(np.int64), ">i4")
        self._write(sel, "subframe", sub, ">f4")
        encoders, firsts, lasts = self.encoders, unix[:, 0].tolist(), unix[:, -1].tolist()
        for owner, first, last in zip(sel.owners, firsts, lasts, strict=True):
            enc = encoders[owner]
            if enc.first_stamp is None:
                enc.first_stamp = first
            enc.last_stamp = last


class OscBatchEncoder(PacketBatchEncoder):
    """OSC ``arkit`` / ``vmc`` bundles of a batch, as :class:`OscEncoder` patches them."""

    def __init__(self, encoders: dict[int, OscEncoder]) -> None:
        super().__init__(encoders)
        kinds = {(e.scheme, e.speech) for e in self.encoders}
        if len(kinds) != 1:
            raise ValueError("every OSC encoder of one output must use the same scheme and speech")
        self.scheme, self.speech = kinds.pop()

    def _fields(self) -> Sequence[str]:
        if self.scheme == "vmc":
            return ("values", "time")
        return ("values", "speech", "capture", "frame") if self.speech else ("values", "capture", "frame")

    def _fill(self, batch: FrameBatch, sel: Selection) -> None:
        self._write(sel, "values", self._rows(batch.values, sel), ">f4")
        numbers = frame_numbers(batch, sel)
        if self.scheme == "vmc":
            self._write(sel, "time", numbers / FPS, ">f4")
            return
        self._write(sel, "frame", int32_wrapped(numbers), ">u4")
        self._write(sel, "capture", self._rows(batch.capture_time, sel) + wall_clock().offset, ">f8")
        if self.speech:
            prob = batch.speech_prob
            speech = np.full(numbers.shape, -1.0) if prob is None else self._rows(prob, sel)
            self._write(sel, "speech", speech, ">f4")


class ZmqJsonBatchEncoder:
    """ZeroMQ ``json`` messages of a batch, formatted in one C-level pass: every field of
    every frame as a column (one ``tolist()`` each, frame-major; the 52 values of each frame
    as one text, :class:`~bridge.outputs.json_floats.Float7g`), then one template (subject as
    an argument) ``%``-formatted over ``zip`` of the columns.  A frame with a non-finite
    value or speech probability is then replaced by :meth:`ZmqEncoder.encode`'s message
    (which writes ``null`` for them), so every message is the frame path's, byte for byte."""

    def __init__(self, encoders: dict[int, ZmqEncoder]) -> None:
        self._router = _Router(sorted(encoders))
        self.encoders = [encoders[p] for p in self._router.performers]
        orders = {None if (o := e.mirror_order) is None else o.tobytes() for e in self.encoders}
        if len(orders) != 1 or len({e.topic for e in self.encoders}) != 1:
            raise ValueError("every ZeroMQ encoder of one output must mirror alike and share a topic")
        self._order = self.encoders[0].mirror_order
        self._subjects = [e.subject_json for e in self.encoders]
        #: (latency sent, speech sent, values as one ``%s``) -> the template, subject as ``%s``
        self._templates: dict[tuple[bool, bool, bool], bytes] = {}
        self._floats = Float7g()

    def _template(self, latency: bool, speech: bool, values: bool) -> bytes:
        key = (latency, speech, values)
        if key not in self._templates:
            self._templates[key] = self.encoders[0].json_template(
                b"%.3f" if latency else b"null", b"%.4f" if speech else b"null", subject=b"%s",
                values=b"%s" if values else None)
        return self._templates[key]

    def messages(self, batch: FrameBatch) -> list[bytes] | None:
        """The served frames' messages, frame-major (None: send this batch frame by frame)."""
        sel = self._router.select(batch, len(self.encoders))
        if sel is None:
            return None
        if not len(sel.rows):
            return []
        rows, stride = sel.rows, batch.stride

        def frame_major(a: np.ndarray) -> np.ndarray:  # [Rs, F, ...] -> [F * Rs, ...]
            a = a if sel.all_rows else a[rows]
            return a.swapaxes(0, 1).reshape(stride * len(rows), *a.shape[2:])

        values = frame_major(batch.values)
        finite = np.isfinite(values).all(axis=1)
        if self._order is not None:
            values = values[:, self._order]
        capture = frame_major(batch.capture_time)
        numbers = frame_numbers(batch, sel).T.reshape(-1)
        sent_at, prob = batch.sent_at, batch.speech_prob
        speech = None if prob is None else frame_major(prob)
        wall = capture + wall_clock().offset
        subjects = [self._subjects[o] for o in sel.owners] * stride
        columns = [subjects, numbers.tolist(), (numbers / FPS).tolist(), wall.tolist()]
        if sent_at is not None:
            columns.append(((sent_at - capture) * 1000.0).tolist())
        formatted = self._floats.format_rows(values)  # each frame's 52 values as one text
        if formatted is not None:
            columns.append(formatted[0])
        else:
            columns += values.T.tolist()
        if speech is not None:
            finite &= np.isfinite(speech)
            columns.append(speech.tolist())
        words = [b'""'] * (len(rows) * stride)
        if batch.texts is not None:
            texts, last = batch.texts, (stride - 1) * len(rows)
            for j, i in enumerate(rows.tolist()):
                if texts[i]:
                    words[last + j] = json.dumps(texts[i], ensure_ascii=False).encode()
        columns.append(words)
        template = self._template(sent_at is not None, speech is not None, formatted is not None)
        out = list(map(template.__mod__, zip(*columns, strict=True)))
        if not finite.all():
            for k in np.flatnonzero(~finite).tolist():
                f, j = divmod(k, len(rows))
                out[k] = self.encoders[sel.owners[j]].encode(batch.frame(int(rows[j]), f))
        return out


class TableSender:
    """A batch encoder that fills a :class:`PacketTable`, and a function that sends its slots."""

    def __init__(self, encoder: PacketBatchEncoder, send: Callable[[PacketTable, np.ndarray], None]) -> None:
        self.encoder = encoder
        self._send = send

    def prepare(self, batch: FrameBatch) -> None:
        self.encoder.encode(batch)

    def publish(self, batch: FrameBatch) -> bool:
        sel = self.encoder.encode(batch)
        if sel is None:
            return False
        if len(sel.rows):
            assert self.encoder.table is not None
            self._send(self.encoder.table, sel.send_order)
        return True


class ZmqJsonSender:
    """:class:`ZmqJsonBatchEncoder`'s messages, each sent NOBLOCK."""

    def __init__(self, encoder: ZmqJsonBatchEncoder, transport: ZmqPubTransport) -> None:
        self.encoder = encoder
        self.transport = transport

    def prepare(self, batch: FrameBatch) -> None:
        self.encoder.messages(batch)

    def publish(self, batch: FrameBatch) -> bool:
        messages = self.encoder.messages(batch)
        if messages is None:
            return False
        self.transport.send_many(messages)
        return True


def _zmq_table_send(transport: ZmqPubTransport) -> Callable[[PacketTable, np.ndarray], None]:
    def send(table: PacketTable, order: np.ndarray) -> None:
        views = table.views()
        transport.send_many([views[slot] for slot in order.tolist()])

    return send


def batch_sender(output: Output) -> BatchSender | None:
    """The batch path for ``output`` (Live Link, OSC arkit/vmc, ZeroMQ), or None: frame by frame
    (other kinds, or performers whose encoders differ in what one batch encoder shares)."""
    try:
        return _batch_sender(output)
    except ValueError:
        return None


def _batch_sender(output: Output) -> BatchSender | None:
    encoders, transport = output.encoders, output.transport
    kinds = {type(e) for e in encoders.values()}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if isinstance(transport, UdpTransport):
        if kind is LiveLinkEncoder:
            return TableSender(LiveLinkBatchEncoder(encoders), transport.send_many)  # type: ignore[arg-type]
        if kind is OscEncoder:
            return TableSender(OscBatchEncoder(encoders), transport.send_many)  # type: ignore[arg-type]
    if isinstance(transport, ZmqPubTransport) and kind is ZmqEncoder:
        formats = {e.format for e in encoders.values()}  # type: ignore[attr-defined]
        if formats == {"json"}:
            return ZmqJsonSender(ZmqJsonBatchEncoder(encoders), transport)  # type: ignore[arg-type]
        if formats == {"livelink"}:
            packets = {p: e.packet_encoder for p, e in encoders.items()}  # type: ignore[attr-defined]
            return TableSender(LiveLinkBatchEncoder(packets), _zmq_table_send(transport))  # type: ignore[arg-type]
    return None
