"""Write docs/configuration.md from the config dataclasses (the schema is the code).

python scripts/gen_config_docs.py          # rewrite the file
python scripts/gen_config_docs.py --check  # exit 1 if it is out of date (the tests run this)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.config import _KIND_FIELDS, describe_schema  # noqa: E402

HEADER = """# Configuration reference

Generated from `bridge/config.py` by `python scripts/gen_config_docs.py`; a test fails when
it is out of date.  A config file is TOML; every key is optional.  Unknown keys, wrong types
and values outside the "allowed" range are refused with one line naming the file, the key
and the range.
`configs/default.toml` sets every top-level key to its default.

Outputs are a list of `[[output]]` tables; each `kind` accepts only its own keys (the
"kinds" column says which).  Command-line options override the file: `--input FILE`
(input.kind = "file"), `--device NAME` (input.kind = "device"), `--model PRESET|PATH`
(model.preset or model.path), `--fast` (input.realtime = false).

"""


PERFORMERS = """
## `[[performer]]`: several voices, several faces

Without `[[performer]]` the bridge has one performer, `main`, made of `[input]` and `[post]`,
and each output uses its own `subject`. With them, each entry is one performer:

| key | type | default | meaning |
|---|---|---|---|
| `name` | string | (required) | unique; names it in `output.performers`, logs, control addresses |
| `subject` | string | the name | the Live Link subject and the subject of every other output's frames |
| `identity` | integer | `model.identity` | LAM identity index 0..11 (0 = neutral) |
| `input` | table | `[input]` | the performer's input: any `[input]` key, laid over `[input]` |
| `post` | table | `[post]` | its post-processing: any `[post]` key (nested too), laid over `[post]` |

Performers with the same input (`kind = "device"` and the same `device`, or the same `file`)
share one capture stream: one PortAudio stream, one ring, each performer its `channel`; they
must agree on `samplerate`, `blocksize`, `ring_seconds` and `realtime`, and take different
channels. Every output serves every performer unless `performers = ["name", ...]` restricts
it; outputs whose receivers know no subject (`osc` with `scheme = "vmc"`, `vrchat`,
`ifacialmocap`, `console`) take exactly one.

```toml
[input]
kind = "device"
device = "Scarlett"

[[performer]]
name = "alice"
input = { channel = 0 }

[[performer]]
name = "bob"
identity = 3
input = { channel = 1 }
post = { smoothing = { kind = "ema", alpha = 0.5 } }

[[output]]
kind = "livelink"          # both subjects, alice and bob, on one port

[[output]]
kind = "vrchat"
performers = ["alice"]     # VRChat knows no subject: one performer
```
"""


def render() -> str:
    lines = [HEADER]
    section = None
    for key, typ, default, allowed, doc in describe_schema():
        table = key.rsplit(".", 1)[0]
        if table != section:
            section = table
            title = "[[output]]" if table == "output" else f"[{table}]"
            kinds = " kinds |" if table == "output" else ""
            rule = "---|" if table == "output" else ""
            head = f"| key | type | default | allowed | meaning |{kinds}\n|---|---|---|---|---|{rule}\n"
            lines.append(f"\n## `{title}`\n\n{head}")
        name = key.rsplit(".", 1)[1]
        doc = doc.replace("|", "\\|")
        row = f"| `{name}` | {typ.replace('|', '/')} | `{default}` | {allowed.replace('|', '/')} | {doc} |"
        if table == "output":
            row += " " + ", ".join(k for k, keys in _KIND_FIELDS.items() if name in keys) + " |"
        lines.append(row + "\n")
    lines.append(PERFORMERS)
    return "".join(lines)


def main() -> int:
    target = ROOT / "docs" / "configuration.md"
    text = render()
    if "--check" in sys.argv:
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            print(f"{target} is out of date: run python scripts/gen_config_docs.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
