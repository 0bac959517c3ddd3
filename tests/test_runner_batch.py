"""Batched inference: one model call for several performers gives each the frames it gets alone.

Real ONNX Runtime sessions (CPU) on synthetic models built with onnx + numpy.  The CUDA
graph path needs a GPU (scripts/bench_batch.py checks it there); its padding to bucket
sizes and its per-size bound buffers are the same code on CPU with ``bind_device="cpu"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bridge.config import parse_config
from bridge.errors import BridgeError
from bridge.model.description import LAM, WAV2ARKIT
from bridge.model.runner import ModelRunner, batch_sizes
from bridge.modeltools.synth import ORACLE_IDENTITY_STEP, oracle_value, synthesize

W = 16000
RTOL, ATOL = 1e-4, 2e-5  # float32; MLAS may sum a batched MatMul in another order


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("batch-models")
    return {
        "lam": synthesize("lam", "tiny", d / "lam.onnx"),
        "wav2arkit": synthesize("wav2arkit", "tiny", d / "w2a.onnx"),
        "oracle": synthesize("lam", "tiny", d / "oracle.onnx", oracle=True),
    }


def _runner(path: Path, desc=LAM, **kw: object) -> ModelRunner:
    return ModelRunner(path, desc, providers=["cpu"], threads=1, cache_optimized=False, **kw)  # type: ignore[arg-type]


def _windows(n: int, seed: int) -> np.ndarray:
    """Distinct audio per row: noise at a different level and a tone at a different pitch."""
    rng = np.random.default_rng(seed)
    t = np.arange(W, dtype=np.float32) / W
    rows = [
        (0.05 + 0.05 * i) * rng.standard_normal(W) + 0.3 * np.sin(2 * np.pi * (110 + 37 * i) * t)
        for i in range(n)
    ]
    return np.asarray(rows, dtype=np.float32)


def _alone(runner: ModelRunner, windows: np.ndarray, ids: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Each window through the model on its own (batch of one): frames and CTC logits."""
    frames, logits = [], []
    for i in range(windows.shape[0]):
        out = runner.infer_batch(windows[i : i + 1], None if ids is None else ids[i : i + 1])
        frames.append(out[0].copy())
        if runner.last_asr_logits is not None:
            logits.append(runner.last_asr_logits[0].copy())
    return np.stack(frames), (np.stack(logits) if logits else None)


@pytest.mark.parametrize("family", ["lam", "wav2arkit"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_batched_rows_equal_each_window_alone(models: dict[str, Path], family: str, batch: int) -> None:
    """With the CTC head (LAM) and without (wav2arkit); LAM rows with mixed identities."""
    desc = LAM if family == "lam" else WAV2ARKIT
    single = _runner(models[family], desc)
    batched = _runner(models[family], desc, max_batch=8)
    windows = _windows(batch, seed=batch)
    ids = np.array([0, 5, 11, 3, 0, 7, 2, 9][:batch]) if family == "lam" else None
    want, want_logits = _alone(single, windows, ids)

    got = batched.infer_batch(windows, ids)
    assert got.shape == (batch, batched.frames_per_window, 52) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    if family == "lam":
        assert batched.last_asr_logits is not None and want_logits is not None
        assert batched.last_asr_logits.shape == (batch, *want_logits.shape[1:])
        np.testing.assert_allclose(batched.last_asr_logits, want_logits, rtol=RTOL, atol=1e-4)
    else:
        assert batched.last_asr_logits is None
    # Rows really differ: the check above would pass for a model that ignored all but row 0.
    if batch > 1:
        assert np.abs(got[1] - got[0]).max() > 1e-3


def test_infer_is_the_batch_of_one(models: dict[str, Path]) -> None:
    runner = _runner(models["lam"], identity=4, max_batch=4)
    window = _windows(1, seed=11)[0]
    one = runner.infer(window).copy()
    logits = runner.last_asr_logits
    assert one.shape == (runner.frames_per_window, 52)
    assert logits is not None and logits.ndim == 2  # [T50, vocab]: what the hop loop reads
    logits = logits.copy()
    np.testing.assert_array_equal(runner.infer_batch(window[None])[0], one)
    np.testing.assert_array_equal(runner.infer_batch(window[None], np.array([4]))[0], one)
    assert runner.last_asr_logits is not None and runner.last_asr_logits.shape == (1, *logits.shape)
    np.testing.assert_array_equal(runner.last_asr_logits[0], logits)


def test_identity_changes_only_its_rows(models: dict[str, Path]) -> None:
    runner = _runner(models["lam"], max_batch=4)
    same = np.repeat(_windows(1, seed=2), 4, axis=0)  # one window, four times
    neutral = runner.infer_batch(same).copy()
    np.testing.assert_allclose(neutral[1:], np.broadcast_to(neutral[0], neutral[1:].shape), atol=1e-6)

    mixed = runner.infer_batch(same, np.array([0, 0, 6, 0])).copy()
    for row in (0, 1, 3):
        np.testing.assert_allclose(mixed[row], neutral[row], rtol=RTOL, atol=ATOL)
    assert np.abs(mixed[2] - neutral[2]).max() > 1e-3  # identity 6 moves this face, only this one

    # Back to the configured identity (None): every row neutral again.
    np.testing.assert_allclose(runner.infer_batch(same), neutral, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("bind", [None, "cpu"])
def test_fixed_batch_model_runs_row_by_row(models: dict[str, Path], bind: str | None) -> None:
    """The oracle takes exactly [1, W]: infer_batch runs it per row, each value known exactly."""
    runner = _runner(models["oracle"], max_batch=5, bind_device=bind)
    assert runner.fixed_batch
    levels = np.array([0.1, -0.2, 0.3, 0.0, 0.25], dtype=np.float32)
    windows = np.repeat(levels[:, None], W, axis=1)
    ids = np.array([0, 3, 11, 3, 1])
    out = runner.infer_batch(windows, ids)
    assert out.shape == (5, runner.frames_per_window, 52)
    for i in range(5):
        want = [oracle_value(float(levels[i]), j, int(ids[i])) for j in range(52)]
        np.testing.assert_allclose(out[i], np.broadcast_to(want, out[i].shape), atol=1e-6)
    assert runner.last_asr_logits is not None and runner.last_asr_logits.shape[0] == 5
    # Identity by itself shifts every channel by exactly its step.
    again = runner.infer_batch(windows[:2], np.array([2, 2]))
    np.testing.assert_allclose(again[1] - again[0], levels[1] - levels[0], atol=1e-6)
    assert again[0, 0, 0] == pytest.approx(float(levels[0]) + 2 * ORACLE_IDENTITY_STEP, abs=1e-6)


@pytest.mark.parametrize(("bind", "slots"), [(None, "exact"), ("cpu", "exact"), ("cpu", "buckets")])
def test_buffers_reused_across_batch_sizes(models: dict[str, Path], bind: str | None, slots: str) -> None:
    """Calls of different sizes, identities and padding in turn: each result is its windows' own."""
    single = _runner(models["lam"])
    runner = _runner(models["lam"], max_batch=8, bind_device=bind, batch_slots=slots)
    if slots == "buckets":
        assert runner.batch_sizes == (1, 2, 4, 8)
    pool = _windows(8, seed=21)
    ids_pool = np.array([1, 2, 3, 4, 5, 6, 7, 8])
    for n, rows, ids in [
        (8, slice(0, 8), ids_pool),  # the full batch
        (2, slice(3, 5), None),  # configured identity after custom ones
        (5, slice(1, 6), ids_pool[2:7]),  # padded to 8 with buckets: rows 5..7 are stale, ignored
        (1, slice(7, 8), ids_pool[:1]),
        (3, slice(0, 3), np.array([11, 0, 11])),  # padded to 4
        (8, slice(0, 8), None),
    ]:
        windows = np.ascontiguousarray(pool[rows])
        want, want_logits = _alone(single, windows, ids)
        got = runner.infer_batch(windows, ids)
        assert got.shape[0] == n
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
        assert runner.last_asr_logits is not None and want_logits is not None
        np.testing.assert_allclose(runner.last_asr_logits, want_logits, rtol=RTOL, atol=1e-4)


def test_windows_may_be_a_view_of_a_larger_buffer(models: dict[str, Path]) -> None:
    """The engine passes windows[:B] of its preallocated [max_performers, W] buffer."""
    runner = _runner(models["lam"], max_batch=6, bind_device="cpu", batch_slots="buckets")
    buffer = _windows(6, seed=5)
    want = runner.infer_batch(buffer[:3].copy()).copy()
    np.testing.assert_array_equal(runner.infer_batch(buffer[:3]), want)
    strided = np.asfortranarray(buffer)[:3]  # not C-contiguous: copied, same result
    np.testing.assert_array_equal(runner.infer_batch(strided), want)


def test_batch_sizes() -> None:
    assert batch_sizes(1) == (1,)
    assert batch_sizes(2) == (1, 2)
    assert batch_sizes(5) == (1, 2, 4, 5)
    assert batch_sizes(8) == (1, 2, 4, 8)
    assert batch_sizes(300) == (1, 2, 4, 8, 16, 32, 64, 128, 256, 300)
    assert batch_sizes(3, "each") == (1, 2, 3)


def test_bad_calls_are_refused(models: dict[str, Path]) -> None:
    runner = _runner(models["lam"], max_batch=3)
    windows = _windows(3, seed=1)
    with pytest.raises(ValueError, match="0..11"):
        runner.infer_batch(windows, np.array([0, 12, 1]))
    with pytest.raises(ValueError, match="0..11"):
        runner.infer_batch(windows, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match="one per window"):
        runner.infer_batch(windows, np.array([0, 1]))
    with pytest.raises(ValueError, match="integers"):
        runner.infer_batch(windows, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"expected \[1..3, 16000\]"):
        runner.infer_batch(_windows(4, seed=1))
    with pytest.raises(ValueError, match="expected"):
        runner.infer_batch(windows[:, :8000])
    # A refused call leaves the runner as it was.
    np.testing.assert_allclose(runner.infer_batch(windows[:1])[0], _runner(models["lam"]).infer(windows[0]),
                               rtol=RTOL, atol=ATOL)  # fmt: skip


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"identity": 12}, "identity = 12: allowed 0..11"),
        ({"max_batch": 0}, "max_batch = 0: allowed 1..1024"),
    ],
)
def test_bad_runner_settings_are_one_line(models: dict[str, Path], kw: dict, fragment: str) -> None:
    with pytest.raises(BridgeError, match=fragment) as e:
        _runner(models["lam"], **kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ({"identity": 12}, "model.identity = 12 is out of range; allowed: 0..11 (0 = neutral)"),
        ({"identity": -1}, "model.identity = -1 is out of range; allowed: 0..11"),
        ({"max_batch": 1025}, "model.max_batch = 1025 is out of range; allowed: 0..1024"),
        ({"max_batch": -1}, "model.max_batch = -1 is out of range"),
        ({"max_batch": 2.5}, "expected an integer"),
    ],
)
def test_bad_identity_and_max_batch_refused_at_config_time(model: dict, fragment: str) -> None:
    with pytest.raises(BridgeError) as e:
        parse_config({"model": model}, "show.toml")
    msg = str(e.value)
    assert msg.startswith("show.toml: ") and fragment in msg and "\n" not in msg


def test_max_batch_config_default_and_range() -> None:
    assert parse_config({}).model.max_batch == 0  # 0: the engine passes its number of performers
    assert parse_config({"model": {"max_batch": 512}}).model.max_batch == 512
