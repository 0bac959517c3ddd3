"""How close one model's outputs are to another's: the seed card's "Quantization Results" method.

For each output the models share (``blendshapes``, ``asr_logits``) and each
input of a fixed set -- speech-like signals, silence, white noise and any user
files, 1 s windows at 16 kHz -- two numbers over the whole output tensor:

* cosine similarity ``a.b / (|a| |b|)`` -- shape agreement;
* magnitude ratio ``|candidate| / |reference|`` -- the "subdued output" a
  cosine alone misses (the seed: naive fp16 passed cosine checks but moved
  less).

The table reports min and max of each over the inputs.  The verdict uses the
seed's pass bar for fp16: cosine > 0.9999 and ratio within 0.998-1.002 on
every output and input.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.errors import BridgeError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
WINDOW = 16_000  #: 1 s, the window the card's numbers are for
PASS_COSINE = 0.9999
PASS_RATIO = (0.998, 1.002)
#: Windows taken from each --audio file (evenly spread over it).
MAX_WINDOWS_PER_FILE = 8


@dataclass(slots=True)
class Probe:
    """One input window."""

    name: str
    audio: np.ndarray  #: float32 (WINDOW,)


def default_probes() -> list[Probe]:
    """The fixed inputs: speech-like at three seeds and offsets, a loud one, silence, white noise."""
    from bridge.signals import speech_like

    probes = []
    for seed, start in ((0, 0.0), (1, 1.5), (2, 3.0)):
        sig = speech_like(start + 1.0, seed=seed)
        probes.append(Probe(f"speech-{seed}", sig[-WINDOW:].astype(np.float32)))
    loud = speech_like(1.0, seed=3)
    probes.append(
        Probe("speech-loud", (loud * (0.95 / max(1e-6, float(np.abs(loud).max())))).astype(np.float32))
    )
    probes.append(Probe("silence", np.zeros(WINDOW, np.float32)))
    rng = np.random.default_rng(1234)
    probes.append(Probe("noise", (0.1 * rng.standard_normal(WINDOW)).astype(np.float32)))
    return probes


def file_probes(path: str | Path) -> list[Probe]:
    """Up to :data:`MAX_WINDOWS_PER_FILE` 1 s windows of an audio file, mono, resampled to 16 kHz."""
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise BridgeError(f"--audio file not found: {p}")
    try:
        data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as e:
        raise BridgeError(
            f"cannot read audio file {p}: {str(e).splitlines()[0]}; use WAV, FLAC or OGG"
        ) from None
    mono = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        import soxr

        mono = soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32)
    if mono.size < WINDOW:
        mono = np.pad(mono, (0, WINDOW - mono.size))
    n = min(MAX_WINDOWS_PER_FILE, mono.size // WINDOW)
    starts = np.linspace(0, mono.size - WINDOW, n).astype(int) if n > 1 else np.array([0])
    return [Probe(f"{p.name}@{s / SAMPLE_RATE:.1f}s", mono[s : s + WINDOW].copy()) for s in starts]


@dataclass(slots=True)
class Loaded:
    """A session and how to feed it."""

    path: Path
    session: Any
    provider: str  #: the provider that actually runs (session.get_providers()[0])
    audio_input: str
    identity_input: str | None
    outputs: list[str]
    seconds: float


def open_model(path: str | Path, providers: list[str], threads: int = 0) -> Loaded:
    """A plain ORT session (no optimised-graph cache: compare what the file says)."""
    import onnxruntime as ort

    from bridge.model.description import FAMILIES
    from bridge.model.files import check_model_files
    from bridge.model.runner import choose_providers

    p = Path(path)
    check_model_files(p)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    t0 = time.perf_counter()
    try:
        session = ort.InferenceSession(str(p), opts, providers=choose_providers(providers))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BridgeError(f"cannot load model {p}: {first}") from None
    seconds = time.perf_counter() - t0
    ins = {i.name: i for i in session.get_inputs()}
    audio = identity = None
    for fam in FAMILIES.values():
        if fam.audio_input in ins:
            audio = fam.audio_input
            identity = fam.identity_input if fam.identity_input in ins else None
            break
    if audio is None:
        rank2 = [i.name for i in ins.values() if len(i.shape) == 2 and "float" in i.type]
        if not rank2:
            raise BridgeError(f"model {p}: no [batch, samples] float audio input among {sorted(ins)}")
        audio = rank2[0]
        identity = next((n for n in rank2[1:] if ins[n].shape[1] == 12), None)
    other = set(ins) - {audio, identity}
    if other:
        raise BridgeError(f"model {p}: inputs {sorted(other)} are not audio/identity; cannot feed it")
    return Loaded(p, session, session.get_providers()[0], audio, identity,
                  [o.name for o in session.get_outputs()], seconds)  # fmt: skip


def run_probes(model: Loaded, probes: list[Probe], identity: int = 0) -> list[dict[str, np.ndarray]]:
    """Every output of ``model`` for every probe (batch 1)."""
    results = []
    for pr in probes:
        feeds = {model.audio_input: pr.audio.reshape(1, -1)}
        if model.identity_input:
            onehot = np.zeros((1, 12), np.float32)
            onehot[0, identity] = 1.0
            feeds[model.identity_input] = onehot
        try:
            outs = model.session.run(None, feeds)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BridgeError(f"model {model.path} failed on input {pr.name}: {first}") from None
        results.append({n: np.asarray(o) for n, o in zip(model.outputs, outs, strict=True)})
    return results


def cosine_and_ratio(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float]:
    """Cosine similarity and |cand|/|ref| of two tensors, in float64 (1, 1 when both are zero)."""
    a = np.asarray(ref, np.float64).ravel()
    b = np.asarray(cand, np.float64).ravel()
    if a.shape != b.shape:
        raise BridgeError(f"output shapes differ: {np.shape(ref)} vs {np.shape(cand)}")
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0, 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0, (math.inf if na == 0.0 else 0.0)
    return float(a @ b / (na * nb)), nb / na


@dataclass(slots=True)
class OutputStats:
    output: str
    cosine_min: float
    cosine_max: float
    ratio_min: float
    ratio_max: float
    max_abs_diff: float
    per_input: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def passes(self) -> bool:
        return (
            self.cosine_min > PASS_COSINE
            and PASS_RATIO[0] <= self.ratio_min <= self.ratio_max <= PASS_RATIO[1]
        )


@dataclass(slots=True)
class Comparison:
    """One candidate against the reference."""

    label: str
    path: str
    size_bytes: int
    provider: str
    outputs: list[OutputStats]
    missing_outputs: list[str] = field(default_factory=list)

    @property
    def passes(self) -> bool:
        return bool(self.outputs) and not self.missing_outputs and all(o.passes for o in self.outputs)


def compare_outputs(label: str, ref: Loaded, cand: Loaded, ref_out: list[dict[str, np.ndarray]],
                    cand_out: list[dict[str, np.ndarray]], probes: list[Probe]) -> Comparison:  # fmt: skip
    from bridge.model.files import file_size

    shared = [o for o in ref.outputs if o in cand.outputs]
    stats = []
    for name in shared:
        per = {}
        diff = 0.0
        for pr, r, c in zip(probes, ref_out, cand_out, strict=True):
            per[pr.name] = cosine_and_ratio(r[name], c[name])
            diff = max(diff, float(np.max(np.abs(r[name].astype(np.float64) - c[name].astype(np.float64)))))
        cos = [v[0] for v in per.values()]
        rat = [v[1] for v in per.values()]
        stats.append(OutputStats(name, min(cos), max(cos), min(rat), max(rat), diff, per))
    return Comparison(
        label, str(cand.path), file_size(cand.path), cand.provider, stats,
        [o for o in ref.outputs if o not in cand.outputs],
    )  # fmt: skip


def compare_models(
    reference: str | Path,
    candidates: list[str | Path],
    *,
    providers: list[str],
    audio_files: list[str] = (),
    threads: int = 0,
    labels: list[str] | None = None,
) -> tuple[Loaded, list[Comparison], list[Probe]]:
    """Load the reference once, then each candidate in turn (one session alive at a time)."""
    probes = default_probes()
    for f in audio_files:
        probes += file_probes(f)
    ref = open_model(reference, providers, threads)
    ref_out = run_probes(ref, probes)
    out = []
    for i, c in enumerate(candidates):
        cand = open_model(c, providers, threads)
        cand_out = run_probes(cand, probes)
        label = labels[i] if labels else Path(c).name
        out.append(compare_outputs(label, ref, cand, ref_out, cand_out, probes))
        del cand
    return ref, out, probes


def _range(lo: float, hi: float, digits: int) -> str:
    if lo == hi:
        return f"{lo:.{digits}f}"
    return f"{lo:.{digits}f}-{hi:.{digits}f}"


def format_table(ref: Loaded, comparisons: list[Comparison], probes: list[Probe]) -> str:
    """A Markdown table like the seed card's "Quantization Results", one row per candidate x output."""
    from bridge.model.files import file_size

    lines = [
        f"reference: {ref.path} ({file_size(ref.path) / 2**20:.1f} MiB) on {ref.provider}; "
        f"{len(probes)} inputs: {', '.join(p.name for p in probes)}",
        "",
        "| Model | Size | Provider | Output | Cosine vs ref (min-max) | worst 1-cos | Mag ratio (min-max) "
        "| Verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        for o in c.outputs:
            verdict = "Pass" if o.passes else "Fail"
            provider = c.provider.replace("ExecutionProvider", "")
            lines.append(
                f"| {c.label} | {c.size_bytes / 2**20:.1f} MiB | {provider} "
                f"| {o.output} | {_range(o.cosine_min, o.cosine_max, 6)} | {1 - o.cosine_min:.1e} | "
                f"{_range(o.ratio_min, o.ratio_max, 4)} | {verdict} |"
            )
        for m in c.missing_outputs:
            lines.append(f"| {c.label} | | | {m} | missing | | missing | Fail |")
    return "\n".join(lines)


def as_json(ref: Loaded, comparisons: list[Comparison], probes: list[Probe], **extra: Any) -> dict[str, Any]:
    return {
        "reference": {"path": str(ref.path), "provider": ref.provider},
        "inputs": [p.name for p in probes],
        "pass_bar": {"cosine_gt": PASS_COSINE, "ratio_within": list(PASS_RATIO)},
        "candidates": [{**asdict(c), "passes": c.passes} for c in comparisons],
        **extra,
    }


def write_json(path: str | Path, doc: dict[str, Any]) -> None:
    def default(o: Any) -> Any:
        if isinstance(o, Path):
            return str(o)
        if isinstance(o, np.floating | np.integer):
            return o.item()
        raise TypeError(type(o).__name__)

    try:
        Path(path).write_text(json.dumps(doc, indent=2, default=default) + "\n", encoding="utf-8")
    except OSError as e:
        raise BridgeError(f"cannot write {path}: {e.strerror or e}") from None


# -- the seed's table, reproduced on the synthetic model -------------------------------------------

#: name -> quantize_dynamic keyword arguments (the seed card's int8 strategies).
INT8_STRATEGIES: dict[str, dict[str, Any]] = {
    "int8 naive": {},
    "int8 exclude LayerNorm": {"exclude_layernorm": True},
    "int8 MatMul-only": {"op_types_to_quantize": ["MatMul"]},
    "int8 QUInt8": {"weight_type": "QUInt8"},
}


def _quantize(src: Path, dst: Path, options: dict[str, Any]) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from bridge.modeltools.graph import find_layernorm_chains

    kw = dict(options)
    if kw.pop("exclude_layernorm", False):
        model = onnx.load(str(src), load_external_data=False)
        kw["nodes_to_exclude"] = [n for c in find_layernorm_chains(model) for n in c.nodes]
    if "weight_type" in kw:
        kw["weight_type"] = getattr(QuantType, kw["weight_type"])
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp.onnx")
    quantize_dynamic(str(src), str(tmp), use_external_data_format=True, **kw)
    data_tmp = tmp.with_name(tmp.name + ".data")
    # quantize_dynamic names the data file after its output; rename both and fix the reference.
    model = onnx.load(str(tmp), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = dst.name + ".data"
    if data_tmp.exists():
        data_tmp.chmod(0o644)
        data_tmp.replace(dst.with_name(dst.name + ".data"))
    onnx.save_model(model, str(tmp))
    tmp.replace(dst)


def build_quality_models(size: str, workdir: Path, strategies: list[str], seed: int = 0,
                         say: Any = print) -> dict[str, Path]:  # fmt: skip
    """fp32 synthetic LAM + its surgical fp16, naive fp16 and int8 variants under ``workdir``."""
    from bridge.modeltools.convert import convert_file
    from bridge.modeltools.synth import synthesize

    fp32 = workdir / "fp32" / "model.onnx"
    if not fp32.is_file():
        say(f"building synthetic LAM ({size}, seed {seed}) -> {fp32}")
        synthesize("lam", size, fp32, seed=seed)
    out = {"fp32": fp32}
    for mode in ("surgical", "naive"):
        label = f"fp16 {mode}"
        if label not in strategies:
            continue
        dst = workdir / f"fp16-{mode}" / "model.onnx"
        if not dst.is_file():
            t0 = time.perf_counter()
            rep = convert_file(fp32, dst, mode)  # type: ignore[arg-type]
            say(f"{label}: {rep.describe()} ({time.perf_counter() - t0:.1f} s)")
        out[label] = dst
    for label, options in INT8_STRATEGIES.items():
        if label not in strategies:
            continue
        dst = workdir / label.replace(" ", "-").lower() / "model.onnx"
        if not dst.is_file():
            t0 = time.perf_counter()
            _quantize(fp32, dst, options)
            say(f"{label}: quantize_dynamic {options or '(defaults)'} ({time.perf_counter() - t0:.1f} s)")
        out[label] = dst
    return out


ALL_STRATEGIES = ["fp16 surgical", "fp16 naive", *INT8_STRATEGIES]


def quality_table(size: str, providers: list[str], workdir: Path, *, strategies: list[str] | None = None,
                  audio_files: list[str] = (), threads: int = 0, seed: int = 0,
                  say: Any = print) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """Build the variants, compare each against fp32 and return (Markdown table, JSON document)."""
    import onnx
    import onnxruntime as ort

    from bridge.modeltools.graph import find_layernorm_chains

    chosen = strategies or ALL_STRATEGIES
    unknown = [s for s in chosen if s not in ALL_STRATEGIES]
    if unknown:
        raise BridgeError(f"unknown strategies {unknown}; known: {', '.join(ALL_STRATEGIES)}")
    t0 = time.perf_counter()
    models = build_quality_models(size, workdir, chosen, seed, say)
    chains = len(find_layernorm_chains(onnx.load(str(models["fp32"]), load_external_data=False)))
    say(f"decomposed LayerNorm chains in the fp32 model: {chains}")
    labels = [s for s in chosen if s in models]
    ref, comps, probes = compare_models(
        models["fp32"], [models[s] for s in labels], providers=providers, audio_files=list(audio_files),
        threads=threads, labels=labels,
    )  # fmt: skip
    table = format_table(ref, comps, probes)
    doc = as_json(
        ref, comps, probes, size=size, seed=seed, layernorm_chains=chains, onnxruntime=ort.__version__,
        providers_requested=providers, seconds=round(time.perf_counter() - t0, 1),
    )  # fmt: skip
    return table, doc


__all__ = [
    "Comparison",
    "Probe",
    "compare_models",
    "cosine_and_ratio",
    "default_probes",
    "file_probes",
    "format_table",
    "quality_table",
]
