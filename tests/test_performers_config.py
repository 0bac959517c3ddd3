"""``[[performer]]`` entries: parsed once, merged over ``[input]``/``[post]``, one line per mistake."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bridge.config import DEFAULT_PERFORMER, parse_config
from bridge.errors import BridgeError

ROOT = Path(__file__).resolve().parent.parent


def parse(text: str):
    return parse_config(tomllib.loads(text), "show.toml")


def refused(text: str) -> str:
    with pytest.raises(BridgeError) as e:
        parse(text)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("show.toml: ")
    return msg


def test_without_performers_the_input_is_the_one_performer() -> None:
    cfg = parse('[input]\nkind = "file"\nfile = "a.wav"\n[post]\nclamp = false\n')
    (only,) = cfg.cast
    assert only.name == DEFAULT_PERFORMER and only.subject is None  # outputs keep their own subject
    assert only.input == cfg.input and only.post == cfg.post
    assert all(cfg.served_by(o) == cfg.cast for o in cfg.outputs)


def test_performers_lay_their_tables_over_input_and_post() -> None:
    cfg = parse(
        '[input]\nkind = "device"\ndevice = "Scarlett"\nblocksize = 512\n'
        "[post.smoothing]\nkind = \"one_euro\"\nbeta = 0.5\n"
        '[[performer]]\nname = "alice"\ninput = { channel = 0 }\n'
        '[[performer]]\nname = "bob"\nsubject = "Bob"\nidentity = 3\ninput = { channel = 1 }\n'
        "post = { smoothing = { min_cutoff = 2.0 }, clamp = false }\n"
    )
    alice, bob = cfg.cast
    assert (alice.name, alice.subject, alice.identity) == ("alice", "alice", None)
    assert (bob.subject, bob.identity) == ("Bob", 3)
    assert (alice.input.device, alice.input.blocksize, alice.input.channel) == ("Scarlett", 512, 0)
    assert (bob.input.device, bob.input.blocksize, bob.input.channel) == ("Scarlett", 512, 1)
    # nested tables merge key by key: bob keeps [post.smoothing] beta, changes min_cutoff
    assert (bob.post.smoothing.beta, bob.post.smoothing.min_cutoff, bob.post.clamp) == (0.5, 2.0, False)
    assert (alice.post.smoothing.min_cutoff, alice.post.clamp) == (cfg.post.smoothing.min_cutoff, True)


def test_outputs_serve_everyone_unless_restricted() -> None:
    cfg = parse(
        '[[performer]]\nname = "a"\ninput = { kind = "file", file = "x.wav", channel = 0 }\n'
        '[[performer]]\nname = "b"\ninput = { kind = "file", file = "x.wav", channel = 1 }\n'
        '[[output]]\nkind = "livelink"\n'
        '[[output]]\nkind = "vrchat"\nperformers = ["b"]\n'
    )
    assert [[p.name for p in cfg.served_by(o)] for o in cfg.outputs] == [["a", "b"], ["b"]]


TWO = ('[[performer]]\nname = "a"\ninput = { kind = "file", file = "x.wav", channel = 0 }\n'
       '[[performer]]\nname = "b"\ninput = { kind = "file", file = "x.wav", channel = 1 }\n')  # fmt: skip


P = '[[performer]]\nname = "a"\n'


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[[performer]]\nsubject = "x"\n', "every performer needs a name"),
        ('[[performer]]\nname = "a/b"\n', "without '/'"),
        ('[[performer]]\nname = "a"\n[[performer]]\nname = "a"\n', "two performers are named 'a'"),
        (P + 'chanel = 1\n', "unknown key performer[a].chanel"),
        (P + 'channel = 1\n', "belongs in the performer's input table: input = { channel = 1 }"),
        (P + 'input = { chanel = 1 }\n', "performer[a].input.chanel"),
        (P + 'input = { channel = 300 }\n', "performer[a].input.channel = 300 is out of range"),
        (P + 'post = { gate = { open_db = 5 } }\n', "performer[a].post.gate.open_db = 5"),
        (P + 'identity = 12\n', "performer[a].identity = 12 must be an identity index"),
        (P + 'input = 3\n', "[performer[a].input] must be a table"),
        (TWO.replace("channel = 1", "channel = 0"), "performers 'a' and 'b' both take channel 0"),
        (TWO.replace("channel = 1 }", "channel = 1, blocksize = 512 }"), "input.blocksize to 256 and 512"),
        (TWO + '[[output]]\nkind = "osc"\nperformers = ["c"]\n', "names 'c', who is not a performer"),
        (TWO + '[[output]]\nkind = "vrchat"\n', "serves 2 performers, but its receivers know no subject"),
        (TWO + '[[output]]\nkind = "osc"\nscheme = "vmc"\n', 'add performers = ["a"]'),
        (TWO + '[[output]]\nkind = "console"\nperformers = []\n', "serves nobody"),
    ],
)
def test_each_mistake_is_one_line_naming_the_performer(text: str, needle: str) -> None:
    assert needle in refused(text)


def test_the_documented_example_parses() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    toml = doc.split("## `[[performer]]`")[1].split("```toml\n")[1].split("```")[0]
    cfg = parse(toml)
    assert [(p.name, p.input.channel) for p in cfg.cast] == [("alice", 0), ("bob", 1)]
    assert [[p.name for p in cfg.served_by(o)] for o in cfg.outputs] == [["alice", "bob"], ["alice"]]


def test_cli_says_a_performer_mistake_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "show.toml"
    cfg.write_text(TWO + '[[output]]\nkind = "ifacialmocap"\n', encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "bridge", "run", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "serves 2 performers" in lines[0] and "Traceback" not in proc.stderr


def test_the_readme_example_parses_with_the_default_outputs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```")[0] for b in readme.split("```toml\n")[1:]]
    cfg = parse(next(b for b in blocks if "[[performer]]" in b))
    assert [(p.name, p.subject, p.input.channel) for p in cfg.cast] == [("alice", "Alice", 0),
                                                                        ("bob", "Bob", 1)]  # fmt: skip
    assert all(len(cfg.served_by(o)) == 2 for o in cfg.outputs)  # Live Link, OSC arkit, ZeroMQ: subjects
