"""Windows kept on the device and moved on by the new samples give the frames that whole
windows give (bridge.model.device_io.py).

Real ONNX Runtime sessions with bound buffers on the CPU (``bind_device="cpu"``): the same
code as the GPU's IOBinding path, with the shift graph on the CPU provider.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from bridge import engine as engine_module
from bridge.config import parse_config
from bridge.engine import Bridge
from bridge.frame import FaceFrame
from bridge.model.call_thread import ModelThread
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


@pytest.mark.parametrize(("min_rows", "model_thread"), [(1, False), (16, False), (1, True)],
                         ids=["moved-on", "under-the-threshold", "moved-on-model-thread"])
def test_the_engine_moves_windows_on_the_device_and_publishes_the_same_frames(
    tmp_path: Path, lam: Path, min_rows: int, model_thread: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four performers in step: after the first hop only new samples go to the model's bound
    input (a batch of 4 does so when the threshold allows it; by default batches under 16
    rows upload whole windows), and every performer's frames (blendshapes, speech
    probability, text) equal those of whole windows, one call each.  With the model thread
    and the sending thread a GPU model gets (forced here): the file is read faster than real
    time, so every hop's call runs while the last hop's frames are posted and sent."""
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

    def run(bound: bool) -> tuple[dict[tuple[int, int], tuple[np.ndarray, float | None, str]], int]:
        got: dict[tuple[int, int], tuple[np.ndarray, float | None, str]] = {}

        def on_frame(f: FaceFrame) -> None:
            got[(f.performer, f.number)] = (f.values.copy(), f.speech_prob, f.text)

        # (with the model thread, one frame per hop: a late hop's stride would depend on timing)
        bridge = Bridge(cfg, raw=True, on_frame=on_frame, batched=bound, live_hops=model_thread)
        calls = {"advance": 0}
        threads: set[str] = set()
        if bound and model_thread:
            bridge.model_thread = ModelThread()
            bridge.publisher.sender.threaded = True
            hold = bridge._hold_logits

            def held(logits: np.ndarray) -> np.ndarray:  # a call went out before these were used
                calls["overlapped"] = calls.get("overlapped", 0) + 1
                return hold(logits)

            bridge._hold_logits = held  # type: ignore[method-assign]
        if bound:  # the GPU's bound path, on the CPU
            runner = bridge.runner = _runner(lam, max_batch=4, bind_device="cpu")
            advance = runner.advance_batch

            def counted(new: np.ndarray, identities: np.ndarray | None = None) -> np.ndarray:
                calls["advance"] += 1
                threads.add(threading.current_thread().name)
                out = advance(new, identities)  # (its outputs overwrite the last call's at once)
                if model_thread:  # a call as slow as a GPU's at 256 performers: the loop falls behind
                    time.sleep(0.03)
                return out

            runner.advance_batch = counted  # type: ignore[method-assign]
        try:
            bridge.run()
        finally:
            bridge.close()
        if bound and model_thread:
            assert calls.get("overlapped", 0) >= 10
        if calls["advance"]:
            assert threads == ({"a2e-model"} if model_thread else {threading.current_thread().name})
        return got, calls["advance"]

    shifted, advances = run(True)
    alone, _ = run(False)
    assert shifted.keys() == alone.keys() and len(shifted) == 4 * 60
    if min_rows == 1:
        assert advances >= 10  # the file is read fast: several frames per hop, still one continuing run
    else:
        assert advances == 0
    for key, (values, prob, text) in shifted.items():
        np.testing.assert_allclose(values, alone[key][0], rtol=1e-4, atol=2e-5, err_msg=str(key))
        assert prob is not None and prob == pytest.approx(alone[key][1], abs=1e-5)
        assert text == alone[key][2]
    assert len({prob for _v, prob, _t in shifted.values()}) > 10  # the CTC head really speaks


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
