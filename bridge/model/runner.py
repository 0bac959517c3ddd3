"""ONNX Runtime session for one model, checked against its description.

The runner owns everything model-specific: provider choice (and reporting the
provider that *actually* runs, since ONNX Runtime falls back to CPU silently),
the identity input, warm-up, and mapping the blendshape outputs by name into
the bridge's canonical order.  The hop loop just hands it a window of audio.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bridge.blendshapes import NUM_BLENDSHAPES, model_to_canonical
from bridge.errors import BridgeError
from bridge.model.description import FAMILIES, ModelDescription
from bridge.model.device_io import (
    OutputFetch,
    WindowShift,
    fetch_model_bytes,
    helper_session,
    shift_model_bytes,
)
from bridge.model.files import check_model_files
from bridge.model.session_cache import create_session, session_options

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


def choose_providers(wanted: tuple[str, ...] | list[str], cuda_graph: bool = False) -> list[Any]:
    """The wanted providers this onnxruntime build has, in order (CPU always last resort).

    ``cuda_graph`` asks the CUDA provider to capture the whole model as one CUDA graph
    and replay it: one launch per call instead of hundreds (the model is launch-bound
    on a big GPU).  It needs fixed shapes and buffers, which the runner's IOBinding gives.
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    chosen = [PROVIDER_NAMES[w.lower()] for w in wanted if PROVIDER_NAMES[w.lower()] in available]
    skipped = [w for w in wanted if PROVIDER_NAMES[w.lower()] not in available]
    if skipped:
        log.info("providers not in this onnxruntime build, skipped: %s", ", ".join(skipped))
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    if cuda_graph:
        return [(p, {"enable_cuda_graph": "1"}) if p == "CUDAExecutionProvider" else p for p in chosen]
    return chosen


#: Which batch sizes get bound buffers (on CUDA with graphs: one captured graph each).
#: ``buckets``: 1, 2, 4, ... and ``max_batch`` itself, made at start; a smaller batch is padded
#: up to the next one.  ``each``: every size 1..max_batch, made at start (no padding, but one
#: graph and one set of device buffers per size).  ``exact``: the size asked for, made on its
#: first use (no graphs).  ``auto``: ``buckets`` with CUDA graphs, else ``exact``.
BATCH_SLOTS = ("auto", "buckets", "each", "exact")

#: ORT's run option naming the CUDA graph a run captures or replays (-1: run uncaptured).
_GRAPH_ID = "gpu_graph_id"


def batch_sizes(max_batch: int, mode: str = "buckets") -> tuple[int, ...]:
    """The batch sizes a runner prepares device buffers (and CUDA graphs) for.

    The full batch is always one of them: performers sharing a device are due
    together, so ``max_batch`` is the size that runs most and is never padded.
    """
    if mode == "each":
        return tuple(range(1, max_batch + 1))
    if mode != "buckets":
        raise ValueError(f"batch sizes {mode!r}: allowed buckets, each")
    sizes = []
    b = 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch)
    return tuple(sizes)


@dataclass(slots=True)
class _Slot:
    """Bound device buffers for one batch size: inputs, outputs, their IOBinding, its graph id."""

    batch: int
    audio: Any  #: OrtValue [batch, window_samples]
    identity: Any  #: OrtValue [batch, identity_classes], or None
    outputs: list[Any]  #: OrtValues: blendshapes [batch, frames, 52] (+ asr_logits)
    binding: Any  #: onnxruntime IOBinding
    run_options: Any  #: RunOptions naming the slot's CUDA graph, or None (uncaptured)
    shift: WindowShift | None = None  #: the windows kept on the device, advanced by new samples
    fetch: OutputFetch | None = None  #: device outputs into host arrays made once (None: on the host)
    identity_version: int = -1  #: which one-hot contents the device identity buffer holds


class ModelRunner:
    """Runs windows of 16 kHz audio through one ONNX model, one window or a batch per call.

    A batch of ``B`` windows (one per performer) is one model call: ``[B, samples]`` in,
    ``[B, frames, 52]`` out, each row with its own identity.  Rows never mix (the model
    normalises and attends within a row), so a row's frames are those it gets alone.
    """

    def __init__(
        self,
        path: str | Path,
        description: ModelDescription,
        *,
        providers: tuple[str, ...] | list[str] = ("cuda", "cpu"),
        threads: int = 0,
        identity: int = 0,
        window_samples: int = 16000,
        cache_optimized: bool = True,
        cuda_graph: bool = False,
        bind_device: str | None = None,
        max_batch: int = 1,
        batch_slots: str = "auto",
    ) -> None:

        self.path = Path(path)
        self.description = description
        self.window_samples = window_samples
        if not isinstance(max_batch, int) or max_batch < 1:
            raise BridgeError(f"model max_batch = {max_batch!r}: allowed 1..1024 (windows per model call)")
        if batch_slots not in BATCH_SLOTS:
            raise BridgeError(f"batch_slots = {batch_slots!r}: allowed {', '.join(BATCH_SLOTS)}")
        classes = description.identity_classes
        if description.identity_input and not 0 <= identity < classes:
            raise BridgeError(f"model identity = {identity}: allowed 0..{classes - 1} (0 = neutral)")
        #: The largest batch one call takes (the engine passes its number of performers).
        self.max_batch = max_batch
        check_model_files(self.path)  # a missing/short weights file: one line, before ORT sees it
        try:
            start = create_session(
                self.path, lambda: session_options(threads), choose_providers(providers, cuda_graph),
                use_cache=cache_optimized,
            )  # fmt: skip
        except BridgeError:
            raise
        except Exception as e:  # ORT raises several pybind types; all mean "cannot load"
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BridgeError(f"cannot load model {self.path}: {first}") from None
        self.session = start.session
        #: Seconds the session took to start: ORT's creation plus hashing the files for the cache key.
        self.load_seconds = start.seconds + start.hash_seconds
        #: Resident memory the session creation peaked at, above where it started (bytes, or None).
        self.load_peak_bytes = start.peak_rss_delta
        #: The same for heap (anonymous) memory: without weights memory-mapped from disk.
        self.load_peak_heap_bytes = start.peak_anon_delta
        #: "hit" (optimised graph loaded from disk), "stored", "off" or "unavailable".
        self.session_cache = start.cache
        self.session_start = start
        log.debug("%s: %s", self.path.name, start.describe())
        self.provider = self.session.get_providers()[0]
        #: True for models exported with a fixed batch of 1 (the oracle): batches run row by row.
        self.fixed_batch = self._check_interface()
        self._to_canonical = model_to_canonical(description.output_order)
        self._in_order = bool(np.array_equal(self._to_canonical, np.arange(NUM_BLENDSHAPES)))
        self._outputs = [description.blendshapes_output]
        if description.asr_output:
            self._outputs.append(description.asr_output)
        self._feeds: dict[str, np.ndarray] = {}
        self._fed_rows = 0  #: rows of the identity one-hot the plain-run feeds hold a view of
        self._audio_name = description.audio_input
        self._window_shape = (window_samples,)

        # Identity one-hot rows, rebuilt only when the identities asked for change.
        self.identity = identity
        self._ident_name = description.identity_input
        self._rows = np.arange(max_batch)
        self._ids = np.full(max_batch, identity, dtype=np.int64)
        self._onehot = np.zeros((max_batch, classes), dtype=np.float32)
        self._onehot[:, identity] = 1.0
        self._default_rows = max_batch  #: leading rows known to hold the configured identity
        self._onehot_version = 0

        #: The CUDA graphs in use: on CUDA with ``cuda_graph``, bound buffers, batch > 1 allowed.
        self.cuda_graph = bool(cuda_graph and self.provider == "CUDAExecutionProvider")
        self._skip_graph = None
        if self.cuda_graph:
            import onnxruntime as ort

            self._skip_graph = ort.RunOptions()
            self._skip_graph.add_run_config_entry(_GRAPH_ID, "-1")

        # One plain run gives the per-window output shapes (checked once) for every buffer.
        self.frames_per_window = 0
        self._probe_shapes()
        frames, asr_shape = self.frames_per_window, self._asr_row_shape
        self._out = np.zeros((max_batch, frames, NUM_BLENDSHAPES), dtype=np.float32)
        self._asr = np.zeros((max_batch, *asr_shape), dtype=np.float32) if asr_shape else None
        self.last_asr_logits: np.ndarray | None = None

        # On a GPU, keep the model's inputs and outputs in device buffers bound once
        # (IOBinding): no per-call allocation, and the precondition for CUDA graphs.
        if bind_device is None and self.provider == "CUDAExecutionProvider":
            bind_device = "cuda"
        self.bind_device = bind_device
        #: Batch sizes with bound buffers (and, on CUDA with graphs, one captured graph each).
        self.batch_sizes: tuple[int, ...] = ()
        self._slots: list[_Slot | None] = [None] * (max_batch + 1)
        self._slot_of: list[_Slot | None] = [None] * (max_batch + 1)  #: batch -> slot it runs in
        self._staging: np.ndarray | None = None
        self._shift_session: Any = None  #: the window-shift graph's session (device_io.py)
        self._fetch_session: Any = None  #: the output-fetch graph's session (device_io.py)
        self._advance_rows = 0  #: rows of the last bound call, still on the device (0: none)
        if bind_device is not None:
            self._prepare_slots(batch_slots)
        #: Seconds each batch size's warm-up took (with CUDA graphs: its runs and its capture).
        self.warmup_seconds_by_batch: dict[int, float] = {}
        t0 = time.perf_counter()
        self.warmup()
        #: Seconds the warm-up took (on CUDA with graphs: capturing every graph).
        self.warmup_seconds = time.perf_counter() - t0

    def _check_interface(self) -> bool:
        """Check inputs/outputs against the description; True when the batch is fixed at 1."""
        d = self.description
        ins = {i.name: i for i in self.session.get_inputs()}
        outs = {o.name: o for o in self.session.get_outputs()}
        want_in = {d.audio_input} | ({d.identity_input} if d.identity_input else set())
        want_out = {d.blendshapes_output} | ({d.asr_output} if d.asr_output else set())
        if set(ins) != want_in or not want_out <= set(outs):
            guess = next(
                (f for f, fd in FAMILIES.items() if f != d.family and set(ins) ==
                 {fd.audio_input} | ({fd.identity_input} if fd.identity_input else set())),
                None,
            )  # fmt: skip
            hint = f'; it looks like a {guess} model: set [model] preset = "{guess}"' if guess else ""
            raise BridgeError(
                f"model {self.path} does not match the {d.family} description: "
                f"inputs {sorted(ins)} (expected {sorted(want_in)}), "
                f"outputs {sorted(outs)} (expected {sorted(want_out)}){hint}"
            )
        audio_shape = ins[d.audio_input].shape
        if len(audio_shape) != 2:
            raise BridgeError(
                f"model {self.path}: input {d.audio_input!r} has shape {audio_shape}; "
                "expected [batch, samples]"
            )
        fixed = audio_shape[1]
        if isinstance(fixed, int) and fixed != self.window_samples:
            raise BridgeError(
                f"model {self.path} takes exactly {fixed} samples per call but the window is "
                f"{self.window_samples}; set [model] window_s = {fixed / d.sample_rate:g}"
            )
        batch = audio_shape[0]
        if isinstance(batch, int) and batch != 1:
            raise BridgeError(
                f"model {self.path}: input {d.audio_input!r} has a fixed batch of {batch}; "
                "expected a dynamic batch or 1"
            )
        bs = outs[d.blendshapes_output].shape
        if len(bs) != 3 or (isinstance(bs[2], int) and bs[2] != NUM_BLENDSHAPES):
            raise BridgeError(
                f"model {self.path}: output {d.blendshapes_output!r} has shape {bs}; "
                "expected [batch, frames, 52]"
            )
        return isinstance(batch, int)

    def _check_output(self, shape: tuple[int, ...], batch: int) -> None:
        """What the model actually returned for ``batch`` windows: [batch, frames at 30 fps, 52].

        A declared shape can leave these open (dynamic dimensions); a model that fills
        them wrongly would index past its output, or shift every frame, at run time.
        """
        d = self.description
        exact = self.window_samples * 30 / d.sample_rate
        frames = {int(exact), -int(-exact // 1)}  # floor or ceil: models round either way
        if len(shape) != 3 or shape[0] != batch or shape[2] != NUM_BLENDSHAPES or shape[1] not in frames:
            want = " or ".join(str(f) for f in sorted(frames))
            what = f"a {self.window_samples}-sample window" if batch == 1 else (
                f"{batch} {self.window_samples}-sample windows"
            )  # fmt: skip
            raise BridgeError(
                f"model {self.path}: output {d.blendshapes_output!r} has shape {list(shape)} for "
                f"{what}; expected [{batch}, {want}, {NUM_BLENDSHAPES}] (30 frames per second of "
                f"audio, {NUM_BLENDSHAPES} ARKit blendshapes): is it a LAM or wav2arkit export?"
            )

    def _probe_shapes(self) -> None:
        """One uncaptured run of one silent window: frames per window and the CTC logits' shape."""
        feeds = {self.description.audio_input: np.zeros((1, self.window_samples), dtype=np.float32)}
        if self._ident_name:
            feeds[self._ident_name] = self._onehot[:1]
        results = self.session.run(self._outputs, feeds, self._skip_graph)
        self._check_output(results[0].shape, 1)
        self.frames_per_window = results[0].shape[1]
        self._asr_row_shape: tuple[int, ...] = tuple(results[1].shape[1:]) if len(results) > 1 else ()

    # -- bound buffers (IOBinding) ---------------------------------------------------------------

    def _prepare_slots(self, batch_slots: str) -> None:
        """Bound buffers per batch size: made at start for ``buckets``/``each``, else on first use."""
        if batch_slots == "auto":
            batch_slots = "buckets" if self.cuda_graph else "exact"
        if self.fixed_batch:
            sizes: tuple[int, ...] = (1,)
        elif batch_slots == "exact":
            if self.cuda_graph:
                raise BridgeError("batch_slots = 'exact' makes buffers on first use: no CUDA graphs with it")
            sizes = ()
        else:
            sizes = batch_sizes(self.max_batch, batch_slots)
        for b in sizes:
            self._slots[b] = self._make_slot(b)
        self.batch_sizes = sizes
        if sizes:
            it = iter(sizes)
            b = next(it)
            for n in range(1, sizes[-1] + 1):
                while b < n:
                    b = next(it)
                self._slot_of[n] = self._slots[b]
        if len(sizes) < self.max_batch and not self.fixed_batch and sizes:
            # A batch smaller than its slot is copied here and padded (rows past it are ignored).
            self._staging = np.zeros((self.max_batch, self.window_samples), dtype=np.float32)

    def _make_slot(self, batch: int) -> _Slot:
        import onnxruntime as ort

        device = self.bind_device
        assert device is not None
        d = self.description
        audio = ort.OrtValue.ortvalue_from_shape_and_type([batch, self.window_samples], np.float32, device, 0)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(d.audio_input, audio)
        identity = None
        if self._ident_name:
            # Its own memory (on CPU too, where from_numpy would share the host array's).
            identity = ort.OrtValue.ortvalue_from_shape_and_type(
                [batch, self.description.identity_classes], np.float32, device, 0
            )
            identity.update_inplace(self._onehot[:batch])
            binding.bind_ortvalue_input(self._ident_name, identity)
        shapes = [(batch, self.frames_per_window, NUM_BLENDSHAPES)]
        if self._asr_row_shape:
            shapes.append((batch, *self._asr_row_shape))
        outputs = []
        for name, shape in zip(self._outputs, shapes, strict=True):
            v = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, device, 0)
            binding.bind_ortvalue_output(name, v)
            outputs.append(v)
        options = None
        if self.cuda_graph:
            options = ort.RunOptions()
            options.add_run_config_entry(_GRAPH_ID, str(batch))  # one graph per batch size
        providers = self.session.get_providers()
        if self._shift_session is None:
            self._shift_session = helper_session(shift_model_bytes(), providers)
        shift = WindowShift(self._shift_session, audio, batch, self.window_samples, device)
        fetch = None
        if device != "cpu":
            if self._fetch_session is None:
                self._fetch_session = helper_session(fetch_model_bytes(len(outputs)), providers)
            fetch = OutputFetch(self._fetch_session, outputs, shapes)
        return _Slot(batch, audio, identity, outputs, binding, options, shift, fetch, self._onehot_version)

    def _slot(self, n: int) -> _Slot:
        slot = self._slot_of[n]
        if slot is None:  # uncaptured: exact size, made once
            slot = self._slots[n] = self._slot_of[n] = self._make_slot(n)
        return slot

    def _load(self, slot: _Slot, windows: np.ndarray) -> None:
        """Whole windows into the slot's bound input (and the device's copy it advances from)."""
        if slot.shift is not None:
            slot.shift.load(windows)
        else:
            slot.audio.update_inplace(windows)

    def can_advance(self, n: int) -> bool:
        """Whether :meth:`advance_batch` can take ``n`` rows: the last call was ``n`` bound
        windows, kept on the device."""
        return n > 0 and n == self._advance_rows

    def advance_batch(self, new: np.ndarray, identities: np.ndarray | None = None) -> np.ndarray:
        """Like :meth:`infer_batch` for the last call's windows, each moved on by the ``k``
        samples of its row of ``new`` (``[n, k]``): only those cross to the device.

        The caller vouches that row i continues the last call's row i (the same performer,
        nothing skipped); :meth:`can_advance` says whether the device still has them."""
        n = new.shape[0]
        if not self.can_advance(n):
            raise ValueError(f"no {n} windows to advance: the last call was {self._advance_rows} bound rows")
        if self._ident_name is not None and (identities is not None or self._default_rows < n):
            self._set_identities(n, identities)
        slot = self._slot(n)
        assert slot.shift is not None
        slot.shift.advance(new)
        raw, asr = self._run_bound(None, n)
        if raw.shape != (n, self.frames_per_window, NUM_BLENDSHAPES):
            self._check_output(raw.shape, n)
        if not self._in_order:
            out = self._out[:n]
            np.take(raw, self._to_canonical, axis=2, out=out)
            raw = out
        self.last_asr_logits = asr
        return raw

    def _run_bound(self, windows: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """One bound call for ``n`` windows (padded up to the slot's batch): raw outputs, model order."""
        slot = self._slot(n)
        b = slot.batch
        if windows is not None and b == n:  # (None: already advanced on the device, advance_batch)
            self._load(slot, windows)
        elif windows is not None:
            assert self._staging is not None
            self._staging[:n] = windows
            self._load(slot, self._staging[:b])
        self._advance_rows = n
        if slot.identity is not None and slot.identity_version != self._onehot_version:
            slot.identity.update_inplace(self._onehot[:b])
            slot.identity_version = self._onehot_version
        self.session.run_with_iobinding(slot.binding, slot.run_options)
        if slot.fetch is not None:
            outs = slot.fetch.run()
            raw, asr = outs[0], outs[1] if len(outs) > 1 else None
        else:
            outs = slot.outputs
            raw = outs[0].numpy()
            asr = outs[1].numpy() if len(outs) > 1 else None
        if b != n:
            raw = raw[:n]
            asr = asr[:n] if asr is not None else None
        return raw, asr

    # -- calls -----------------------------------------------------------------------------------

    def _set_identities(self, n: int, identities: np.ndarray | None) -> None:
        """Make one-hot rows 0..n-1 hold ``identities`` (None: the configured identity)."""
        if identities is None:
            if self._default_rows >= n:
                return
            self._onehot[:n] = 0.0
            self._onehot[:n, self.identity] = 1.0
            self._ids[:n] = self.identity
            self._default_rows = n
            self._onehot_version += 1
            return
        ids = np.asarray(identities)
        if ids.shape != (n,):
            raise ValueError(f"identities has shape {ids.shape}; expected ({n},), one per window")
        classes = self.description.identity_classes
        if ids.dtype.kind not in "iu":
            raise ValueError(f"identities has dtype {ids.dtype}; expected integers 0..{classes - 1}")
        if np.array_equal(self._ids[:n], ids):
            return
        if int(ids.min()) < 0 or int(ids.max()) >= classes:
            raise ValueError(f"identities {ids.tolist()}: each must be an identity index 0..{classes - 1}")
        self._onehot[:n] = 0.0
        self._onehot[self._rows[:n], ids] = 1.0
        self._ids[:n] = ids
        same = ids == self.identity
        self._default_rows = n if bool(same.all()) else int(same.argmin())
        self._onehot_version += 1

    def infer_batch(self, windows: np.ndarray, identities: np.ndarray | None = None) -> np.ndarray:
        """Blendshapes for ``B`` windows in one call: ``(B, frames, 52)``, canonical order.

        ``windows`` is float32 ``[B, window_samples]`` (B <= ``max_batch``); ``identities``
        holds one LAM identity index per window (None: the configured one; ignored by
        models without an identity input).  The returned array, like
        ``last_asr_logits`` (``[B, T50, vocab]``), is reused by the next call: copy what
        must outlive it.
        """
        shape = windows.shape
        if len(shape) != 2 or shape[1] != self.window_samples or not 0 < shape[0] <= self.max_batch:
            raise ValueError(
                f"windows has shape {shape}; expected [1..{self.max_batch}, {self.window_samples}]"
            )
        out, self.last_asr_logits = self._call(windows, shape[0], identities)
        return out

    def infer(self, window: np.ndarray) -> np.ndarray:
        """Blendshapes for one window, ``(frames, 52)`` in canonical order (the single-performer path).

        The same as ``infer_batch(window[None])[0]``, with ``last_asr_logits`` that window's
        ``[T50, vocab]``.  The returned array is reused by the next call: copy what must outlive it.
        """
        if window.shape != self._window_shape:
            raise ValueError(f"window has shape {window.shape}; expected ({self.window_samples},)")
        out, asr = self._call(window.reshape(1, -1), 1, None)
        self.last_asr_logits = asr[0] if asr is not None else None
        return out[0]

    def _call(
        self, windows: np.ndarray, n: int, identities: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``n`` checked windows through the model: blendshapes (canonical order) and CTC logits."""
        if windows.dtype != np.float32 or not windows.flags.c_contiguous:
            windows = np.ascontiguousarray(windows, dtype=np.float32)
        if self._ident_name is not None and (identities is not None or self._default_rows < n):
            self._set_identities(n, identities)
        if self.fixed_batch:
            return self._rows_one_by_one(windows, n)
        if self.bind_device is None:
            feeds = self._feeds
            feeds[self._audio_name] = windows
            if n != self._fed_rows and self._ident_name is not None:
                feeds[self._ident_name] = self._onehot[:n]  # a view: later rebuilds show through
                self._fed_rows = n
            results = self.session.run(self._outputs, feeds)
            raw = results[0]
            asr = results[1] if len(results) > 1 else None
        else:
            raw, asr = self._run_bound(windows, n)
        if raw.shape != (n, self.frames_per_window, NUM_BLENDSHAPES):
            self._check_output(raw.shape, n)
        if self._in_order:
            return raw, asr  # already a fresh array per call: no copy needed
        out = self._out[:n]
        np.take(raw, self._to_canonical, axis=2, out=out)
        return out, asr

    def _rows_one_by_one(self, windows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """A fixed-batch-1 model: each window its own call, gathered into the batch buffers."""
        bound = self.bind_device is not None
        feeds = self._feeds
        asr_out = self._asr
        for i in range(n):
            row = windows[i : i + 1]
            if bound:
                slot = self._slot(1)
                slot.audio.update_inplace(row)
                if slot.identity is not None:
                    slot.identity.update_inplace(self._onehot[i : i + 1])
                    slot.identity_version = -1  # holds row i's identity, not rows 0..b-1
                self.session.run_with_iobinding(slot.binding, slot.run_options)
                results = [v.numpy() for v in slot.outputs]
            else:
                feeds[self._audio_name] = row
                if self._ident_name is not None:
                    feeds[self._ident_name] = self._onehot[i : i + 1]
                    self._fed_rows = 0
                results = self.session.run(self._outputs, feeds)
            if results[0].shape != (1, self.frames_per_window, NUM_BLENDSHAPES):
                self._check_output(results[0].shape, 1)
            np.take(results[0][0], self._to_canonical, axis=1, out=self._out[i])
            if asr_out is not None:
                asr_out[i] = results[1][0]
        return self._out[:n], (asr_out[:n] if asr_out is not None else None)

    def warmup(self, runs: int = 2) -> None:
        """Run silence through the model so the first real hop pays no allocation or tuning cost.

        On CUDA with graphs every batch size's graph is captured here: ORT captures a graph
        id on a later run, after a regular one has made its allocations.
        """
        zeros = np.zeros((self.max_batch, self.window_samples), dtype=np.float32)
        graphs = self.cuda_graph and not self.fixed_batch
        # Largest first: the arena grows once, the smaller graphs' buffers fit in what it has.
        for b in reversed(self.batch_sizes) if graphs else (1,):
            t0 = time.perf_counter()
            for _ in range(max(runs, 3) if self.cuda_graph else runs):
                self.infer_batch(zeros[:b])
            self.warmup_seconds_by_batch[b] = time.perf_counter() - t0
        if not graphs and self.max_batch > 1 and not self.fixed_batch:
            self.infer_batch(zeros)  # the full batch's allocations too
        for slot in {id(s): s for s in self._slots if s is not None and s.shift is not None}.values():
            assert slot.shift is not None
            slot.shift.load(zeros[: slot.batch])  # the shift graph's own allocations, once
            slot.shift.advance(zeros[: slot.batch, : min(534, self.window_samples)])
        self._advance_rows = 0  # nothing the engine sent is on the device yet
