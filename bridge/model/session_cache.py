"""Creating ONNX Runtime sessions: measured, and with the optimised graph kept on disk.

ONNX Runtime spends most of a LAM session's start in graph optimisation, and
that is also where memory peaks (the seed card: 750-950 MB for LAM).  The
optimised graph only depends on the model bytes, the onnxruntime version, the
execution providers, the optimisation level and (for CPU layout transforms)
the CPU, so the first start writes it out (``SessionOptions.optimized_model_filepath``)
and later starts load that file with optimisation switched off.

Cache entries live in ``home_dir()/ort-cache/<key>/`` (``model.onnx`` +
``model.onnx.data`` + ``meta.json``) and land atomically: ORT writes into a
temporary folder that is renamed into place only after the session built.
An entry that fails to load is deleted and the model is optimised again.
"""

from __future__ import annotations

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

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_GRAPH = "model.onnx"
_DATA = "model.onnx.data"
_META = "meta.json"


# -- hashing ---------------------------------------------------------------------------------------

_hash_memo: dict[tuple[int, int, int, int], str] = {}
_hash_lock = threading.Lock()


def file_sha256(path: str | Path, chunk: int = 4 << 20) -> str:
    """sha256 of a file, remembered per process by (device, inode, size, mtime).

    Model files are hundreds of MB: the runner and the hub check each hash it
    once per process, not once per use.
    """
    p = Path(path)
    st = p.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _hash_lock:
        if key in _hash_memo:
            return _hash_memo[key]
    h = hashlib.sha256()
    with p.open("rb") as f:
        buf = bytearray(chunk)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    digest = h.hexdigest()
    with _hash_lock:
        _hash_memo[key] = digest
    return digest


def forget_hashes() -> None:
    """Drop the per-process hash memo (tests that rewrite files in place within one mtime tick)."""
    with _hash_lock:
        _hash_memo.clear()


def model_digest(path: str | Path) -> str:
    """sha256 over the graph file and every external-data file it uses."""
    from bridge.model.inspect import check_model_files

    p = Path(path)
    h = hashlib.sha256(file_sha256(p).encode())
    for f in sorted(check_model_files(p), key=lambda f: f.location):
        h.update(f.location.encode() + b"\0" + file_sha256(f.path).encode())
    return h.hexdigest()


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


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRss:
    """Peak resident memory above the starting point while the block runs (Linux ``/proc``).

    Samples ``/proc/self/statm`` every ``interval`` seconds and also reads the
    kernel's high-water mark (``VmHWM``), which catches short peaks between
    samples whenever they exceed everything before.  The high-water mark is
    never reset (that would corrupt the process's ``ru_maxrss`` for others).
    ``delta`` stays None where ``/proc`` is missing.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.delta: int | None = None
        self.baseline: int | None = None
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _rss_bytes()
            if rss is not None and rss > self._peak:
                self._peak = rss

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
        rss = _rss_bytes() or 0
        peak = max(self._peak, rss)
        hwm = _proc_status_kb("VmHWM")
        if hwm is not None and self._hwm_before is not None and hwm > self._hwm_before:
            peak = max(peak, hwm * 1024)
        self.delta = peak - self.baseline


# -- sessions --------------------------------------------------------------------------------------


@dataclass(slots=True)
class SessionStart:
    """A created session and what creating it cost."""

    session: Any  #: onnxruntime.InferenceSession
    seconds: float  #: wall time of creating the session (ORT only)
    hash_seconds: float  #: time spent hashing the model files for the cache key
    peak_rss_delta: int | None  #: bytes above the RSS before creation, at the peak
    cache: str  #: "hit", "stored", "off" or "unavailable"
    cache_path: Path | None = None

    def describe(self) -> str:
        mem = f", peak +{self.peak_rss_delta / 2**20:.0f} MB" if self.peak_rss_delta is not None else ""
        return f"session created in {self.seconds:.2f} s{mem} (optimised-graph cache: {self.cache})"


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _create(path: Path, opts: Any, providers: list[str]) -> tuple[Any, float, int | None]:
    import onnxruntime as ort

    with PeakRss() as mem:
        t0 = time.perf_counter()
        session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        seconds = time.perf_counter() - t0
    return session, seconds, mem.delta


def _entry(path: Path, make_options: Callable[[], Any], providers: list[str],
           root: Path | None = None) -> tuple[dict[str, Any], Path]:  # fmt: skip
    """The cache key document and entry folder for a model + options + providers."""
    digest = model_digest(path)
    level = make_options().graph_optimization_level
    key_doc = cache_key(digest, providers, int(level))
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:32]
    return key_doc, (root if root is not None else cache_root()) / key


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
    Runtime propagate as raised: the caller turns them into one line.
    """
    import onnxruntime as ort

    path = Path(path)
    if not use_cache:
        session, seconds, peak = _create(path, make_options(), providers)
        return SessionStart(session, seconds, 0.0, peak, "off")

    t0 = time.perf_counter()
    try:
        key_doc, entry = _entry(path, make_options, providers, root)
    except OSError as e:
        log.debug("no optimised-graph cache for %s: %s", path, e)
        session, seconds, peak = _create(path, make_options(), providers)
        return SessionStart(session, seconds, 0.0, peak, "unavailable")
    hash_seconds = time.perf_counter() - t0
    base = entry.parent
    key = entry.name

    if (entry / _META).is_file() and (entry / _GRAPH).is_file():
        opts = make_options()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session, seconds, peak = _create(entry / _GRAPH, opts, providers)
            return SessionStart(session, seconds, hash_seconds, peak, "hit", entry)
        except Exception as e:  # a damaged or incompatible entry: rebuild it
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            log.warning("optimised-graph cache entry %s did not load (%s); optimising again", entry, first)
            _remove(entry)

    opts = make_options()
    tmp: Path | None = None
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        _remove(tmp)
        tmp.mkdir()
        opts.optimized_model_filepath = str(tmp / _GRAPH)
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", _DATA)
        opts.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    except OSError as e:
        log.debug("cannot write the optimised-graph cache in %s: %s", base, e)
        tmp = None
        opts = make_options()
    try:
        session, seconds, peak = _create(path, opts, providers)
    except BaseException:
        if tmp is not None:
            _remove(tmp)
        raise
    if tmp is not None and not (tmp / _GRAPH).is_file():
        log.debug("onnxruntime wrote no optimised graph for %s", path)
        _remove(tmp)
        tmp = None
    if tmp is None:
        return SessionStart(session, seconds, hash_seconds, peak, "unavailable")
    try:
        meta = {**key_doc, "source": str(path.resolve()), "created": time.time(), "seconds": seconds}
        (tmp / _META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.rename(tmp, entry)  # atomic; fails if another process got there first
        return SessionStart(session, seconds, hash_seconds, peak, "stored", entry)
    except OSError as e:
        log.debug("optimised-graph cache entry %s not stored: %s", entry, e)
        _remove(tmp)
        return SessionStart(session, seconds, hash_seconds, peak, "hit" if entry.is_dir() else "unavailable")


def cache_entry_for(path: str | Path, providers: list[str], threads: int = 0) -> Path:
    """The cache entry folder the runner would use for ``path`` (it may not exist)."""
    from bridge.model.runner import session_options

    return _entry(Path(path), lambda: session_options(threads), providers)[1]


def clear_entry(entry: Path) -> None:
    _remove(entry)


def measure_start(
    path: str, providers: list[str], threads: int = 0, use_cache: bool = True
) -> dict[str, Any]:
    """One session start with the runner's options, as numbers (``models start-time`` runs it
    in a fresh process per start, so nothing is warm but the OS page cache)."""
    from bridge.model.runner import session_options

    start = create_session(path, lambda: session_options(threads), providers, use_cache=use_cache)
    return {
        "seconds": round(start.seconds, 3),
        "hash_seconds": round(start.hash_seconds, 3),
        "peak_rss_delta": start.peak_rss_delta,
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
    return n


__all__ = ["PeakRss", "SessionStart", "clear_cache", "create_session", "file_sha256", "model_digest"]
