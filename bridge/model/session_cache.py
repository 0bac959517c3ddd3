"""Creating ONNX Runtime sessions: measured, and with the optimised graph kept on disk.

ONNX Runtime spends a session's start in graph optimisation and, on CPU, in
pre-packing the weights of every MatMul for MLAS (measured here: packing is
most of it); memory peaks there too (the seed card: 750-950 MB for LAM in the
browser).  Both results only depend on the model bytes, the onnxruntime
version, the execution providers, the optimisation level and the CPU, so the
first start writes them out (``SessionOptions.optimized_model_filepath`` plus
``session.save_external_prepacked_constant_initializers``) and later starts
load that file with optimisation switched off and the packed weights mapped
from disk.

Cache entries live in ``home_dir()/ort-cache/<key>/`` (``model.onnx`` +
``model.onnx.data`` + ``meta.json``) and land atomically: ORT writes into a
temporary folder that is renamed into place only after the session built.

An entry is checked before ONNX Runtime sees it: ``meta.json`` keeps each
file's size and sha256 (taken when the entry was written) and its identity
(inode, mtime, ctime).  A file whose identity is unchanged has not been written
to since it was hashed -- ctime cannot be set back from user space -- so
the common start costs a ``stat`` per file; any other file is hashed again
(sha256 runs at ~1.6 GB/s here: 0.45 s for the 742 MB entry of a
wav2vec2-base-sized model).  Small files (the graph) are always hashed.  A
damaged entry (a flipped byte makes every output NaN) is dropped, rebuilt and
said once.  An entry that is intact but fails to load is rebuilt once
(``<key>.failed``); the rebuilt entry is then loaded to prove it, and if that
fails too the cache is switched off for the key (``<key>.off``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.errors import BridgeError
from bridge.model.files import file_sha256, forget_hashes

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_GRAPH = "model.onnx"
_DATA = "model.onnx.data"
_META = "meta.json"


# -- hashing ---------------------------------------------------------------------------------------

_MEMO_FILE = "hashes.json"
_MEMO_MAX = 256


def _stat_key(p: Path) -> str:
    st = p.stat()
    return f"{p.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def _cached_sha256(p: Path, memo: dict[str, str]) -> str:
    """sha256 via the on-disk memo when the file's identity and times are unchanged.

    Only for the cache *key*: hashing 400 MB costs as much as the start it
    would save.  A file rewritten in place gets a new mtime/ctime, hence a new
    hash.  Integrity checks of downloads (:mod:`bridge.model.hub`) always re-hash.
    """
    key = _stat_key(p)
    digest = memo.get(key)
    if digest is None:
        digest = memo[key] = file_sha256(p)
    return digest


def model_digest(path: str | Path, memo: dict[str, str] | None = None) -> str:
    """sha256 over the graph file and every external-data file it uses."""
    from bridge.model.files import check_model_files

    p = Path(path)
    memo = {} if memo is None else memo
    h = hashlib.sha256(_cached_sha256(p, memo).encode())
    for f in sorted(check_model_files(p), key=lambda f: f.location):
        h.update(f.location.encode() + b"\0" + _cached_sha256(f.path, memo).encode())
    return h.hexdigest()


def _load_memo(base: Path) -> dict[str, str]:
    try:
        data = json.loads((base / _MEMO_FILE).read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_memo(base: Path, memo: dict[str, str]) -> None:
    items = list(memo.items())[-_MEMO_MAX:]
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".{_MEMO_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(dict(items), indent=0) + "\n", encoding="utf-8")
        os.replace(tmp, base / _MEMO_FILE)
    except OSError as e:
        log.debug("hash memo not saved: %s", e)


def _cpu_fingerprint() -> str:
    """CPU model and ISA flags: ORT_ENABLE_ALL may write layouts for this CPU only."""
    text = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    text += line
                if line.strip() == "":
                    break  # the first processor is enough
    except OSError:
        pass
    return hashlib.sha256((platform.machine() + text).encode()).hexdigest()[:16]


def cache_key(digest: str, providers: Iterable[str], opt_level: int) -> dict[str, Any]:
    """What an optimised graph depends on; the cache key is its hash."""
    import onnxruntime as ort

    return {
        "format": CACHE_FORMAT,
        "model_sha256": digest,
        "onnxruntime": ort.__version__,
        "providers": list(providers),
        "graph_optimization_level": int(opt_level),
        "cpu": _cpu_fingerprint(),
    }


def cache_root() -> Path:
    from bridge.model.presets import home_dir

    return home_dir() / "ort-cache"


# -- memory ----------------------------------------------------------------------------------------


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rss_bytes() -> tuple[int, int] | None:
    """(resident, resident anonymous) bytes: statm's resident minus its file-backed/shared pages."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            fields = f.read().split()
        page = os.sysconf("SC_PAGE_SIZE")
        return int(fields[1]) * page, (int(fields[1]) - int(fields[2])) * page
    except (OSError, ValueError, IndexError):
        return None


class PeakRss:
    """Peak resident memory above the starting point while the block runs (Linux ``/proc``).

    Samples ``/proc/self/statm`` every ``interval`` seconds and also reads the
    kernel's high-water mark (``VmHWM``), which catches short peaks between
    samples whenever they exceed everything before.  The high-water mark is
    never reset (that would corrupt the process's ``ru_maxrss`` for others).
    ``delta`` is all resident memory (file pages included: weights memory-mapped
    from disk count, though the OS may drop them); ``anon_delta`` is heap only
    (sampled).  Both stay None where ``/proc`` is missing.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.delta: int | None = None
        self.anon_delta: int | None = None
        self.baseline: tuple[int, int] | None = None
        self._peak = (0, 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _take(self) -> None:
        now = _rss_bytes()
        if now is not None:
            self._peak = (max(self._peak[0], now[0]), max(self._peak[1], now[1]))

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def __enter__(self) -> PeakRss:
        self.baseline = _rss_bytes()
        self._hwm_before = _proc_status_kb("VmHWM")
        if self.baseline is not None:
            self._peak = self.baseline
            self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.baseline is None:
            return
        self._take()
        peak = self._peak[0]
        hwm = _proc_status_kb("VmHWM")
        if hwm is not None and self._hwm_before is not None and hwm > self._hwm_before:
            peak = max(peak, hwm * 1024)
        self.delta = peak - self.baseline[0]
        self.anon_delta = self._peak[1] - self.baseline[1]


# -- entry integrity -------------------------------------------------------------------------------

#: Files up to this size are hashed on every use (the graph: a fraction of a millisecond).
ALWAYS_HASH_BYTES = 16 << 20


def _identity(st: os.stat_result) -> list[int]:
    """What changes whenever a file is written, renamed over or replaced (ctime cannot be set back)."""
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _entry_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != _META)


def _digests(folder: Path) -> dict[str, dict[str, Any]]:
    """Per file of a just-written entry: size, sha256 and identity, for ``meta.json``."""
    out = {}
    for p in _entry_files(folder):
        st = p.stat()
        out[p.name] = {"size": st.st_size, "sha256": file_sha256(p), "identity": _identity(st)}
    return out


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    tmp = folder / f".{_META}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / _META)


def check_entry(folder: Path) -> str | None:
    """Why the cache entry in ``folder`` must not be used (one phrase), or None when it is intact.

    Files whose identity is unchanged since they were hashed are trusted;
    others (and every small file) are hashed again.  A file that hashes right
    under a new identity (copied, touched) gets the new identity on record.
    """
    try:
        meta = json.loads((folder / _META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"{_META} unreadable ({e})"
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict) or _GRAPH not in files:
        return "no digest on record: written by an older bridge"
    refreshed = False
    for name, rec in files.items():
        p = folder / name
        try:
            st = p.stat()
        except OSError:
            return f"{name} is missing"
        if st.st_size != rec.get("size"):
            return f"{name} has {st.st_size} bytes, {rec.get('size')} were written"
        if st.st_size > ALWAYS_HASH_BYTES and _identity(st) == rec.get("identity"):
            continue
        digest = file_sha256(p)
        if digest != rec.get("sha256"):
            return f"{name} has sha256 {digest[:12]}..., {str(rec.get('sha256'))[:12]}... was written"
        if _identity(st) != rec.get("identity"):
            rec["identity"], refreshed = _identity(st), True
    if refreshed:
        with contextlib.suppress(OSError):
            _write_meta(folder, meta)
    return None


# -- sessions --------------------------------------------------------------------------------------


@dataclass(slots=True)
class SessionStart:
    """A created session and what creating it cost."""

    session: Any  #: onnxruntime.InferenceSession
    seconds: float  #: wall time of creating the session (ORT only)
    hash_seconds: float  #: time spent hashing: the model files for the cache key, the entry's files
    peak_rss_delta: int | None  #: bytes above the RSS before creation, at the peak
    cache: str  #: "hit", "stored", "off" (not asked for), "disabled" (marked off) or "unavailable"
    cache_path: Path | None = None
    peak_anon_delta: int | None = None  #: like peak_rss_delta, anonymous (heap) memory only

    def describe(self) -> str:
        mem = ""
        if self.peak_rss_delta is not None:
            mem = f", peak RSS +{self.peak_rss_delta / 2**20:.0f} MB"
        if self.peak_anon_delta is not None:
            mem += f" (heap +{self.peak_anon_delta / 2**20:.0f} MB)"
        return f"session created in {self.seconds:.2f} s{mem} (optimised-graph cache: {self.cache})"


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _create(path: Path, opts: Any, providers: list[str]) -> tuple[Any, float, PeakRss]:
    import onnxruntime as ort

    with PeakRss() as mem:
        t0 = time.perf_counter()
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        seconds = time.perf_counter() - t0
    return session, seconds, mem


def _entry(path: Path, make_options: Callable[[], Any], providers: list[str],
           root: Path | None = None, remember: bool = True) -> tuple[dict[str, Any], Path]:  # fmt: skip
    """The cache key document and entry folder for a model + options + providers."""
    base = root if root is not None else cache_root()
    memo = _load_memo(base)
    before = dict(memo)
    digest = model_digest(path, memo)
    if remember and memo != before:
        _save_memo(base, memo)
    level = make_options().graph_optimization_level
    key_doc = cache_key(digest, providers, int(level))
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:32]
    return key_doc, base / key


def session_options(threads: int = 0) -> Any:
    """The runner's session options (also what its optimised-graph cache entries are made with)."""
    import onnxruntime as ort

    cores = os.cpu_count() or 1
    if not 0 <= threads <= 4 * cores:  # ORT would try to start them all (config.py bounds this too)
        raise BridgeError(f"model threads = {threads}: allowed 0..{4 * cores} (4 x the {cores} cores here)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or cores
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning worker threads steal the core the audio callback needs (models.md).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return opts


def create_session(
    path: str | Path,
    make_options: Callable[[], Any],
    providers: list[str],
    *,
    use_cache: bool = True,
    root: Path | None = None,
) -> SessionStart:
    """A session for ``path``; with ``use_cache``, via the optimised-graph cache.

    ``make_options`` returns fresh ``SessionOptions`` (threads etc.); its
    optimisation level is the one the cache entry is made at.  Errors from ONNX
    Runtime propagate as raised: the caller turns them into one line.  The
    cache never makes a start fail: an entry that does not load is rebuilt
    once, and a key whose entries keep failing (or whose provider cannot save
    an optimised graph, e.g. compiled TensorRT nodes) is marked ``<key>.off``
    and started without the cache from then on.
    """
    import onnxruntime as ort

    path = Path(path)

    def plain(cache: str, hash_seconds: float = 0.0) -> SessionStart:
        session, seconds, peak = _create(path, make_options(), providers)
        return SessionStart(
            session, seconds, hash_seconds, peak.delta, cache, peak_anon_delta=peak.anon_delta
        )

    if not use_cache:
        return plain("off")
    t0 = time.perf_counter()
    try:
        key_doc, entry = _entry(path, make_options, providers, root)
    except OSError as e:
        log.debug("no optimised-graph cache for %s: %s", path, e)
        return plain("unavailable")
    base, key = entry.parent, entry.name
    off, failed = base / f"{key}.off", base / f"{key}.failed"
    if off.exists():
        return plain("disabled", time.perf_counter() - t0)

    if entry.is_dir() and (damage := check_entry(entry)) is not None:
        _remove(entry)  # never hand ONNX Runtime a damaged entry: a flipped byte makes every output NaN
        log.warning(
            "optimised-graph cache entry %s does not check out (%s); dropped, optimising again", entry, damage
        )
    hash_seconds = time.perf_counter() - t0
    if (entry / _META).is_file() and (entry / _GRAPH).is_file():
        opts = make_options()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session, seconds, peak = _create(entry / _GRAPH, opts, providers)
            failed.unlink(missing_ok=True)
            return SessionStart(
                session, seconds, hash_seconds, peak.delta, "hit", entry, peak_anon_delta=peak.anon_delta
            )
        except Exception as e:  # intact bytes ONNX Runtime will not load (checked above)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            _remove(entry)
            if failed.exists():  # failed before, and no rebuilt entry has proved itself since
                _mark(off, f"optimised graph does not load: {first}")
                log.warning("optimised-graph cache off for %s: its entries do not load (%s)", path, first)
                return plain("disabled", hash_seconds)
            _mark(failed, first)
            log.warning("optimised-graph cache entry %s did not load (%s); optimising again", entry, first)

    tmp = base / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        _remove(tmp)
        tmp.mkdir(parents=True)
    except OSError as e:
        log.debug("cannot write the optimised-graph cache in %s: %s", base, e)
        return plain("unavailable", hash_seconds)
    opts = make_options()
    opts.optimized_model_filepath = str(tmp / _GRAPH)
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", _DATA)
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    # Also keep MLAS's pre-packed weights: on CPU, packing (not graph optimisation) is most of a
    # start; the next start memory-maps them instead (onnxruntime >= 1.20; ignored before).
    opts.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    try:
        session, seconds, peak = _create(path, opts, providers)
    except Exception as e:
        _remove(tmp)
        # Maybe only saving failed (compiled EP nodes cannot be serialised): try once without.
        start = plain("disabled", hash_seconds)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        _mark(off, f"saving the optimised graph failed: {first}")
        log.info("optimised-graph cache off for %s: saving failed (%s)", path, first)
        return start
    except BaseException:
        _remove(tmp)
        raise
    if not (tmp / _GRAPH).is_file():
        log.debug("onnxruntime wrote no optimised graph for %s", path)
        _remove(tmp)
        return SessionStart(
            session, seconds, hash_seconds, peak.delta, "unavailable", peak_anon_delta=peak.anon_delta
        )
    t1 = time.perf_counter()
    try:
        meta = {**key_doc, "source": str(path.resolve()), "created": time.time(), "seconds": seconds,
                "files": _digests(tmp)}  # fmt: skip
        (tmp / _META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.rename(tmp, entry)  # atomic; fails if another process got there first
        cache = "stored"
    except OSError as e:
        log.debug("optimised-graph cache entry %s not stored: %s", entry, e)
        _remove(tmp)
        cache = "unavailable"
    hash_seconds += time.perf_counter() - t1
    if cache == "stored" and failed.exists():
        cache = _prove_rebuilt(entry, make_options, providers, failed, off, path)
    return SessionStart(
        session, seconds, hash_seconds, peak.delta, cache, entry, peak_anon_delta=peak.anon_delta
    )


def _prove_rebuilt(
    entry: Path, make_options: Callable[[], Any], providers: list[str], failed: Path, off: Path, source: Path
) -> str:
    """After a load failure, load the rebuilt entry once: success clears ``.failed``, failure marks off.

    Without this a key whose saved graphs never load would be optimised and
    written again on every start; with it a later, unrelated failure gets its
    own rebuild instead of switching the cache off.
    """
    import onnxruntime as ort

    opts = make_options()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        _create(entry / _GRAPH, opts, providers)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        _remove(entry)
        _mark(off, f"rebuilt optimised graph does not load: {first}")
        log.warning("optimised-graph cache off for %s: its rebuilt entry does not load (%s)", source, first)
        return "disabled"
    failed.unlink(missing_ok=True)
    return "stored"


def _mark(marker: Path, reason: str) -> None:
    with contextlib.suppress(OSError):
        marker.write_text(json.dumps({"reason": reason, "when": time.time()}) + "\n", encoding="utf-8")


def cache_entry_for(path: str | Path, providers: list[str], threads: int = 0) -> Path:
    """The cache entry folder the runner would use for ``path`` (it may not exist)."""

    return _entry(Path(path), lambda: session_options(threads), providers, remember=False)[1]


def forget_model(path: str | Path, providers: list[str], threads: int = 0) -> None:
    """Drop ``path``'s cache entry and remembered hashes: its next start is a true first start."""
    from bridge.model.files import check_model_files

    _remove(cache_entry_for(path, providers, threads))
    base = cache_root()
    names = {str(Path(path).resolve())} | {str(f.path.resolve()) for f in check_model_files(path)}
    memo = _load_memo(base)
    kept = {k: v for k, v in memo.items() if k.split("|", 1)[0] not in names}
    if kept != memo:
        _save_memo(base, kept)
    forget_hashes()


def measure_start(
    path: str, providers: list[str], threads: int = 0, use_cache: bool = True
) -> dict[str, Any]:
    """One session start with the runner's options, as numbers (``models start-time`` runs it
    in a fresh process per start, so nothing is warm but the OS page cache)."""

    start = create_session(path, lambda: session_options(threads), providers, use_cache=use_cache)
    return {
        "seconds": round(start.seconds, 3),
        "hash_seconds": round(start.hash_seconds, 3),
        "peak_rss_delta": start.peak_rss_delta,
        "peak_anon_delta": start.peak_anon_delta,
        "cache": start.cache,
        "provider": start.session.get_providers()[0],
    }


def clear_cache(root: Path | None = None) -> int:
    """Delete every optimised-graph cache entry; returns how many there were."""
    base = root if root is not None else cache_root()
    if not base.is_dir():
        return 0
    n = 0
    for entry in base.iterdir():
        if entry.is_dir():
            n += not entry.name.startswith(".")
            _remove(entry)
        elif entry.suffix in (".off", ".failed"):
            entry.unlink(missing_ok=True)
    return n


__all__ = ["PeakRss", "SessionStart", "clear_cache", "create_session", "model_digest"]
