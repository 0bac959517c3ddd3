"""Windows kept on the device and moved on by the new samples give the frames that whole
windows give (bridge.model.device_io.py).

Real ONNX Runtime sessions with bound buffers on the CPU (``bind_device="cpu"``): the same
code as the GPU's IOBinding path, with the shift graph on the CPU provider.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bridge import engine as engine_module
from bridge.config import parse_config
from bridge.engine import Bridge
from bridge.frame import FaceFrame
from bridge.model.description import LAM
from bridge.model.runner import ModelRunner
from bridge.modeltools.synth import synthesize

W = 8000


@pytest.fixture(scope="module")
def lam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize("lam", "tiny", tmp_path_factory.mktemp("shift") / "lam.onnx")


def _runner(path: Path, **kw: object) -> ModelRunner:
    return ModelRunner(path, LAM, providers=["cpu"], threads=1, cache_optimized=False,
                       window_samples=W, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_advanced_windows_give_the_frames_of_whole_windows(lam: Path) -> None:
    rng = np.random.default_rng(4)
    stream = rng.uniform(-0.4, 0.4, (3, 40_000)).astype(np.float32)
    bound = _runner(lam, max_batch=4, bind_device="cpu", batch_slots="buckets")  # 3 rows in a slot of 4
    plain = _runner(lam, max_batch=4)
    assert not bound.can_advance(3)  # nothing the caller sent is on the device yet
    end = W
    bound.infer_batch(np.ascontiguousarray(stream[:, end - W : end]))
    advanced = 0
    for k in [533, 534, 533, 1, 2000, W, 534]:
        assert bound.can_advance(3) and not bound.can_advance(2)
        got = bound.advance_batch(stream[:, end : end + k]).copy()  # a strided view, as the engine's
        got_logits = bound.last_asr_logits.copy()
        end += k
        want = plain.infer_batch(np.ascontiguousarray(stream[:, end - W : end]))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_logits, plain.last_asr_logits, rtol=1e-5, atol=1e-5)
        advanced += 1
    assert advanced == 7
    with pytest.raises(ValueError, match="advance by 1"):
        bound.advance_batch(stream[:, :0])
    bound.infer_batch(np.ascontiguousarray(stream[:2, :W]))  # another batch: the device has those now
    assert bound.can_advance(2) and not bound.can_advance(3)
    with pytest.raises(ValueError, match="no 3 windows"):
        bound.advance_batch(stream[:, :10])


def _performers(wav: Path, n: int) -> list[dict]:
    return [{"name": f"p{c}", "subject": f"S{c}", "identity": c,
             "input": {"kind": "file", "file": str(wav), "channel": c}} for c in range(n)]  # fmt: skip


@pytest.mark.parametrize("min_rows", [1, 16], ids=["moved-on", "under-the-threshold"])
def test_the_engine_moves_windows_on_the_device_and_publishes_the_same_frames(
    tmp_path: Path, lam: Path, min_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four performers in step: after the first hop only new samples go to the model's bound
    input (a batch of 4 does so when the threshold allows it; by default batches under 16
    rows upload whole windows), and every performer's frames equal those of whole windows,
    one call each."""
    monkeypatch.setattr(engine_module, "ADVANCE_MIN_ROWS", min_rows)
    wav = tmp_path / "four.wav"
    rng = np.random.default_rng(5)
    soundfile.write(str(wav), rng.uniform(-0.3, 0.3, (16000 * 2, 4)).astype(np.float32), 16000)
    cfg = parse_config(json.loads(json.dumps({
        "performer": _performers(wav, 4),
        "model": {"preset": "synthetic-tiny", "path": str(lam), "providers": ["cpu"], "threads": 1,
                  "fallback": "", "window_s": W / 16000},
        "output": [],
    })), "t.toml")  # fmt: skip

    def run(bound: bool) -> tuple[dict[tuple[int, int], np.ndarray], int]:
        got: dict[tuple[int, int], np.ndarray] = {}

        def on_frame(f: FaceFrame) -> None:
            got[(f.performer, f.number)] = f.values.copy()

        bridge = Bridge(cfg, raw=True, on_frame=on_frame, batched=bound)
        calls = {"advance": 0}
        if bound:  # the GPU's bound path, on the CPU
            runner = bridge.runner = _runner(lam, max_batch=4, bind_device="cpu")
            advance = runner.advance_batch

            def counted(new: np.ndarray, identities: np.ndarray | None = None) -> np.ndarray:
                calls["advance"] += 1
                return advance(new, identities)

            runner.advance_batch = counted  # type: ignore[method-assign]
        try:
            bridge.run()
        finally:
            bridge.close()
        return got, calls["advance"]

    shifted, advances = run(True)
    alone, _ = run(False)
    assert shifted.keys() == alone.keys() and len(shifted) == 4 * 60
    if min_rows == 1:
        assert advances >= 10  # the file is read fast: several frames per hop, still one continuing run
    else:
        assert advances == 0
    for key, values in shifted.items():
        np.testing.assert_allclose(values, alone[key], rtol=1e-4, atol=2e-5, err_msg=str(key))


def test_the_output_fetch_copies_bound_outputs_into_the_same_host_arrays() -> None:
    """The fetch graph (the GPU path copies the model's device outputs with it) run on the CPU:
    each call overwrites the same host arrays with the bound values of that moment."""
    import onnxruntime as ort

    from bridge.model.device_io import OutputFetch, fetch_model_bytes, helper_session

    session = helper_session(fetch_model_bytes(2), ["CPUExecutionProvider"])
    shapes = [(3, 30, 52), (3, 49, 32)]
    values = [ort.OrtValue.ortvalue_from_shape_and_type(list(s), np.float32, "cpu", 0) for s in shapes]
    fetch = OutputFetch(session, values, shapes)
    rng = np.random.default_rng(6)
    for _ in range(2):
        want = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        for v, w in zip(values, want, strict=True):
            v.update_inplace(w)
        got = fetch.run()
        assert [g is a for g, a in zip(got, fetch.arrays, strict=True)] == [True, True]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
