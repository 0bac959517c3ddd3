"""VRChat's OSC avatar config files, and which of an avatar's parameters the bridge drives.

VRChat writes one JSON file per avatar, ``<OSC folder>/<user id>/Avatars/<avatar id>.json``::

    {"id": "avtr_...", "name": "My Avatar", "parameters": [
        {"name": "FT/v2/JawOpen", "input": {"address": "/avatar/parameters/FT/v2/JawOpen", "type": "Float"},
                                  "output": {...}}, ...]}

Only parameters with an ``input`` can be set over OSC.  Face-tracking avatars declare their
expressions the way VRCFaceTracking (VRCFT) discovers them (``BaseParameter.cs``,
``BinaryBaseParameter.cs``), and :func:`bind_avatar` follows the same rules:

* ``<prefix>v2/JawOpen`` as a Float: the value as a float.  The prefix is whatever the
  avatar chose (``FT/`` in the common templates, or none); a name matches when it *is* the
  parameter name or ends in ``/`` + it (not after a ``v<digits>`` segment, so a v1 name
  never matches inside a v2 one).
* ``<prefix>v2/JawOpen1``, ``...2``, ``...4``, ``...8`` as Bools: the binary encoding (the
  value in ``n`` bits, one bool per power of two; see :class:`Binding`).
* ``<prefix>v2/JawOpenNegative`` as a Bool: true while the value is negative.
* ``<prefix>v2/JawOpen`` as a Bool: VRCFT's plain bool, true while the value is below 0.5.

Int parameters and names the bridge cannot derive are not sent.  Nothing here touches a
socket: the follower thread (:mod:`bridge.outputs.vrchat_listener`) and the encoder use it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import BridgeError

#: The OSC types VRChat writes in avatar config files.
PARAMETER_TYPES = ("Float", "Int", "Bool")
#: VRChat's Steam app id (its Proton prefix on Linux lives under this number).
VRCHAT_STEAM_APP_ID = 438100
#: An avatar id as VRChat sends it (``avtr_<uuid>``; local test avatars ``local:...``): no
#: path separators or dots, so an id heard on the network can never name a file elsewhere.
_AVATAR_ID = re.compile(r"^[A-Za-z0-9_:-]{1,128}$")
_VERSION_SEGMENT = re.compile(r"(^|/)v\d+$")


class AvatarConfigError(BridgeError):
    """A file that is not a usable VRChat OSC avatar config (one line: what, where, fix)."""


@dataclass(frozen=True, slots=True)
class AvatarParameter:
    """One settable avatar parameter: its name, the OSC address VRChat reads, its type."""

    name: str
    address: str
    type: str


@dataclass(frozen=True, slots=True)
class AvatarConfig:
    """The settable parameters of one avatar, in the file's order."""

    id: str
    name: str
    parameters: tuple[AvatarParameter, ...]
    source: str


@dataclass(frozen=True, slots=True)
class Binding:
    """How one bridge parameter reaches an avatar: every field is an OSC address or empty.

    ``bits`` are ``(bit index, address)`` pairs: with ``n`` of them, VRCFT sends
    ``big = int(|value| * 2**n)`` (every bit true once ``|value| > 0.99999``), bit ``i`` on
    the bool named ``2**i``; without a ``negative`` flag a negative value sends every bit
    false.  The avatar turns the bits back into ``big / 2**n`` (resolution ``1 / 2**n``).
    """

    parameter: str
    float_address: str = ""
    bits: tuple[tuple[int, str], ...] = ()
    negative_address: str = ""
    bool_address: str = ""

    @property
    def addresses(self) -> tuple[str, ...]:
        pairs = (self.float_address, *(a for _, a in self.bits), self.negative_address, self.bool_address)
        return tuple(a for a in pairs if a)


def parse_avatar_config(text: str, source: str) -> AvatarConfig:
    """Validate the JSON text of an avatar config file; one-line AvatarConfigError if bad."""
    fix = "point output.avatar_config at the JSON file VRChat writes in OSC/<user id>/Avatars/"
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise AvatarConfigError(
            f"avatar config {source}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg}); {fix}"
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("parameters"), list):
        raise AvatarConfigError(f'avatar config {source}: no "parameters" list at the top level; {fix}')
    avatar_id, name = doc.get("id", ""), doc.get("name", "")
    if not isinstance(avatar_id, str) or not isinstance(name, str):
        raise AvatarConfigError(f'avatar config {source}: "id" and "name" must be strings; {fix}')
    params: list[AvatarParameter] = []
    for k, entry in enumerate(doc["parameters"]):
        where = f"avatar config {source}: parameters[{k}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise AvatarConfigError(f'{where} has no "name" string; {fix}')
        io = entry.get("input")
        if io is None:
            continue  # read-only (VRChat's own parameters): not settable over OSC
        if not (
            isinstance(io, dict) and isinstance(io.get("address"), str) and isinstance(io.get("type"), str)
        ):
            raise AvatarConfigError(f'{where} ({entry["name"]}): "input" needs "address" and "type"; {fix}')
        address = io["address"]
        if not address.startswith("/") or any(c in address for c in " #*,?[]{}") or "//" in address:
            raise AvatarConfigError(f"{where} ({entry['name']}): {address!r} is not an OSC address; {fix}")
        params.append(AvatarParameter(entry["name"], address, io["type"]))
    return AvatarConfig(avatar_id, name, tuple(params), source)


def load_avatar_config(path: str | Path) -> AvatarConfig:
    """Read and validate one avatar config file (VRChat writes it with a UTF-8 BOM)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise AvatarConfigError(
            f"cannot read avatar config {p}: {why}; set output.avatar_config to the avatar's JSON file "
            "(VRChat writes it in OSC/<user id>/Avatars/<avatar id>.json)"
        ) from None
    return parse_avatar_config(text, str(p))


def default_osc_folder() -> Path | None:
    """Where VRChat keeps its OSC configs on this OS (None where VRChat does not run)."""
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local).parent if local else Path.home() / "AppData"
        return base / "LocalLow" / "VRChat" / "VRChat" / "OSC"
    if sys.platform.startswith("linux"):
        prefix = Path("steamapps", "compatdata", str(VRCHAT_STEAM_APP_ID), "pfx", "drive_c")
        tail = prefix / "users" / "steamuser" / "AppData" / "LocalLow" / "VRChat" / "VRChat" / "OSC"
        candidates = [Path.home() / ".local/share/Steam" / tail, Path.home() / ".steam/steam" / tail]
        return next((c for c in candidates if c.is_dir()), candidates[0])
    return None


def valid_avatar_id(avatar_id: str) -> bool:
    return bool(_AVATAR_ID.match(avatar_id))


def find_avatar_file(folder: Path, avatar_id: str) -> Path | None:
    """``<folder>/<any user>/Avatars/<avatar_id>.json``; the newest if several users have it."""
    if not valid_avatar_id(avatar_id):
        return None
    try:
        users = [u for u in folder.iterdir() if u.is_dir()]
    except OSError:
        return None
    found = [f for f in (u / "Avatars" / f"{avatar_id}.json" for u in users) if f.is_file()]
    return max(found, key=lambda f: f.stat().st_mtime) if found else None


def _suffixes(name: str) -> list[str]:
    """``name`` and every tail of it after a ``/`` whose head does not end in a ``v<digits>``
    segment (VRCFT's rule that keeps v1 names out of v2 ones): the names it can stand for."""
    out = [name]
    for i, c in enumerate(name):
        if c == "/" and not _VERSION_SEGMENT.search(name[:i]):
            out.append(name[i + 1 :])
    return out


def bind_avatar(config: AvatarConfig, targets: Sequence[tuple[str, str]]) -> list[Binding]:
    """Which parameters of ``config`` carry each ``(bridge parameter, avatar-side name)``,
    e.g. ``("JawOpen", "v2/JawOpen")``; only parameters the avatar has at least one address
    for are returned, in ``targets`` order.  The first match of each kind wins."""
    wanted = {target for _, target in targets}
    floats: dict[str, str] = {}
    bools: dict[str, str] = {}
    negatives: dict[str, str] = {}
    bits: dict[str, dict[int, str]] = {}
    for p in config.parameters:
        name, address = p.name, p.address
        exact = floats if p.type == "Float" else bools if p.type == "Bool" else None
        if exact is not None:
            for t in _suffixes(name):
                if t in wanted:
                    exact.setdefault(t, address)
        if p.type != "Bool":
            continue
        if name.endswith("Negative"):
            for t in _suffixes(name[: -len("Negative")]):
                if t in wanted:
                    negatives.setdefault(t, address)
        base = name.rstrip("0123456789")
        if base != name:
            weight = int(name[len(base) :])
            if weight > 0 and weight & (weight - 1) == 0:  # a power of two: bit log2(weight)
                for t in _suffixes(base):
                    if t in wanted:
                        bits.setdefault(t, {}).setdefault(weight.bit_length() - 1, address)
    out = []
    for parameter, t in targets:
        binding = Binding(parameter, floats.get(t, ""), tuple(sorted(bits.get(t, {}).items())),
                          negatives.get(t, ""), bools.get(t, ""))  # fmt: skip
        if binding.addresses:
            out.append(binding)
    return out
