"""Independent decoders written from the specs (protocols.md, OSC 1.0), not from the
encoders: if an encoder and its test shared code, a wrong layout would pass its own test."""

from __future__ import annotations

import struct
from typing import Any

LIVELINK_VALUES = 61


def decode_livelink(data: bytes) -> dict[str, Any]:
    """Parse one Live Link Face v6 packet; raises ValueError on any layout violation."""
    data = bytes(data)
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        out = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return out

    def string() -> str:
        nonlocal pos
        (n,) = take(">i")
        raw = data[pos : pos + n]
        if len(raw) != n:
            raise ValueError("string runs past the end")
        pos += n
        return raw.decode("utf-8")

    (version,) = take(">B")
    device_id = string()
    subject = string()
    frame, subframe, fps_num, fps_den, count = take(">ifiiB")
    if count != LIVELINK_VALUES:
        raise ValueError(f"value count {count}, expected 61")
    values = list(take(f">{count}f"))
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} trailing bytes")
    expected = 270 + len(device_id.encode()) + len(subject.encode())
    if len(data) != expected:
        raise ValueError(f"size {len(data)} != 270 + len(id) + len(subject) = {expected}")
    return {
        "version": version,
        "device_id": device_id,
        "subject": subject,
        "frame": frame,
        "subframe": subframe,
        "fps_num": fps_num,
        "fps_den": fps_den,
        "values": values,
    }


def _osc_string(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    text = data[pos:end].decode("utf-8")
    return text, (end + 4) & ~3  # the NUL counts; pad to a multiple of 4


def decode_osc_message(data: bytes) -> tuple[str, list[Any]]:
    """(address, args) of one OSC 1.0 message; types i f s b d, plus T F N without data."""
    address, pos = _osc_string(data, 0)
    tags, pos = _osc_string(data, pos)
    if not tags.startswith(","):
        raise ValueError(f"type tag string {tags!r} does not start with ','")
    args: list[Any] = []
    for tag in tags[1:]:
        if tag == "i":
            args.append(struct.unpack_from(">i", data, pos)[0])
            pos += 4
        elif tag == "f":
            args.append(struct.unpack_from(">f", data, pos)[0])
            pos += 4
        elif tag == "d":
            args.append(struct.unpack_from(">d", data, pos)[0])
            pos += 8
        elif tag == "s":
            text, pos = _osc_string(data, pos)
            args.append(text)
        elif tag == "b":
            (n,) = struct.unpack_from(">i", data, pos)
            args.append(data[pos + 4 : pos + 4 + n])
            pos = (pos + 4 + n + 3) & ~3
        elif tag in "TFN":
            args.append({"T": True, "F": False, "N": None}[tag])
        else:
            raise ValueError(f"unsupported OSC type tag {tag!r}")
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} trailing bytes in message {address}")
    return address, args


def decode_osc_bundle(data: bytes) -> list[tuple[str, list[Any]]]:
    """Flatten an OSC bundle (nested bundles too) into its messages, in order.  The time
    tag is checked to be 1 ("immediately"), the only one the bridge sends."""
    data = bytes(data)
    if not data.startswith(b"#bundle\0"):
        raise ValueError("not an OSC bundle")
    (timetag,) = struct.unpack_from(">Q", data, 8)
    if timetag != 1:
        raise ValueError(f"time tag {timetag:#x}, expected 1 (immediately)")
    out: list[tuple[str, list[Any]]] = []
    pos = 16
    while pos < len(data):
        (size,) = struct.unpack_from(">i", data, pos)
        if size <= 0 or size % 4 or pos + 4 + size > len(data):
            raise ValueError(f"bad bundle element size {size} at {pos}")
        element = data[pos + 4 : pos + 4 + size]
        if element.startswith(b"#bundle\0"):
            out.extend(decode_osc_bundle(element))
        else:
            out.append(decode_osc_message(element))
        pos += 4 + size
    return out


# --- what real receivers do with the bridge's output (receivers.md) ----------------------


def vrcft_ifacialmocap_fields(data: bytes) -> dict[str, float]:
    """VRCFaceTracking's iFacialMocap module: ``Split('|')[1..^1]`` (it drops the first and
    the last field of every datagram), then ``name-value`` pairs; ``#`` fields are bones."""
    fields = data.decode("ascii").split("|")[1:-1]
    out: dict[str, float] = {}
    for f in fields:
        if "#" in f:
            continue
        name, _, value = f.rpartition("-")
        out[name] = float(value)
    return out


def ifacialmocap_v2_fields(data: bytes) -> dict[str, float]:
    """talking-head-anime-3's v2 reader: every ``|`` field with an ``&`` is ``name&value``;
    everything else (bones, the lead field's ``-`` form) is skipped."""
    out: dict[str, float] = {}
    for part in data.decode("utf-8").split("|"):
        if "&" in part:
            name, value = part.split("&")
            out[name] = float(value)
    return out


def decode_vrcft_binary(
    parameters: list[dict[str, Any]], values: dict[str, Any]
) -> tuple[dict[str, float], dict[str, float]]:
    """What an avatar built for VRCFaceTracking reads, from its OSC config ``parameters``
    (VRChat's JSON entries) and the last value received on each input address.

    A Float parameter is its value.  Bools named ``<base>1``, ``<base>2``, ``<base>4``, ...
    are the bits of ``<base>``: ``sum(2**i for each true bool) / 2**n`` with ``n`` bools,
    negated while ``<base>Negative`` is true (VRCFT docs: each bit is worth ``1 / 2**n``).
    Returns ``({float name: value}, {binary base name: value})`` for every parameter that
    received something (one name may be both: templates keep a local float beside the bits)."""
    bits: dict[str, list[tuple[int, str]]] = {}
    negative: dict[str, str] = {}
    out: dict[str, float] = {}
    decoded: dict[str, float] = {}
    for p in parameters:
        io = p.get("input")
        if io is None:
            continue
        name, address, kind = p["name"], io["address"], io["type"]
        if kind == "Float" and address in values:
            out[name] = float(values[address])
        elif kind == "Bool" and name.endswith("Negative"):
            negative[name[: -len("Negative")]] = address
        elif kind == "Bool":
            base = name.rstrip("0123456789")
            digits = name[len(base) :]
            if digits and int(digits) & (int(digits) - 1) == 0:
                bits.setdefault(base, []).append((int(digits), address))
    for base, pairs in bits.items():
        if not all(a in values for _, a in pairs):
            continue
        total = sum(weight for weight, a in pairs if values[a] is True)
        value = total / 2 ** len(pairs)
        if negative.get(base) in values and values[negative[base]] is True:
            value = -value
        decoded[base] = value
    return out, decoded
