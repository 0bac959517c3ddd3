"""Where a preset's model file is (``locate_model``): built once for synthetic presets, or
got from the model hub into the bridge's cache and proved intact.

Layout: ``home_dir()/hub/<repo>/<file>`` (files keep their repo-relative
paths, e.g. ``fp32/model.onnx``), plus per repository

* ``a2e-manifest.json`` -- per file: sha256, size, the hub's ETag and commit,
  where it came from; written atomically, checked on every use;
* ``.partial/`` -- downloads in progress, one file per (file, ETag).  A cut
  connection leaves the bytes there and the next fetch resumes with an HTTP
  ``Range`` request.  A file reaches its final path only complete, checked
  (size; sha256 against the preset's pin when it has one, else against the
  hub's ETag: the sha256 for LFS files, the git blob sha1 for small ones; a
  file none of these can check is said in one line) and renamed into place --
  never half-written.  A graph lands after its weights, and a graph whose
  external data would live outside the model's folder is refused before
  any data file is asked for.
* ``.lock`` -- one fetch per repository at a time (``filelock``).

Why not ``hf_hub_download``: the hub's own cache stores blobs by ETag behind
symlinks and (huggingface_hub 2.x) deletes a partial download when it fails,
so a 400 MB download cut at 90 % starts over.  This module uses huggingface_hub
for everything else -- URL layout, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, the
token, the user agent, its HTTP client, error types and progress bars -- and
first looks in the hub's cache (``HF_HUB_CACHE``): a file already fetched with
``hf download`` is linked (or copied) from there instead of downloaded again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from bridge.errors import BridgeError
from bridge.model.files import file_sha256
from bridge.model.presets import PRESETS, Preset, home_dir

log = logging.getLogger(__name__)

MANIFEST = "a2e-manifest.json"
PARTIAL = ".partial"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")


# -- environment -----------------------------------------------------------------------------------


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (read now, not at import) or huggingface_hub's own offline flag."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def endpoint() -> str:
    """``HF_ENDPOINT`` (read now) or huggingface_hub's default, without a trailing slash."""
    env = os.environ.get("HF_ENDPOINT")
    if env:
        return env.rstrip("/")
    from huggingface_hub import constants

    return str(constants.ENDPOINT).rstrip("/")


def hf_cache_dir() -> Path:
    """The hub library's cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``), read now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _require_hub() -> None:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise BridgeError(
            "downloading models needs the huggingface_hub package: pip install huggingface_hub "
            "(or put the files into the cache by hand, see docs/models.md)"
        ) from None


# -- layout and manifest ---------------------------------------------------------------------------


def hub_path(preset: Preset, file: str) -> Path:
    """Where ``file`` (repo-relative) of ``preset``'s hub repository lives in the cache."""
    return home_dir() / "hub" / str(preset.repo) / file


def locate_model(preset: Preset, override: str | None = None, *, fetch_missing: bool = False) -> Path:
    """The graph file to load for ``preset``: ``override`` if given, else the cached or built file.

    Hub files are verified against the sha256 recorded when they were fetched;
    missing ones are downloaded first when ``fetch_missing`` allows it (and the
    hub is not in offline mode), otherwise the error says what to put where.
    """
    if override is not None:
        p = Path(override).expanduser()
        if not p.is_file():
            raise BridgeError(
                f"model file not found: {p}; check [model] path / --model, "
                "or try the pipeline with --model synthetic"
            )
        return p
    if preset.synthetic is not None:
        return build_synthetic(preset)
    path = ensure_local(preset, fetch_missing=fetch_missing)
    if preset.warning:
        log.warning("model %r: %s", preset.name, preset.warning)
    return path


def _built_kind(path: Path) -> str | None:
    """The ``kind`` a built synthetic model records: a cache from before ``synthetic`` became
    the demo model holds the tiny one under that name, or an older demo: rebuilt, not reused."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable: build it again
        return None
    return next((p.value for p in model.metadata_props if p.key == "kind"), None)


def build_synthetic(preset: Preset) -> Path:
    """Build a synthetic preset's model on first use; later runs reuse the file."""
    assert preset.synthetic is not None
    family, size, oracle = preset.synthetic
    from bridge.modeltools.synth import model_kind, synthesize

    path = home_dir() / "synthetic" / f"{preset.name}.onnx"
    if path.is_file() and _built_kind(path) == model_kind(size, oracle):
        return path

    if size == "full":
        print(f"building the {preset.name} model once into {path} ...", file=sys.stderr)
    if size == "demo" and not oracle:
        from bridge.modeltools.demo import synthesize_demo

        return synthesize_demo(family, path)
    return synthesize(family, size, path, oracle=oracle)


def repo_dir(repo: str) -> Path:
    return home_dir() / "hub" / repo


def _partial_name(file: str, etag: str) -> str:
    flat = file.replace("/", "__")
    tag = re.sub(r"[^0-9A-Za-z]", "", etag)[:16] or "noetag"
    return f"{flat}.{tag}.part"


def _partials(part_dir: Path, file: str) -> list[Path]:
    """Partial downloads of exactly ``file`` (any ETag): ``model.onnx`` must not match ``model.onnx.data``."""
    if not part_dir.is_dir():
        return []
    pattern = re.compile(re.escape(file.replace("/", "__")) + r"\.[0-9A-Za-z]+\.part")
    return [p for p in part_dir.iterdir() if pattern.fullmatch(p.name)]


class Manifest:
    """``a2e-manifest.json`` of one repository folder: what was fetched, with its sha256."""

    def __init__(self, repo: str) -> None:
        self.repo = repo
        self.path = repo_dir(repo) / MANIFEST
        self.files: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
                self.files = dict(doc.get("files", {}))
            except (OSError, ValueError, AttributeError):
                log.warning("ignoring unreadable manifest %s: files will be checked again", self.path)

    def get(self, file: str) -> dict[str, Any] | None:
        return self.files.get(file)

    def record(self, file: str, **entry: Any) -> None:
        self.files[file] = {**entry, "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.save()

    def drop(self, file: str) -> None:
        if self.files.pop(file, None) is not None:
            self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{MANIFEST}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"repo": self.repo, "files": self.files}, indent=2) + "\n", "utf-8")
        os.replace(tmp, self.path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _land(src: Path, dest: Path) -> None:
    """Move a complete, checked file to its final path in one rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    _fsync(src)
    os.replace(src, dest)


# -- file states (list, verification) --------------------------------------------------------------


@dataclass(slots=True)
class FileState:
    """One file of a preset as the cache has it."""

    file: str
    path: Path
    state: str  #: "verified", "recorded", "unrecorded", "missing", "partial", "corrupt"
    size: int | None = None
    detail: str = ""


def _external_locations(graph: Path) -> list[str] | None:
    """External-data files a graph uses (repo-relative names next to it), None if unreadable."""
    from bridge.model.files import MAX_GRAPH_PARSE_BYTES, external_files, load_graph

    try:
        if graph.stat().st_size > MAX_GRAPH_PARSE_BYTES:
            return []
        model = load_graph(graph)
        return sorted({f.location for f in external_files(model, graph)})
    except (BridgeError, OSError):
        return None


def preset_files(preset: Preset, manifest: Manifest | None = None) -> list[str]:
    """The repo files ``preset`` needs: its graph plus the data files the graph refers to.

    The graph, once present, is the authority (a preset's list of data files is
    what the card implies); until then the preset's own list is used.
    """
    graph = preset.graph_file
    m = manifest or Manifest(str(preset.repo))
    entry = m.get(graph)
    if entry is not None and "external" in entry:
        return [graph, *_data_files(preset, list(entry["external"]), str(m.path))]
    local = repo_dir(str(preset.repo)) / graph
    if local.is_file():
        locs = _external_locations(local)
        if locs is not None:
            return [graph, *_data_files(preset, locs, str(local))]
    return list(preset.files) or [graph]


def _data_files(preset: Preset, locations: list[str], source: str) -> list[str]:
    """Repo-relative names of the graph's external-data files, each checked to stay in its folder.

    A hub mirror decides what a graph says; a location that is absolute or
    climbs out with ``..`` would make the fetch write (and the runner read)
    anywhere.  Refused here, before any data file is requested.
    """
    from bridge.model.files import location_escapes

    graph = preset.graph_file
    for loc in locations:
        if location_escapes(str(loc)):
            raise BridgeError(
                f"model graph {preset.repo}/{graph} (from {source}) refers to external data at {loc!r}, "
                "outside the model's folder: refused, no data file downloaded or written (a broken or "
                "hostile mirror? check HF_ENDPOINT)"
            )
    folder = PurePosixPath(graph).parent
    return [str(folder / loc) for loc in locations]


def _partial_size(preset: Preset, file: str) -> int:
    part_dir = repo_dir(str(preset.repo)) / PARTIAL
    return max((p.stat().st_size for p in _partials(part_dir, file)), default=0)


def check_file(preset: Preset, file: str, manifest: Manifest, *, full: bool = True) -> FileState:
    """State of one cached file; ``full`` re-hashes it (else only the size is compared)."""
    path = repo_dir(str(preset.repo)) / file
    if not path.is_file():
        part = _partial_size(preset, file)
        if part:
            return FileState(file, path, "partial", part, f"{part} bytes downloaded")
        return FileState(file, path, "missing")
    size = path.stat().st_size
    entry = manifest.get(file)
    if entry is None:
        return FileState(file, path, "unrecorded", size, "no checksum on record (placed by hand?)")
    if size != entry.get("size"):
        return FileState(file, path, "corrupt", size, f"{size} bytes, but {entry.get('size')} were fetched")
    pin = preset.pinned_sha256(file)
    if pin is not None and entry.get("sha256") != pin:
        return FileState(
            file, path, "corrupt", size,
            f"sha256 {str(entry.get('sha256'))[:12]}... on record, but the preset pins {pin[:12]}...",
        )  # fmt: skip
    if not full:
        return FileState(file, path, "recorded", size)
    digest = file_sha256(path)
    if digest != entry.get("sha256"):
        return FileState(
            file,
            path,
            "corrupt",
            size,
            f"sha256 {digest[:12]}... but {str(entry.get('sha256'))[:12]}... was fetched",
        )
    return FileState(file, path, "verified", size)


def preset_state(preset: Preset, *, full: bool = False) -> list[FileState]:
    """Every file of a hub preset, checked (see :func:`check_file`)."""
    m = Manifest(str(preset.repo))
    return [check_file(preset, f, m, full=full) for f in preset_files(preset, m)]


def _missing_message(preset: Preset, missing: list[str], why: str = "") -> str:
    where = repo_dir(str(preset.repo))
    extra = (
        "; HF_HUB_OFFLINE is set: fetch on a connected machine (or unset it) and copy that folder here"
        if offline()
        else ""
    )
    return (
        f"model {preset.name!r} is not downloaded{why}: put {', '.join(missing)} from the hub repository "
        f"{preset.repo} into {where}/ (run `a2e-bridge models fetch {preset.name}`, or copy them by hand, "
        f"or set [model] path){extra}, or try the pipeline offline with --model synthetic"
    )


def ensure_local(preset: Preset, *, fetch_missing: bool = False, progress: bool = True) -> Path:
    """The verified graph path of a hub preset, fetching missing files when allowed.

    A file whose size or sha256 differs from what was fetched is refused; a file
    put there by hand (no manifest entry) is accepted and its sha256 recorded,
    so later damage to it is caught.
    """
    if preset.repo is None:
        raise BridgeError(f"model preset {preset.name!r} has no hub repository")
    manifest = Manifest(preset.repo)
    missing = [f for f in preset_files(preset, manifest) if not (repo_dir(preset.repo) / f).is_file()]
    if missing:
        if not fetch_missing:
            raise BridgeError(_missing_message(preset, missing))
        if offline() and not _all_in_hf_cache(preset, missing):
            raise BridgeError(_missing_message(preset, missing, " and HF_HUB_OFFLINE forbids downloading"))
        fetch_preset(preset, progress=progress)
        manifest = Manifest(preset.repo)
    for f in preset_files(preset, manifest):
        st = check_file(preset, f, manifest, full=True)
        if st.state == "missing":
            raise BridgeError(_missing_message(preset, [f]))
        if st.state == "corrupt":
            raise BridgeError(
                f"model file {st.path} is corrupted ({st.detail}); run `a2e-bridge models fetch "
                f"{preset.name}` to download it again"
            )
        if st.state == "unrecorded":
            digest = file_sha256(st.path)
            pin = preset.pinned_sha256(f)
            if pin is not None and digest != pin:
                raise BridgeError(
                    f"model file {st.path} is not the file preset {preset.name!r} expects (sha256 "
                    f"{digest[:12]}... but {pin[:12]}... is pinned); remove it and run `a2e-bridge models "
                    f"fetch {preset.name}`"
                )
            verified = "preset-sha256" if pin is not None else "none"
            manifest.record(f, sha256=digest, size=st.size, source="local", verified=verified)
            log.info("model file %s was placed by hand: its sha256 is now on record", st.path)
    return repo_dir(preset.repo) / preset.graph_file


# -- downloading -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Fetched:
    file: str
    path: Path
    action: str  #: "cached", "downloaded", "resumed", "hf-cache", "adopted", "local"
    size: int
    sha256: str
    #: what proved the bytes: "preset-sha256", "etag-sha256", "etag-git-sha1", or "none"
    verified: str = "none"


@dataclass(slots=True)
class _Remote:
    url: str  #: where the bytes are (after the hub's redirect)
    etag: str
    commit: str | None
    size: int | None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _hub_error(e: BaseException, preset: Preset, file: str) -> BridgeError:
    """A huggingface_hub / HTTP error as one line that says what to do."""
    from huggingface_hub import errors

    what = f"{preset.repo}/{file}"
    if isinstance(e, errors.OfflineModeIsEnabled):
        return BridgeError(_missing_message(preset, [file], " and HF_HUB_OFFLINE forbids downloading"))
    if isinstance(e, errors.GatedRepoError):
        return BridgeError(
            f"{preset.repo} is gated: accept its terms on the hub and `hf auth login`, then fetch"
        )
    if isinstance(e, errors.RepositoryNotFoundError):
        return BridgeError(f"hub repository {preset.repo} not found at {endpoint()} (HF_ENDPOINT?)")
    if isinstance(e, errors.RevisionNotFoundError):
        return BridgeError(f"revision {preset.revision!r} not found in {preset.repo} at {endpoint()}")
    if isinstance(e, errors.EntryNotFoundError):
        return BridgeError(f"{what} not found at {endpoint()} (revision {preset.revision})")
    return BridgeError(
        f"cannot fetch {what} from {endpoint()}: {_one_line(e)}; check the network or HF_ENDPOINT, "
        f"or put the file into {repo_dir(str(preset.repo))}/ by hand"
    )


def _remote(preset: Preset, file: str) -> _Remote:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(str(preset.repo), file, revision=preset.revision, endpoint=endpoint())
    try:
        meta = get_hf_file_metadata(url, endpoint=endpoint())
    except BridgeError:
        raise
    except Exception as e:
        raise _hub_error(e, preset, file) from None
    if not meta.etag:
        raise BridgeError(
            f"the hub at {endpoint()} sent no ETag for {preset.repo}/{file}; cannot fetch safely"
        )
    return _Remote(meta.location or url, meta.etag, meta.commit_hash, meta.size)


def _headers_for(url: str) -> dict[str, str]:
    """Hub headers (user agent, token); the token only goes to the hub's own host."""
    from huggingface_hub.utils import build_hf_headers

    headers = dict(build_hf_headers())
    if urlsplit(url).netloc != urlsplit(endpoint()).netloc:
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    headers["Accept-Encoding"] = "identity"  # byte offsets must be file offsets for Range
    return headers


def _progress_bar(file: str, total: int | None, initial: int, enabled: bool) -> Any:
    from huggingface_hub.utils import tqdm as hf_tqdm

    return hf_tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=file,
        file=sys.stderr, disable=not enabled or None, leave=False,
    )  # fmt: skip


def _stream_once(remote: _Remote, part: Path, progress: bool, file: str) -> None:
    """One GET from the end of ``part``; raises on HTTP errors, leaves written bytes in place."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    have = part.stat().st_size if part.exists() else 0
    headers = _headers_for(remote.url)
    if have:
        headers["Range"] = f"bytes={have}-"
    with get_session().stream(
        "GET", remote.url, headers=headers, follow_redirects=True, timeout=30.0
    ) as response:
        if response.status_code == 416 and have:  # we have more than the server: start over
            part.unlink()
            raise ConnectionResetError("server refused the resume range; restarting the download")
        hf_raise_for_status(response)
        mode = "ab"
        if have and response.status_code != 206:  # server ignored Range: full body follows
            mode, have = "wb", 0
        with part.open(mode) as out, _progress_bar(file, remote.size, have, progress) as bar:
            for chunk in response.iter_bytes():  # as they arrive: a cut keeps every byte received
                out.write(chunk)
                bar.update(len(chunk))


def _download(
    preset: Preset, file: str, remote: _Remote, *, retries: int, progress: bool
) -> tuple[Path, bool]:
    """Download ``file`` into its partial file (resuming it); returns (partial path, resumed)."""
    part_dir = repo_dir(str(preset.repo)) / PARTIAL
    part_dir.mkdir(parents=True, exist_ok=True)
    part = part_dir / _partial_name(file, remote.etag)
    for stale in _partials(part_dir, file):  # other ETags: the file changed upstream
        if stale != part:
            stale.unlink(missing_ok=True)
    if part.exists() and remote.size is not None and part.stat().st_size > remote.size:
        part.unlink()
    resumed = part.exists() and part.stat().st_size > 0
    attempt = 0
    while remote.size is None or not part.exists() or part.stat().st_size < remote.size:
        try:
            _stream_once(remote, part, progress, file)
            if remote.size is None:
                break
            if part.stat().st_size < remote.size:
                raise ConnectionResetError("connection closed early")
        except BridgeError:
            raise
        except Exception as e:
            from huggingface_hub import errors

            if isinstance(e, errors.HfHubHTTPError | errors.OfflineModeIsEnabled):
                raise _hub_error(e, preset, file) from None
            have = part.stat().st_size if part.exists() else 0
            if attempt >= retries:
                total = f" of {remote.size}" if remote.size is not None else ""
                raise BridgeError(
                    f"download of {preset.repo}/{file} stopped at {have}{total} bytes ({_one_line(e)}); "
                    f"run `a2e-bridge models fetch {preset.name}` again to resume it"
                ) from None
            attempt += 1
            log.warning("download of %s interrupted at %d bytes (%s); resuming", file, have, _one_line(e))
            time.sleep(min(0.5 * attempt, 5.0))
        resumed = resumed or attempt > 0
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        part.unlink(missing_ok=True)
        raise BridgeError(
            f"download of {preset.repo}/{file} has {size} bytes, the hub said {remote.size}; "
            "run the fetch again"
        )
    return part, resumed


def _git_blob_sha1(path: Path) -> str:
    """The git object id of a file's bytes: what the hub sends as the ETag of a non-LFS file."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def _etag_proves(etag: str, path: Path, digest: str) -> str | None:
    """How ``etag`` proves ``path``'s bytes ("etag-sha256" / "etag-git-sha1"), or None."""
    if _SHA256_RE.match(etag):
        return "etag-sha256" if digest == etag else None
    if _SHA1_RE.match(etag) and _git_blob_sha1(path) == etag:
        return "etag-git-sha1"
    return None


def _verify(preset: Preset, file: str, path: Path, etag: str, what: str) -> tuple[str, str]:
    """(sha256, what proved it) for a fetched ``path``; a file shown to be wrong is deleted.

    The preset's pinned sha256, when it has one, decides.  Otherwise the ETag
    does: hub LFS files' ETag *is* their sha256 (a mismatch is refused); small
    files' is their git blob sha1.  Any other ETag (a mirror's own, say) proves
    nothing: the file is kept ("none"), and the caller says so in one line.
    """
    digest = file_sha256(path)
    pin = preset.pinned_sha256(file)
    if pin is not None:
        if digest != pin:
            path.unlink(missing_ok=True)
            raise BridgeError(
                f"{what} is not the file preset {preset.name!r} expects: sha256 {digest[:12]}... but "
                f"{pin[:12]}... is pinned; it was deleted (a wrong or hostile mirror? check HF_ENDPOINT)"
            )
        return digest, "preset-sha256"
    if _SHA256_RE.match(etag) and digest != etag:
        path.unlink(missing_ok=True)
        raise BridgeError(
            f"{what} is corrupt: sha256 {digest[:12]}... but the hub says {etag[:12]}...; "
            "it was deleted: run the fetch again"
        )
    return digest, _etag_proves(etag, path, digest) or "none"


def _not_verified(preset: Preset, file: str, etag: str, source: str, digest: str) -> str:
    return (
        f"{file}: NOT verified: {source} gave ETag {etag!r}, which is no checksum of the file, and "
        f"preset {preset.name!r} pins no sha256 for it; kept as fetched (sha256 {digest[:12]}...)"
    )


def _all_in_hf_cache(preset: Preset, files: list[str]) -> bool:
    return all(_from_hf_cache(preset, f) is not None for f in files)


def _from_hf_cache(preset: Preset, file: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(
            str(preset.repo), file, cache_dir=str(hf_cache_dir()), revision=preset.revision
        )
    except Exception:
        return None
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _import_from_hf_cache(preset: Preset, file: str, src: Path) -> tuple[Path, str, str, str]:
    """Link (or copy) a file from the hub library's cache into a partial file.

    Returns (part, sha256, etag, what proved it).
    """
    blob = src.resolve()
    etag = blob.name  # the hub cache names blobs by ETag (the sha256 for LFS files)
    part_dir = repo_dir(str(preset.repo)) / PARTIAL
    part_dir.mkdir(parents=True, exist_ok=True)
    part = part_dir / (_partial_name(file, etag) + ".import")
    part.unlink(missing_ok=True)
    try:
        os.link(blob, part)
    except OSError:
        shutil.copyfile(blob, part)
    digest, how = _verify(preset, file, part, etag, f"{src} (hub cache)")
    return part, digest, etag, how


def fetch_preset(
    preset: Preset,
    *,
    force: bool = False,
    progress: bool = True,
    retries: int = 3,
    report: Callable[[str], None] | None = None,
) -> list[Fetched]:
    """Bring every file of ``preset`` into the cache, checked; returns what was done per file.

    Cached files are re-hashed; a damaged one is fetched again.  ``force``
    downloads everything again.  ``retries`` resumes within this call after a
    cut connection; beyond that the partial file stays for the next fetch.
    """
    if preset.synthetic is not None:
        raise BridgeError(f"model preset {preset.name!r} is synthetic: it is built on first use, not fetched")
    if preset.repo is None:
        raise BridgeError(f"model preset {preset.name!r} has no hub repository")
    _require_hub()
    from filelock import FileLock, Timeout

    say = report or (lambda _msg: None)
    warn = report or log.warning  # "could not be verified" must be seen, with or without a reporter
    root = repo_dir(preset.repo)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / ".lock"))
    try:
        lock.acquire(timeout=1)
    except Timeout:
        say(f"waiting for another fetch into {root} ...")
        try:
            lock.acquire(timeout=3600)
        except Timeout:
            raise BridgeError(f"another fetch into {root} holds its lock; try again later") from None
    try:
        graph = preset.graph_file
        done: list[Fetched] = []
        fetch = functools.partial(
            _fetch_file, preset, force=force, progress=progress, retries=retries, say=say, warn=warn
        )
        graph_part = fetch(graph)
        graph_src = graph_part[0] if graph_part is not None else root / graph
        try:
            locs = _external_locations(graph_src)
            if locs is None:
                raise BridgeError(
                    f"{preset.repo}/{graph} is not a valid ONNX graph (cannot read it); "
                    f"delete {root / graph} and fetch again"
                )
            remote = _remotes.get((preset.repo, preset.revision, graph))
            source = remote.url if graph_part is not None and remote is not None else str(graph_src)
            data_files = _data_files(preset, locs, source)
        except BridgeError:
            if graph_part is not None:  # nothing of a refused graph stays behind
                graph_part[0].unlink(missing_ok=True)
            raise
        unexpected = sorted(set(data_files) - set(preset.files[1:]))
        if unexpected:
            log.info("%s uses data files the preset does not list: %s", graph, ", ".join(unexpected))
        for f in data_files:
            res = fetch(f)
            if res is not None:
                part, fetched = res
                _land(part, fetched.path)
                _record(preset, fetched)
                fetched.path = root / f
            else:
                fetched = _cached(preset, f)
            done.append(fetched)
        if graph_part is not None:
            part, fetched = graph_part
            _land(part, fetched.path)
            _record(preset, fetched, external=locs)
        else:
            fetched = _cached(preset, graph)
            m = Manifest(preset.repo)
            entry = m.get(graph)
            if entry is not None and entry.get("external") != locs:
                m.record(graph, **{**entry, "external": locs})
        done.insert(0, fetched)
        return done
    finally:
        lock.release()


_remotes: dict[tuple[str, str, str], _Remote] = {}


def _record(preset: Preset, f: Fetched, external: list[str] | None = None) -> None:
    remote = _remotes.get((str(preset.repo), preset.revision, f.file))
    entry: dict[str, Any] = {"sha256": f.sha256, "size": f.size, "source": f.action, "verified": f.verified}
    if remote is not None:
        entry.update(etag=remote.etag, commit=remote.commit, revision=preset.revision)
    if external is not None:
        entry["external"] = external
    Manifest(str(preset.repo)).record(f.file, **entry)


def _cached(preset: Preset, file: str) -> Fetched:
    path = repo_dir(str(preset.repo)) / file
    entry = Manifest(str(preset.repo)).get(file) or {}
    return Fetched(file, path, "cached", path.stat().st_size, str(entry.get("sha256", "")),
                   str(entry.get("verified", "none")))  # fmt: skip


def _fetch_file(
    preset: Preset,
    file: str,
    *,
    force: bool,
    progress: bool,
    retries: int,
    say: Callable[[str], None],
    warn: Callable[[str], None],
) -> tuple[Path, Fetched] | None:
    """A checked partial file ready to land, or None when the cached copy is good."""
    repo = str(preset.repo)
    dest = repo_dir(repo) / file
    manifest = Manifest(repo)
    if dest.is_file() and not force:
        st = check_file(preset, file, manifest, full=True)
        if st.state == "verified":
            say(f"{file}: cached, sha256 ok")
            return None
        if st.state == "corrupt":
            say(f"{file}: cached copy is damaged ({st.detail}); fetching it again")
            manifest.drop(file)
        elif st.state == "unrecorded":
            digest = file_sha256(dest)
            pin = preset.pinned_sha256(file)
            if pin is not None and digest == pin:
                fetched = Fetched(file, dest, "adopted", dest.stat().st_size, digest, "preset-sha256")
                _record(preset, fetched)
                say(f"{file}: placed by hand, matches the preset's pinned sha256")
                return None
            if pin is None and offline():
                size = dest.stat().st_size
                manifest.record(file, sha256=digest, size=size, source="local", verified="none")
                say(f"{file}: placed by hand; offline, so recorded as is (not checked against the hub)")
                return None
            if pin is None:
                remote = _remote(preset, file)
                how = _etag_proves(remote.etag, dest, digest)
                if how is not None:
                    _remotes[(repo, preset.revision, file)] = remote
                    fetched = Fetched(file, dest, "adopted", dest.stat().st_size, digest, how)
                    _record(preset, fetched)
                    say(f"{file}: placed by hand, matches the hub's checksum")
                    return None
            say(f"{file}: placed by hand and not provably the hub's file; fetching it again")
    cached = _from_hf_cache(preset, file) if not force else None
    if cached is not None:
        part, digest, etag, how = _import_from_hf_cache(preset, file, cached)
        _remotes[(repo, preset.revision, file)] = _Remote(str(cached), etag, None, part.stat().st_size)
        say(f"{file}: taken from the huggingface_hub cache ({cached})")
        if how == "none":
            warn(_not_verified(preset, file, etag, "the huggingface_hub cache", digest))
        return part, Fetched(file, dest, "hf-cache", part.stat().st_size, digest, how)
    if offline():
        raise BridgeError(_missing_message(preset, [file], " and HF_HUB_OFFLINE forbids downloading"))
    remote = _remote(preset, file)
    _remotes[(repo, preset.revision, file)] = remote
    part, resumed = _download(preset, file, remote, retries=retries, progress=progress)
    digest, how = _verify(preset, file, part, remote.etag, f"download of {repo}/{file}")
    action = "resumed" if resumed else "downloaded"
    say(f"{file}: {action}, {part.stat().st_size} bytes, sha256 {digest[:12]}...")
    if how == "none":
        warn(_not_verified(preset, file, remote.etag, f"the hub at {endpoint()}", digest))
    return part, Fetched(file, dest, action, part.stat().st_size, digest, how)


def known_hub_presets() -> list[Preset]:
    return [p for p in PRESETS.values() if p.repo is not None]


__all__ = [
    "FileState",
    "Fetched",
    "Manifest",
    "check_file",
    "endpoint",
    "ensure_local",
    "fetch_preset",
    "known_hub_presets",
    "offline",
    "preset_files",
    "preset_state",
    "repo_dir",
]
