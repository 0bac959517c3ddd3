"""The one command path of the live console: parse, validate, queue, apply between hops.

Every front-end (the page's HTTP POST and WebSocket, an OSC console) turns what it got
into a :class:`Command` with :func:`parse_json` or :func:`parse_osc`.  Both check
everything that can be checked before the hop loop sees it (the name, the type, the range,
the performer, the output, whether that performer's post chain has the stage the command
sets), so a malformed command is refused with one :class:`CommandError` line and changes
nothing.  Accepted commands wait in a :class:`CommandQueue` that the hop loop drains
between hops (:meth:`CommandQueue.apply`): the hop loop never takes a lock for them and
never waits on a front-end; a front-end may wait on its command's :class:`Ticket`.

Addresses (OSC; the same names in JSON):

* ``/a2e/<cmd>`` (every performer) and ``/a2e/<performer>/<cmd>`` (one, by name or index)
* ``/a2e/output/<output>/enabled`` (one output, by its id, see :func:`output_ids`)
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class CommandError(ValueError):
    """A command refused: one line saying what, where, what is allowed."""


@dataclass(frozen=True, slots=True)
class Spec:
    """What one command takes."""

    kind: str  #: "bool", "float", "int" or "str"
    low: float = 0.0
    high: float = 1.0
    per_performer: bool = True  #: False: applies to the whole bridge (no performer in the address)
    stage: str = ""  #: the post stage it needs in the performer's chain ("" = none)
    doc: str = ""


#: Every command; ``lookahead`` and ``identity`` ranges are narrowed by :class:`Capabilities`.
SPECS: dict[str, Spec] = {
    "mute": Spec("bool", doc="1: mouth and jaw ease to rest and stay (raw included); 0: back"),
    "gain": Spec("float", 0.0, 4.0, doc="mouth and jaw gain (1 = as the model says)"),
    "gate": Spec("float", -120.0, 0.0, stage="gate", doc="silence gate opening threshold, dBFS"),
    "smoothing": Spec("float", 0.0, 1.0, stage="smoothing", doc="smoothing strength 0 (none) .. 1 (heavy)"),
    "lookahead": Spec("int", 0, 30, doc="frames of lookahead (each adds 33 ms of latency)"),
    "identity": Spec("int", 0, 11, doc="LAM identity 0..11"),
    "blink": Spec("bool", stage="blink", doc="procedural blinks on/off"),
    "head": Spec("bool", stage="head", doc="head motion on/off"),
    "model": Spec("str", per_performer=False, doc="switch to this model preset (loaded in the background)"),
    "calibrate": Spec("float", 0.5, 30.0, doc="record this many seconds of silence now; applied when done"),
    "enabled": Spec("bool", per_performer=False, doc="output/<id>/enabled: frames go out to it or not"),
}


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What this bridge can be told: its performers, outputs, models and stages."""

    performers: tuple[str, ...]
    outputs: tuple[str, ...]  #: output ids (:func:`output_ids`)
    presets: tuple[str, ...]
    max_lookahead: int
    identity: bool  #: the model takes an identity
    #: per performer, the settable stages its chain has ("gate", "smoothing", "blink", "head")
    stages: tuple[frozenset[str], ...]


@dataclass(frozen=True, slots=True)
class Command:
    """One validated command: ``name`` with ``value`` for ``performers`` (indices) or ``output``."""

    name: str
    value: bool | float | int | str
    performers: tuple[int, ...] = ()
    output: int | None = None
    origin: str = ""  #: who sent it, for the log line ("http 127.0.0.1", "osc 127.0.0.1:53123")
    #: told of a refusal that comes later (a calibration of a noisy input); any thread
    notify: Callable[[str], None] | None = field(default=None, compare=False)

    def describe(self, names: Sequence[str], outputs: Sequence[str]) -> str:
        if self.output is not None:
            return f"output/{outputs[self.output]}/enabled {int(bool(self.value))}"
        value = int(self.value) if isinstance(self.value, bool) else self.value
        if self.performers and len(self.performers) < len(names):
            who = ", ".join(names[i] for i in self.performers)
            return f"{self.name} {value} for {who}"
        return f"{self.name} {value}"


def output_ids(names: Sequence[str]) -> tuple[str, ...]:
    """Short ids for outputs named like ``livelink 127.0.0.1:11111``: the kind when only one
    output has it, else ``kind-N`` (N counting that kind from 1)."""
    kinds = [n.split(" ", 1)[0] for n in names]
    seen: dict[str, int] = {}
    out = []
    for k in kinds:
        seen[k] = seen.get(k, 0) + 1
        out.append(k if kinds.count(k) == 1 else f"{k}-{seen[k]}")
    return tuple(out)


def _value(spec: Spec, name: str, raw: Any, caps: Capabilities) -> bool | float | int | str:
    """``raw`` checked against ``spec``: the typed value, or CommandError naming the range."""
    if spec.kind == "str":
        if not isinstance(raw, str) or not raw:
            raise CommandError(f"{name}: expected a preset name (text); allowed: {', '.join(caps.presets)}")
        if raw not in caps.presets:
            raise CommandError(f"{name}: unknown preset {raw!r}; allowed: {', '.join(caps.presets)}")
        return raw
    if isinstance(raw, str) or raw is None or not isinstance(raw, bool | int | float):
        what = "1 or 0" if spec.kind == "bool" else "a number"
        raise CommandError(f"{name}: expected {what}, got {type(raw).__name__} {raw!r}")
    x = float(raw)
    if not math.isfinite(x):
        raise CommandError(f"{name}: {raw!r} is not a finite number")
    if spec.kind == "bool":
        if x not in (0.0, 1.0):
            raise CommandError(f"{name}: expected 1 or 0 (on or off), got {raw!r}")
        return x == 1.0
    low, high = spec.low, spec.high
    if name == "lookahead":
        high = min(high, caps.max_lookahead)
    if spec.kind == "int" and x != int(x):
        raise CommandError(f"{name}: expected a whole number, got {raw!r}")
    if not low <= x <= high:
        return_range = f"{low:g}..{high:g}"
        raise CommandError(f"{name}: {raw!r} is out of range; allowed: {return_range}")
    return int(x) if spec.kind == "int" else x


def _performer(who: str | int | None, caps: Capabilities) -> tuple[int, ...]:
    n = len(caps.performers)
    if who is None or who == "all" or who == "":
        return tuple(range(n))
    if isinstance(who, int) and not isinstance(who, bool) and 0 <= who < n:
        return (who,)
    if isinstance(who, str):
        if who in caps.performers:
            return (caps.performers.index(who),)
        if who.isdigit() and int(who) < n:
            return (int(who),)
    known = ", ".join(caps.performers)
    raise CommandError(f"unknown performer {who!r}; known: {known} (or an index 0..{n - 1})")


def build(name: str, raw: Any, caps: Capabilities, *, performer: str | int | None = None,
          output: str | None = None, origin: str = "",
          notify: Callable[[str], None] | None = None) -> Command:  # fmt: skip
    """A command from its parts, fully checked (CommandError otherwise)."""
    if output is not None or name == "enabled":
        if output is None or name != "enabled":
            raise CommandError("outputs take only output/<id>/enabled")
        if performer is not None:
            raise CommandError("output/<id>/enabled is for the whole bridge, not one performer")
        if output not in caps.outputs:
            raise CommandError(f"unknown output {output!r}; known: {', '.join(caps.outputs) or 'none'}")
        value = _value(SPECS["enabled"], f"output/{output}/enabled", raw, caps)
        return Command("enabled", value, (), caps.outputs.index(output), origin, notify)
    spec = SPECS.get(name)
    if spec is None:
        known = ", ".join(n for n in SPECS if n != "enabled")
        raise CommandError(f"unknown command {name!r}; known: {known}, output/<id>/enabled")
    if not spec.per_performer and performer is not None:
        raise CommandError(f"{name} is for the whole bridge: send /a2e/{name}, not for one performer")
    rows = _performer(performer, caps) if spec.per_performer else ()
    value = _value(spec, name, raw, caps)
    if name == "identity" and not caps.identity:
        raise CommandError("identity: the running model takes no identity (only LAM models do)")
    if spec.stage:
        lacking = [caps.performers[i] for i in rows if spec.stage not in caps.stages[i]]
        if lacking:
            table = {"gate": "[post.gate] enabled", "smoothing": "[post.smoothing] kind",
                     "blink": "[post.blink] enabled", "head": "[post.head] enabled"}[spec.stage]  # fmt: skip
            raise CommandError(
                f"{name}: the {spec.stage} stage is off for {', '.join(lacking)} (--raw, or {table} in "
                "the config); turn it on in the config and restart to control it live"
            )
    return Command(name, value, rows, None, origin, notify)


def parse_osc(address: str, args: Sequence[Any], caps: Capabilities, origin: str = "",
              notify: Callable[[str], None] | None = None) -> Command:  # fmt: skip
    """``/a2e/<cmd> value``, ``/a2e/<performer>/<cmd> value``, ``/a2e/output/<id>/enabled value``."""
    parts = address.split("/")
    if len(parts) < 3 or parts[0] != "" or parts[1] != "a2e":
        raise CommandError(f"{address}: not a command address; use /a2e/<cmd> or /a2e/<performer>/<cmd>")
    if len(args) != 1:
        raise CommandError(f"{address}: expected exactly one argument, got {len(args)}")
    rest = parts[2:]
    if rest[0] == "output":
        if len(rest) != 3:
            raise CommandError(f"{address}: outputs are addressed as /a2e/output/<id>/enabled")
        return build(rest[2], args[0], caps, output=rest[1], origin=origin, notify=notify)
    if len(rest) == 1:
        return build(rest[0], args[0], caps, origin=origin, notify=notify)
    if len(rest) == 2:
        return build(rest[1], args[0], caps, performer=rest[0], origin=origin, notify=notify)
    raise CommandError(f"{address}: too many parts; use /a2e/<cmd> or /a2e/<performer>/<cmd>")


def parse_json(doc: Any, caps: Capabilities, origin: str = "",
               notify: Callable[[str], None] | None = None) -> Command:  # fmt: skip
    """``{"command": "gain", "value": 1.5, "performer": "alice"}`` (performer optional), or
    ``{"command": "output/livelink/enabled", "value": 0}``, or ``{"address": "/a2e/...", "value": v}``."""
    if not isinstance(doc, dict):
        raise CommandError('expected a JSON object like {"command": "mute", "value": 1}')
    unknown = set(doc) - {"command", "address", "value", "performer", "type", "id"}
    if unknown:
        fields = ", ".join(sorted(unknown))
        raise CommandError(f"unknown field(s) {fields}; allowed: command, value, performer")
    if "value" not in doc:
        raise CommandError('missing "value"')
    if "address" in doc:
        address = doc["address"]
        if not isinstance(address, str):
            raise CommandError('"address" must be text like "/a2e/mute"')
        return parse_osc(address, [doc["value"]], caps, origin, notify)
    name = doc.get("command")
    if not isinstance(name, str):
        raise CommandError('missing "command" (text, e.g. "mute")')
    performer = doc.get("performer")
    if performer is not None and not isinstance(performer, str | int):
        raise CommandError('"performer" must be a name or an index')
    if name.startswith("output/"):
        parts = name.split("/")
        if len(parts) != 3:
            raise CommandError(f"{name}: outputs are addressed as output/<id>/enabled")
        if performer is not None:
            raise CommandError("output/<id>/enabled is for the whole bridge, not one performer")
        return build(parts[2], doc["value"], caps, output=parts[1], origin=origin, notify=notify)
    return build(name, doc["value"], caps, performer=performer, origin=origin, notify=notify)


class Ticket:
    """A queued command's outcome: set once by the hop loop, awaited by any thread."""

    __slots__ = ("command", "error", "frame", "message", "_done")

    def __init__(self, command: Command) -> None:
        self.command = command
        self.error: str | None = None
        self.message = ""
        self.frame: int | None = None  #: first frame the command applies to (performer 0's numbering)
        self._done = threading.Event()

    def finish(self, message: str, frame: int | None, error: str | None = None) -> None:
        self.message, self.frame, self.error = message, frame, error
        self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()


Executor = Callable[[Command], str]


class CommandQueue:
    """Commands from any thread, applied by the hop loop between hops."""

    #: commands waiting beyond this are refused (a flood must not grow memory)
    MAX_PENDING = 256

    def __init__(self, names: Sequence[str], outputs: Sequence[str]) -> None:
        self._q: queue.SimpleQueue[Ticket] = queue.SimpleQueue()
        self.names, self.outputs = tuple(names), tuple(outputs)
        self.accepted = 0
        self.refused = 0

    def submit(self, command: Command) -> Ticket:
        ticket = Ticket(command)
        if self._q.qsize() >= self.MAX_PENDING:
            self.refused += 1
            ticket.finish("", None, "too many commands waiting; slow down")
            return ticket
        self._q.put(ticket)
        return ticket

    def waiting(self) -> bool:
        return not self._q.empty()

    def apply(self, execute: Executor, frame: int) -> None:
        """Run every waiting command (the hop loop, between hops); one log line each."""
        while True:
            try:
                ticket = self._q.get_nowait()
            except queue.Empty:
                return
            cmd = ticket.command
            what = cmd.describe(self.names, self.outputs)
            try:
                message = execute(cmd)
            except CommandError as e:
                self.refused += 1
                log.warning("command refused (%s): %s", cmd.origin or "?", e)
                ticket.finish("", frame, str(e))
                if cmd.notify is not None:
                    cmd.notify(str(e))
                continue
            self.accepted += 1
            log.info("command %s (%s) at frame %d%s", what, cmd.origin or "?", frame,
                     f": {message}" if message else "")  # fmt: skip
            ticket.finish(message, frame)
