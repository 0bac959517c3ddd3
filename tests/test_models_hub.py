"""Fetching hub models: real HTTP against a loopback server in the hub's URL layout.

The server speaks what huggingface_hub asks for: ``HEAD`` with ``ETag`` /
``X-Repo-Commit`` / ``Content-Length``, ``GET`` with ``Range`` (206 +
``Content-Range``), ``X-Error-Code`` on 404s.  It serves a tiny synthetic LAM
saved under the real preset's file names, so the whole path -- URL building,
``HF_ENDPOINT``, the cache folder, manifest, resume, sha256 checks, the runner
loading the result -- runs for real.  It can cut a connection mid-file.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridge.cli.main import main
from bridge.errors import BridgeError
from bridge.model.files import forget_hashes
from bridge.model.hub import MANIFEST, PARTIAL, fetch_preset, locate_model, preset_state, repo_dir
from bridge.model.presets import get_preset
from bridge.modeltools.synth import build_lam, save_model

REPO = "omote-ai/lam-a2e"
GRAPH, DATA = "model_fp16.onnx", "model_fp16.onnx.data"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Hub:
    """State of the fake hub: files per repo, requests seen, connections to cut."""

    files: dict[str, dict[str, bytes]]
    etags: dict[tuple[str, str], str] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    cut: dict[str, tuple[int, int]] = field(default_factory=dict)  #: file -> (bytes to send, times)
    lies: dict[str, bytes] = field(default_factory=dict)  #: file -> bytes served instead
    #: file *name* -> bytes served at any path ending in it (even after URL normalisation)
    anywhere: dict[str, bytes] = field(default_factory=dict)
    url: str = ""

    def gets(self, file: str) -> list[str | None]:
        return [rng for m, path, rng in self.requests if m == "GET" and path.endswith("/" + file)]


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _lookup(self) -> tuple[str, str, bytes] | None:
            parts = self.path.split("?")[0].lstrip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                if parts and parts[-1] in hub.anywhere:
                    data = hub.anywhere[parts[-1]]
                    hub.etags.setdefault((REPO, parts[-1]), hashlib.sha256(data).hexdigest())
                    return REPO, parts[-1], data
                return None
            repo, file = "/".join(parts[:2]), "/".join(parts[4:])
            name = parts[-1]
            if name in hub.anywhere:  # a hostile mirror answers whatever path the client normalised to
                hub.etags.setdefault((repo, file), hashlib.sha256(hub.anywhere[name]).hexdigest())
                return repo, file, hub.anywhere[name]
            if repo not in hub.files:
                self._error(404, "RepoNotFound", "Repository not found")
                return ("", "", b"")
            if file not in hub.files[repo]:
                self._error(404, "EntryNotFound", "Entry not found")
                return ("", "", b"")
            return repo, file, hub.files[repo][file]

        def _error(self, code: int, kind: str, msg: str) -> None:
            body = json.dumps({"error": msg}).encode()
            self.send_response(code)
            self.send_header("X-Error-Code", kind)
            self.send_header("X-Error-Message", msg)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _meta_headers(self, repo: str, file: str, size: int) -> None:
            self.send_header("ETag", f'"{hub.etags[(repo, file)]}"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")

        def do_HEAD(self) -> None:  # noqa: N802
            hub.requests.append(("HEAD", self.path, None))
            found = self._lookup()
            if found is None or not found[0]:
                if found is None:
                    self._error(404, "EntryNotFound", "bad path")
                return
            repo, file, data = found
            self.send_response(200)
            self._meta_headers(repo, file, len(data))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            rng = self.headers.get("Range")
            hub.requests.append(("GET", self.path, rng))
            found = self._lookup()
            if found is None or not found[0]:
                if found is None:
                    self._error(404, "EntryNotFound", "bad path")
                return
            repo, file, data = found
            data = hub.lies.get(file, data)
            start = 0
            if rng:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self._meta_headers(repo, file, len(data))
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            send, times = hub.cut.get(file, (0, 0))
            if times > 0 and send < len(body):
                hub.cut[file] = (send, times - 1)
                self.wfile.write(body[:send])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # the connection dies mid-file
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A tiny synthetic LAM saved under the real preset's names (graph + external data)."""
    folder = tmp_path_factory.mktemp("hub-src")
    save_model(build_lam("tiny", seed=3), folder / GRAPH)
    return {GRAPH: (folder / GRAPH).read_bytes(), DATA: (folder / DATA).read_bytes()}


@pytest.fixture
def hub(model_files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """A loopback hub, HF_ENDPOINT pointing at it, fresh bridge and huggingface_hub caches."""
    state = Hub(files={REPO: dict(model_files)})
    for file, data in model_files.items():
        # As the hub does: LFS files' ETag is their sha256, small (git) files' their git blob sha1.
        state.etags[(REPO, file)] = hashlib.sha256(data).hexdigest() if file == DATA else _git_sha1(data)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", state.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("A2E_BRIDGE_HOME", str(tmp_path / "bridge-home"))
    forget_hashes()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _one_line(e: pytest.ExceptionInfo[BridgeError]) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_fetch_downloads_into_the_cache(hub: Hub, model_files: dict[str, bytes]) -> None:
    preset = get_preset("lam")
    done = fetch_preset(preset, progress=False)
    root = repo_dir(REPO)
    assert {f.file: f.action for f in done} == {GRAPH: "downloaded", DATA: "downloaded"}
    for name, data in model_files.items():
        assert (root / name).read_bytes() == data
    manifest = json.loads((root / MANIFEST).read_text())["files"]
    assert manifest[DATA]["sha256"] == hashlib.sha256(model_files[DATA]).hexdigest()
    assert manifest[DATA]["commit"] == COMMIT
    assert manifest[GRAPH]["external"] == [DATA]
    assert manifest[GRAPH]["verified"] == "etag-git-sha1" and manifest[DATA]["verified"] == "etag-sha256"
    assert not list((root / PARTIAL).glob("*")), "no partial files left behind"
    # The HEAD/GET went to HF_ENDPOINT in the hub's layout.
    assert any(p == f"/{REPO}/resolve/main/{DATA}" for m, p, _ in hub.requests if m == "HEAD")
    assert [s.state for s in preset_state(preset, full=True)] == ["verified", "verified"]

    # A later fetch finds everything in place and downloads nothing.
    before = len(hub.gets(DATA))
    again = fetch_preset(preset, progress=False)
    assert {f.action for f in again} == {"cached"} and len(hub.gets(DATA)) == before

    # The runner loads what locate_model hands it.
    from bridge.model.runner import ModelRunner

    runner = ModelRunner(locate_model(preset), preset.description, providers=["cpu"], threads=1)
    assert runner.infer(__import__("numpy").zeros(16000, "float32")).shape == (30, 52)


def test_interrupted_download_resumes_on_the_next_fetch(hub: Hub, model_files: dict[str, bytes]) -> None:
    preset = get_preset("lam")
    size = len(model_files[DATA])
    cut_at = size * 2 // 5
    hub.cut[DATA] = (cut_at, 1)
    with pytest.raises(BridgeError) as e:
        fetch_preset(preset, progress=False, retries=0)
    msg = _one_line(e)
    assert "stopped at" in msg and "a2e-bridge models fetch lam" in msg and "resume" in msg
    root = repo_dir(REPO)
    assert not (root / DATA).exists(), "nothing half-written at the final path"
    assert not (root / GRAPH).exists(), "the graph lands only after its weights"
    parts = list((root / PARTIAL).glob("*.part"))
    assert [p.stat().st_size for p in parts if p.name.startswith(DATA)] == [cut_at]

    done = fetch_preset(preset, progress=False, retries=0)
    assert {f.file: f.action for f in done}[DATA] == "resumed"
    assert hub.gets(DATA)[-1] == f"bytes={cut_at}-", "the second fetch asked only for the rest"
    assert (root / DATA).read_bytes() == model_files[DATA]
    assert (root / GRAPH).read_bytes() == model_files[GRAPH]


def test_cut_connection_resumes_within_one_fetch(hub: Hub, model_files: dict[str, bytes]) -> None:
    hub.cut[DATA] = (1000, 1)
    done = fetch_preset(get_preset("lam"), progress=False, retries=2)
    assert {f.file: f.action for f in done}[DATA] == "resumed"
    assert hub.gets(DATA) == [None, "bytes=1000-"]
    assert (repo_dir(REPO) / DATA).read_bytes() == model_files[DATA]


def test_corrupted_cached_file_is_refused_then_repaired(hub: Hub, model_files: dict[str, bytes]) -> None:
    preset = get_preset("lam")
    fetch_preset(preset, progress=False)
    data = repo_dir(REPO) / DATA
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one byte flipped: only the sha256 can tell
    data.write_bytes(bytes(raw))
    forget_hashes()  # what a new process would see
    with pytest.raises(BridgeError) as e:
        locate_model(preset)
    msg = _one_line(e)
    assert "corrupted" in msg and "sha256" in msg and str(data) in msg and "models fetch lam" in msg

    result = CliRunner().invoke(main, ["models", "list", "--verify"])
    assert result.exit_code == 0 and "CORRUPT" in result.output

    done = fetch_preset(preset, progress=False)  # the fetch re-downloads the damaged file only
    assert {f.file: f.action for f in done} == {GRAPH: "cached", DATA: "downloaded"}
    assert data.read_bytes() == model_files[DATA]
    assert locate_model(preset) == repo_dir(REPO) / GRAPH


def test_truncated_cached_file_is_refused(hub: Hub) -> None:
    preset = get_preset("lam")
    fetch_preset(preset, progress=False)
    data = repo_dir(REPO) / DATA
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(BridgeError) as e:
        locate_model(preset)
    assert "corrupted" in _one_line(e) and "bytes" in str(e.value)


def test_download_that_does_not_match_the_hub_sha256_never_lands(
    hub: Hub, model_files: dict[str, bytes]
) -> None:
    wrong = bytearray(model_files[DATA])
    wrong[10] ^= 0x01
    hub.lies[DATA] = bytes(wrong)
    with pytest.raises(BridgeError) as e:
        fetch_preset(get_preset("lam"), progress=False)
    assert "corrupt" in _one_line(e) and "sha256" in str(e.value)
    root = repo_dir(REPO)
    assert not (root / DATA).exists() and not list((root / PARTIAL).glob(DATA + "*"))


def test_missing_model_says_what_to_put_where(hub: Hub) -> None:
    with pytest.raises(BridgeError) as e:
        locate_model(get_preset("lam"))
    msg = _one_line(e)
    for part in (GRAPH, DATA, str(repo_dir(REPO)), "a2e-bridge models fetch lam", "--model synthetic", REPO):
        assert part in msg
    assert not hub.requests, "without fetch_missing nothing goes to the network"


def test_locate_fetches_on_first_use_when_allowed(hub: Hub) -> None:
    path = locate_model(get_preset("lam"), fetch_missing=True)
    assert path == repo_dir(REPO) / GRAPH and path.is_file()


def test_offline_with_nothing_cached(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BridgeError) as e:
        locate_model(get_preset("lam"), fetch_missing=True)
    msg = _one_line(e)
    assert "HF_HUB_OFFLINE" in msg and GRAPH in msg and "--model synthetic" in msg
    result = CliRunner().invoke(main, ["models", "fetch", "lam", "--quiet"])
    assert result.exit_code == 2
    err = result.output.strip().splitlines()
    assert err[-1].startswith("a2e-bridge: error:") and "HF_HUB_OFFLINE" in err[-1]
    assert not hub.requests, "offline means no request at all"


def test_files_from_the_huggingface_hub_cache_are_reused_offline(
    hub: Hub, model_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from huggingface_hub import hf_hub_download

    # huggingface_hub's own client against the same server: proves the server's headers, too.
    cache = tmp_path / "hf-home" / "hub"
    for f in (GRAPH, DATA):
        hf_hub_download(REPO, f, endpoint=hub.url, cache_dir=str(cache))
    n = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    done = fetch_preset(get_preset("lam"), progress=False)
    assert {f.action for f in done} == {"hf-cache"} and len(hub.requests) == n
    assert (repo_dir(REPO) / DATA).read_bytes() == model_files[DATA]


def test_file_placed_by_hand_is_adopted_when_it_matches_the_hub(
    hub: Hub, model_files: dict[str, bytes]
) -> None:
    root = repo_dir(REPO)
    root.mkdir(parents=True)
    (root / DATA).write_bytes(model_files[DATA])
    done = fetch_preset(get_preset("lam"), progress=False)
    assert {f.file: f.action for f in done} == {GRAPH: "downloaded", DATA: "cached"}
    assert hub.gets(DATA) == [], "the hand-placed file matched the hub's sha256: not downloaded"


def test_cli_fetch_and_list(hub: Hub) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["models", "fetch", "lam", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "lam: ready, 2 files" in result.output
    listing = runner.invoke(main, ["models", "list", "--verify"])
    assert listing.exit_code == 0
    line = next(ln for ln in listing.output.splitlines() if ln.strip().startswith("lam "))
    assert "sha256 verified" in line
    assert "not fetched" in next(ln for ln in listing.output.splitlines() if "wav2arkit " in ln)


def test_unknown_repo_file_and_preset(hub: Hub) -> None:
    hub.files[REPO].pop(DATA)
    with pytest.raises(BridgeError) as e:
        fetch_preset(get_preset("lam"), progress=False)
    assert "not found" in _one_line(e) and DATA in str(e.value)
    with pytest.raises(BridgeError) as e2:
        fetch_preset(get_preset("wav2arkit"), progress=False)
    assert "myned-ai/wav2arkit_cpu" in _one_line(e2)
    result = CliRunner().invoke(main, ["models", "fetch", "lam-fp64"])
    assert result.exit_code == 2 and "unknown model preset" in result.output
    result = CliRunner().invoke(main, ["models", "fetch", "synthetic"])
    assert result.exit_code == 2 and "built on first use" in result.output


def test_every_seed_variant_has_a_preset() -> None:
    files = {name: get_preset(name).files for name in
             ("lam", "lam-fp32", "lam-fp32-single", "lam-fp16-naive", "lam-int8", "wav2arkit")}  # fmt: skip
    assert files["lam"] == (GRAPH, DATA)
    assert files["lam-fp32"][0] == "fp32/model.onnx"
    assert files["lam-fp32-single"] == ("model.onnx",)
    assert files["lam-fp16-naive"][0] == "fp16/model.onnx"
    assert files["lam-int8"][0] == "int8/model.onnx"
    assert files["wav2arkit"] == ("wav2arkit_cpu.onnx", "wav2arkit_cpu.onnx.data")
    assert get_preset("wav2arkit").repo == "myned-ai/wav2arkit_cpu"
    assert get_preset("lam-int8").warning and "0.99" in str(get_preset("lam-int8").warning)
    for name in ("synthetic", "synthetic-full", "synthetic-wav2arkit", "synthetic-wav2arkit-full", "oracle"):
        assert get_preset(name).synthetic is not None


def test_int8_preset_logs_a_warning(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    hub.files[REPO]["int8/model.onnx"] = hub.files[REPO][GRAPH]  # data location: model_fp16.onnx.data
    hub.etags[(REPO, "int8/model.onnx")] = hub.etags[(REPO, GRAPH)]
    hub.files[REPO]["int8/model_fp16.onnx.data"] = hub.files[REPO][DATA]
    hub.etags[(REPO, "int8/model_fp16.onnx.data")] = hub.etags[(REPO, DATA)]
    with caplog.at_level("WARNING"):
        path = locate_model(get_preset("lam-int8"), fetch_missing=True)
    assert path.name == "model.onnx" and (path.parent / "model_fp16.onnx.data").is_file()
    assert any("int8 degrades this model" in r.getMessage() for r in caplog.records)


# -- hostile mirrors -------------------------------------------------------------------------------


def _graph_with_location(graph: bytes, location: str) -> bytes:
    """The served graph, its external-data ``location`` rewritten (what a hostile mirror serves)."""
    import onnx

    model = onnx.load_from_string(graph)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    return model.SerializeToString()


@pytest.mark.parametrize("where", ["dotdot", "absolute"])
def test_graph_pointing_outside_its_folder_is_refused_before_any_download(
    hub: Hub, model_files: dict[str, bytes], tmp_path: Path, where: str
) -> None:
    outside = tmp_path / "abs" / "escaped.data"
    location = "../../../../escaped.data" if where == "dotdot" else str(outside)
    hostile = _graph_with_location(model_files[GRAPH], location)
    hub.files[REPO][GRAPH] = hostile
    hub.etags[(REPO, GRAPH)] = hashlib.sha256(hostile).hexdigest()  # a consistent, checkable mirror
    hub.anywhere["escaped.data"] = model_files[DATA]  # and it serves the weights wherever asked
    result = CliRunner().invoke(main, ["models", "fetch", "lam", "--quiet"])
    assert result.exit_code == 2, result.output
    assert "ready" not in result.output
    err = result.output.strip().splitlines()[-1]
    assert err.startswith("a2e-bridge: error:") and GRAPH in err and repr(location) in err
    assert "outside the model's folder" in err
    # Only the graph was asked for; nothing landed, nothing was left half-written, nothing escaped.
    files = {p.rsplit("/", 1)[-1] for _, p, _ in hub.requests if not p.startswith("/api/")}
    assert files == {GRAPH}, hub.requests  # (huggingface_hub itself may ask /api/ for its registry)
    root = repo_dir(REPO)
    assert not (root / GRAPH).exists() and not list((root / PARTIAL).glob("*"))
    assert not [p for p in tmp_path.rglob("escaped.data*")], "a file was written outside the cache"
    assert not outside.parent.exists()


def test_manifest_naming_data_outside_the_folder_is_refused(hub: Hub) -> None:
    """A manifest written by an older bridge from a hostile mirror: refused at load, not followed."""
    preset = get_preset("lam")
    fetch_preset(preset, progress=False)
    path = repo_dir(REPO) / MANIFEST
    doc = json.loads(path.read_text())
    doc["files"][GRAPH]["external"] = ["../../../etc/escaped.data"]
    path.write_text(json.dumps(doc))
    with pytest.raises(BridgeError) as e:
        locate_model(preset)
    assert "'../../../etc/escaped.data'" in _one_line(e) and "outside the model's folder" in str(e.value)


def _weak_etags(hub: Hub) -> None:
    """A mirror whose ETags are its own (nginx style): they say nothing about the bytes."""
    for i, file in enumerate((GRAPH, DATA)):
        hub.etags[(REPO, file)] = f"65f1c3a2-{i:x}d8"


def test_files_no_etag_can_prove_are_said_in_one_line_each(hub: Hub) -> None:
    _weak_etags(hub)
    result = CliRunner().invoke(main, ["models", "fetch", "lam", "--quiet"])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if "NOT verified" in ln]
    assert len(lines) == 2 and lines[0].strip().startswith(GRAPH) and lines[1].strip().startswith(DATA)
    assert all("65f1c3a2" in ln and "pins no sha256" in ln for ln in lines)
    manifest = json.loads((repo_dir(REPO) / MANIFEST).read_text())["files"]
    assert {manifest[f]["verified"] for f in (GRAPH, DATA)} == {"none"}


def test_pinned_sha256_decides_when_the_etag_cannot(
    hub: Hub, model_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from bridge.model.presets import PRESETS

    _weak_etags(hub)
    pins = tuple((f, hashlib.sha256(model_files[f]).hexdigest()) for f in (GRAPH, DATA))
    monkeypatch.setitem(PRESETS, "lam", dataclasses.replace(get_preset("lam"), sha256=pins))
    # The mirror serves other weights under a weak ETag: refused, and nothing lands.
    wrong = bytearray(model_files[DATA])
    wrong[len(wrong) // 3] ^= 0x40
    hub.lies[DATA] = bytes(wrong)
    result = CliRunner().invoke(main, ["models", "fetch", "lam", "--quiet"])
    assert result.exit_code == 2, result.output
    err = result.output.strip().splitlines()[-1]
    assert "is not the file preset 'lam' expects" in err and DATA in err and pins[1][1][:12] in err
    root = repo_dir(REPO)
    assert not (root / DATA).exists() and not (root / GRAPH).exists()
    assert not list((root / PARTIAL).glob(DATA + "*"))
    # The right bytes: verified against the pins, nothing said about ETags.
    hub.lies.clear()
    result = CliRunner().invoke(main, ["models", "fetch", "lam", "--quiet"])
    assert result.exit_code == 0 and "NOT verified" not in result.output, result.output
    manifest = json.loads((root / MANIFEST).read_text())["files"]
    assert {manifest[f]["verified"] for f in (GRAPH, DATA)} == {"preset-sha256"}
