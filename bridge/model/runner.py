"""ONNX Runtime session for one model, checked against its description.

The runner owns everything model-specific: provider choice (and reporting the
provider that *actually* runs, since ONNX Runtime falls back to CPU silently),
the identity input, warm-up, and mapping the blendshape outputs by name into
the bridge's canonical order.  The hop loop just hands it a window of audio.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.blendshapes import NUM_BLENDSHAPES, model_to_canonical
from bridge.errors import BridgeError
from bridge.model.description import FAMILIES, ModelDescription
from bridge.model.files import check_model_files
from bridge.model.session_cache import create_session, session_options

if TYPE_CHECKING:
    pass

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


class ModelRunner:
    """Runs windows of 16 kHz audio through one ONNX model."""

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
    ) -> None:

        self.path = Path(path)
        self.description = description
        self.window_samples = window_samples
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
        self._check_interface()
        self._to_canonical = model_to_canonical(description.output_order)
        self._feeds: dict[str, np.ndarray] = {}
        if description.identity_input:
            onehot = np.zeros((1, description.identity_classes), dtype=np.float32)
            onehot[0, identity] = 1.0
            self._feeds[description.identity_input] = onehot
        self._outputs = [description.blendshapes_output]
        if description.asr_output:
            self._outputs.append(description.asr_output)
        self.last_asr_logits: np.ndarray | None = None
        self.frames_per_window = 0
        self._mapped = np.zeros((0, NUM_BLENDSHAPES), dtype=np.float32)
        self._out_shape: tuple[int, ...] | None = None
        # On a GPU, keep the model's inputs and outputs in device buffers bound once
        # (IOBinding): no per-call allocation, and the precondition for CUDA graphs.
        if bind_device is None and self.provider == "CUDAExecutionProvider":
            bind_device = "cuda"
        self._binding: Any = None
        if bind_device is not None:
            self._bind(bind_device)
        self.warmup()

    def _check_interface(self) -> None:
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
        bs = outs[d.blendshapes_output].shape
        if len(bs) != 3 or (isinstance(bs[2], int) and bs[2] != NUM_BLENDSHAPES):
            raise BridgeError(
                f"model {self.path}: output {d.blendshapes_output!r} has shape {bs}; "
                "expected [batch, frames, 52]"
            )

    def _check_output(self, shape: tuple[int, ...]) -> None:
        """What the model actually returned for a window: [1, frames at 30 fps, 52].

        A declared shape can leave these open (dynamic dimensions); a model that fills
        them wrongly would index past its output, or shift every frame, at run time.
        """
        d = self.description
        exact = self.window_samples * 30 / d.sample_rate
        frames = {int(exact), -int(-exact // 1)}  # floor or ceil: models round either way
        if len(shape) != 3 or shape[0] != 1 or shape[2] != NUM_BLENDSHAPES or shape[1] not in frames:
            want = " or ".join(str(f) for f in sorted(frames))
            raise BridgeError(
                f"model {self.path}: output {d.blendshapes_output!r} has shape {list(shape)} for a "
                f"{self.window_samples}-sample window; expected [1, {want}, {NUM_BLENDSHAPES}] "
                f"(30 frames per second of audio, {NUM_BLENDSHAPES} ARKit blendshapes): "
                "is it a LAM or wav2arkit export?"
            )

    def warmup(self, runs: int = 2) -> None:
        """Run zeros through the model so the first real hop pays no allocation or tuning cost."""
        zeros = np.zeros(self.window_samples, dtype=np.float32)
        for _ in range(runs):
            self.infer(zeros)

    def _bind(self, device: str) -> None:
        """Bind device buffers for the audio, identity and every output (shapes from one run)."""
        import onnxruntime as ort

        d = self.description
        zeros = np.zeros((1, self.window_samples), dtype=np.float32)
        shapes = [r.shape for r in self.session.run(self._outputs, {**self._feeds, d.audio_input: zeros})]
        binding = self.session.io_binding()
        self._audio_value = ort.OrtValue.ortvalue_from_numpy(zeros, device, 0)
        binding.bind_ortvalue_input(d.audio_input, self._audio_value)
        self._bound_inputs = [self._audio_value]
        for name, value in self._feeds.items():
            v = ort.OrtValue.ortvalue_from_numpy(value, device, 0)
            binding.bind_ortvalue_input(name, v)
            self._bound_inputs.append(v)
        self._output_values = []
        for name, shape in zip(self._outputs, shapes, strict=True):
            v = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, device, 0)
            binding.bind_ortvalue_output(name, v)
            self._output_values.append(v)
        self._binding = binding
        self.bind_device = device

    def _run(self, window: np.ndarray) -> list[np.ndarray]:
        if self._binding is None:
            self._feeds[self.description.audio_input] = window.reshape(1, -1)
            return self.session.run(self._outputs, self._feeds)
        self._audio_value.update_inplace(window.reshape(1, -1))
        self.session.run_with_iobinding(self._binding)
        return [v.numpy() for v in self._output_values]

    def infer(self, window: np.ndarray) -> np.ndarray:
        """Blendshapes for one window, ``(frames, 52)`` in canonical order.

        The returned array is reused by the next call: copy what must outlive it.
        """
        results = self._run(window)
        if results[0].shape != self._out_shape:  # the first call (warm-up), checked once
            self._check_output(results[0].shape)
            self._out_shape = results[0].shape
            self._mapped = np.zeros((results[0].shape[1], NUM_BLENDSHAPES), dtype=np.float32)
            self.frames_per_window = results[0].shape[1]
        raw = results[0][0]
        np.take(raw, self._to_canonical, axis=1, out=self._mapped)
        if len(results) > 1:
            self.last_asr_logits = results[1][0]
        return self._mapped
