"""``a2e-bridge models ...``: build, fetch, inspect, convert and compare model files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

from bridge.cli.common import friendly
from bridge.errors import BridgeError

#: ONNX Runtime starts every thread it is given: more than 4 per core only starves the machine.
_THREADS = click.IntRange(0, 4 * (os.cpu_count() or 1))

_PROVIDERS = {"cuda", "tensorrt", "cpu", "coreml", "dml", "rocm", "openvino"}


def _providers(text: str) -> list[str]:
    wanted = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in wanted if p not in _PROVIDERS]
    if bad or not wanted:
        raise BridgeError(f"--providers {text!r}: use a comma list of {', '.join(sorted(_PROVIDERS))}")
    return wanted


def _model_path(arg: str) -> Path:
    """A path, or a preset name whose files are in the cache (built ones are built)."""
    from bridge.model.hub import locate_model
    from bridge.model.presets import PRESETS

    if arg in PRESETS and not Path(arg).exists():
        return locate_model(PRESETS[arg])
    p = Path(arg).expanduser()
    if not p.is_file():
        raise BridgeError(f"model file not found: {p} (give an .onnx path or a preset: {', '.join(PRESETS)})")
    return p


def _human(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):  # binary units: the model card's "192 MB" is 192 MiB
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@click.group()
def models() -> None:
    """Model files: fetch, list, inspect, convert, compare, build synthetic ones."""


@models.command("synth")
@click.option("--kind", type=click.Choice(["lam", "wav2arkit"]), default="lam", show_default=True)
@click.option("--size", type=click.Choice(["tiny", "full", "demo"]), default="tiny", show_default=True,
              help="tiny/full: random weights; demo: the face follows the voice (--model synthetic)")
@click.option("--oracle", is_flag=True, help="build the oracle test model instead")
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="graph file to write (weights go to OUT.data)",
)
@click.option("--seed", type=int, default=0, show_default=True)
@friendly
def models_synth(kind: str, size: str, oracle: bool, out: str, seed: int) -> None:
    """Build a synthetic model with the real model's interface (no download needed)."""
    from bridge.modeltools.graph import count_parameters, find_layernorm_chains
    from bridge.modeltools.synth import synthesize

    click.echo(f"building {'oracle ' if oracle else ''}{kind} ({size}) ...", err=True)
    if size == "demo" and not oracle:
        from bridge.modeltools.demo import synthesize_demo

        path = synthesize_demo(kind, out)
    else:
        path = synthesize(kind, size, out, oracle=oracle, seed=seed)
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    click.echo(
        f"wrote {path} ({count_parameters(m) / 1e6:.1f} M parameters, "
        f"{len(find_layernorm_chains(m))} decomposed LayerNorm chains)"
    )


@models.command("fetch")
@click.argument("presets", nargs=-1, metavar="[PRESET]...")
@click.option("--force", is_flag=True, help="download again even if the cached files check out")
@click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="resume attempts within this run after a cut connection")  # fmt: skip
@click.option("--quiet", is_flag=True, help="no progress bars")
@friendly
def models_fetch(presets: tuple[str, ...], force: bool, retries: int, quiet: bool) -> None:
    """Download a hub model (default: lam) into the cache, resuming and checking sha256.

    Honours HF_ENDPOINT (a mirror), HF_HUB_OFFLINE (no network: files already in
    the huggingface_hub cache are still taken) and HF_TOKEN.
    """
    from bridge.model.hub import fetch_preset, repo_dir
    from bridge.model.presets import get_preset

    for name in presets or ("lam",):
        preset = get_preset(name)
        click.echo(f"{preset.name}: {preset.repo} -> {repo_dir(str(preset.repo))}", err=True)
        done = fetch_preset(
            preset, force=force, progress=not quiet, retries=retries,
            report=lambda msg: click.echo(f"  {msg}", err=True),
        )  # fmt: skip
        total = sum(f.size for f in done)
        click.echo(f"{preset.name}: ready, {len(done)} files, {_human(total)}: {done[0].path}")
        if preset.warning:
            click.echo(f"{preset.name}: note: {preset.warning}", err=True)


@models.command("list")
@click.option("--verify", is_flag=True, help="re-hash cached files (slow for big models)")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@friendly
def models_list(verify: bool, as_json: bool) -> None:
    """Presets, what is cached, sizes and verification state."""
    from bridge.model.files import file_size
    from bridge.model.hub import preset_state
    from bridge.model.presets import PRESETS, home_dir
    from bridge.model.session_cache import cache_root

    rows = []
    for p in PRESETS.values():
        if p.synthetic is not None:
            built = home_dir() / "synthetic" / f"{p.name}.onnx"
            size = file_size(built) if built.is_file() else None
            state = "built" if built.is_file() else "built on first use"
            rows.append({"preset": p.name, "source": "synthetic", "expected": "-", "cached": size,
                         "state": state, "summary": p.summary, "files": []})  # fmt: skip
            continue
        states = preset_state(p, full=verify)
        cached = sum(s.size or 0 for s in states if s.state not in ("missing", "partial"))
        kinds = {s.state for s in states}
        if kinds <= {"missing"}:
            state = "not fetched"
        elif "corrupt" in kinds:
            state = "CORRUPT: " + "; ".join(f"{s.file} {s.detail}" for s in states if s.state == "corrupt")
        elif kinds & {"missing", "partial"}:
            parts = [f"{s.file} {'partial ' + _human(s.size) if s.state == 'partial' else 'missing'}"
                     for s in states if s.state in ("missing", "partial")]  # fmt: skip
            state = "incomplete: " + ", ".join(parts)
        elif kinds == {"verified"}:
            state = "cached, sha256 verified"
        elif "unrecorded" in kinds:
            state = "cached by hand (sha256 recorded on first use)"
        else:
            state = "cached (sizes match the manifest; --verify re-hashes)"
        rows.append({
            "preset": p.name, "source": p.repo, "expected": " + ".join(p.sizes) or "-",
            "cached": cached or None, "state": state, "summary": p.summary,
            "files": [{"file": s.file, "state": s.state, "size": s.size, "detail": s.detail} for s in states],
        })  # fmt: skip
    ort_cache = cache_root()
    ort_bytes = (
        sum(f.stat().st_size for f in ort_cache.rglob("*") if f.is_file()) if ort_cache.is_dir() else 0
    )
    if as_json:
        doc = {
            "home": str(home_dir()),
            "presets": rows,
            "ort_cache": {"path": str(ort_cache), "bytes": ort_bytes},
        }
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"model cache: {home_dir()}")
    w = max(len(r["preset"]) for r in rows)
    for r in rows:
        click.echo(
            f"  {r['preset']:<{w}}  {str(r['source']):<24} card {r['expected']:<18} "
            f"cached {_human(r['cached']):>9}  {r['state']}"
        )
    click.echo(
        f"optimised-graph cache: {ort_cache} ({_human(ort_bytes)}; "
        "`a2e-bridge models clear-cache` empties it)"
    )


@models.command("info")
@click.argument("model", metavar="PATH|PRESET")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@friendly
def models_info(model: str, as_json: bool) -> None:
    """Inputs, outputs, opset, external data, parameters, LayerNorm chains, weight precision."""
    from dataclasses import asdict

    from bridge.modeltools.inspect import format_info, inspect_model

    info = inspect_model(_model_path(model))
    if as_json:
        click.echo(json.dumps(asdict(info), indent=2, default=str))
    else:
        click.echo(format_info(info))


@models.command("convert")
@click.option("--fp16", "mode", type=click.Choice(["surgical", "naive"]), required=True,
              help="surgical: LayerNorm chains stay fp32; naive: everything fp16")  # fmt: skip
@click.argument("src", metavar="IN", type=click.Path(dir_okay=False))
@click.argument("dst", metavar="OUT", type=click.Path(dir_okay=False))
@friendly
def models_convert(mode: str, src: str, dst: str) -> None:
    """Convert an fp32 ONNX model to fp16; OUT gets its weights in OUT.data."""
    from bridge.model.files import file_size
    from bridge.modeltools.convert import convert_file

    click.echo(f"converting {src} ({mode} fp16) ...", err=True)
    report = convert_file(src, dst, mode)  # type: ignore[arg-type]
    click.echo(f"wrote {dst} ({_human(file_size(dst))}, was {_human(file_size(src))}): {report.describe()}")


@models.command("compare")
@click.argument("reference", metavar="REF")
@click.argument("candidates", nargs=-1, required=True, metavar="CANDIDATE...")
@click.option("--audio", "audio", multiple=True, type=click.Path(dir_okay=False),
              help="also compare on 1 s windows of this file (repeatable)")  # fmt: skip
@click.option("--providers", default="cpu", show_default=True, help="e.g. cuda,cpu")
@click.option("--threads", type=_THREADS, default=0, help="intra-op threads (0: ORT default)")
@click.option("--json", "json_path", metavar="OUT", help="write the full results here")
@friendly
def models_compare(reference: str, candidates: tuple[str, ...], audio: tuple[str, ...], providers: str,
                   threads: int, json_path: str | None) -> None:  # fmt: skip
    """Cosine similarity and magnitude ratio of each CANDIDATE's outputs against REF's."""
    from bridge.modeltools.compare import as_json, compare_models, format_table, write_json

    ref, comps, probes = compare_models(
        _model_path(reference), [_model_path(c) for c in candidates], providers=_providers(providers),
        audio_files=list(audio), threads=threads,
    )  # fmt: skip
    click.echo(format_table(ref, comps, probes))
    if json_path:
        write_json(json_path, as_json(ref, comps, probes))
    if not all(c.passes for c in comps):
        click.echo("(Fail = outside the fp16 bar: cosine > 0.9999 and magnitude ratio 0.998-1.002)", err=True)


@models.command("quality-table")
@click.option("--size", type=click.Choice(["tiny", "full"]), default="full", show_default=True)
@click.option("--providers", default="cpu", show_default=True, help="e.g. cuda,cpu")
@click.option(
    "--strategy", "strategies", multiple=True, help="only these rows (repeatable), e.g. 'fp16 surgical'"
)
@click.option("--audio", multiple=True, type=click.Path(dir_okay=False), help="extra audio file (repeatable)")
@click.option("--workdir", type=click.Path(file_okay=False), help="where the variants are built (reused)")
@click.option("--threads", type=_THREADS, default=0, help="intra-op threads (0: ORT default)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", metavar="OUT", help="write the full results here")
@friendly
def models_quality_table(
    size: str,
    providers: str,
    strategies: tuple[str, ...],
    audio: tuple[str, ...],
    workdir: str | None,
    threads: int,
    seed: int,
    json_path: str | None,
) -> None:
    """Reproduce the seed card's quantisation table on the synthetic LAM: fp16 and int8 vs fp32."""
    from bridge.model.presets import home_dir
    from bridge.modeltools.compare import quality_table, write_json

    work = Path(workdir) if workdir else home_dir() / "quality" / f"{size}-seed{seed}"
    table, doc = quality_table(
        size, _providers(providers), work, strategies=list(strategies) or None, audio_files=list(audio),
        threads=threads, seed=seed, say=lambda m: click.echo(m, err=True),
    )  # fmt: skip
    click.echo(table)
    click.echo(f"providers that ran: reference {doc['reference']['provider']}; " + ", ".join(
        f"{c['label']} {c['provider']}" for c in doc["candidates"]))  # fmt: skip
    if json_path:
        write_json(json_path, doc)


@models.command("start-time")
@click.argument("model", metavar="PATH|PRESET")
@click.option("--providers", default="cpu", show_default=True, help="e.g. cuda,cpu")
@click.option("--threads", type=_THREADS, default=0, help="intra-op threads (0: one per core)")
@click.option("--json", "json_path", metavar="OUT", help="write the results here")
@friendly
def models_start_time(model: str, providers: str, threads: int, json_path: str | None) -> None:
    """Session start, measured in fresh processes: no cache, first start (stores), second (cached)."""
    from bridge.model.runner import choose_providers
    from bridge.model.session_cache import forget_model

    path = _model_path(model).resolve()
    chosen = choose_providers(_providers(providers))
    forget_model(path, chosen, threads)
    results = {}
    for label, use_cache in (
        ("no cache", False),
        ("first (optimise + store)", True),
        ("second (cached)", True),
    ):
        code = (
            "import json,sys; from bridge.model.session_cache import measure_start; "
            f"print(json.dumps(measure_start({str(path)!r}, {chosen!r}, {threads}, {use_cache})))"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=str(Path(__file__).resolve().parents[2]))  # fmt: skip
        if proc.returncode != 0:
            raise BridgeError(
                f"start-time: the {label} run failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
            )
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results[label] = r
        mem = "n/a"
        if r["peak_rss_delta"] is not None:
            mem = f"+{r['peak_rss_delta'] / 2**20:.0f} MB (heap +{r['peak_anon_delta'] / 2**20:.0f} MB)"
        click.echo(
            f"{label:<26} session {r['seconds']:.2f} s + hash {r['hash_seconds']:.2f} s, "
            f"peak RSS {mem}, cache {r['cache']}, provider {r['provider']}"
        )
    first = results["first (optimise + store)"]
    second = results["second (cached)"]
    plain = results["no cache"]
    click.echo(
        f"speed-up of the cached start over an uncached one: "
        f"{(plain['seconds'] + plain['hash_seconds']) / (second['seconds'] + second['hash_seconds']):.2f}x "
        f"(session creation alone {plain['seconds'] / second['seconds']:.2f}x)"
    )
    if json_path:
        Path(json_path).write_text(
            json.dumps({"model": str(path), "runs": results, "first": first}, indent=2)
        )


@models.command("clear-cache")
@friendly
def models_clear_cache() -> None:
    """Delete the optimised-graph cache (ONNX Runtime rebuilds entries on the next start)."""
    from bridge.model.session_cache import cache_root, clear_cache

    n = clear_cache()
    click.echo(f"removed {n} optimised-graph cache entries from {cache_root()}")
