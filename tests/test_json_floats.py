"""The batch ``%.7g`` formatter writes exactly what Python's ``b"%.7g" % v`` writes."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.outputs import json_floats
from bridge.outputs.json_floats import Float7g


def python(row: np.ndarray) -> bytes:
    return b",".join(b"%.7g" % float(v) for v in row)


def check(values: np.ndarray, formatter: Float7g | None = None) -> list[bool]:
    got = (formatter or Float7g()).format_rows(values)
    if got is None:
        pytest.skip("big-endian machine: the batch formatter steps aside")
    texts, ok = got
    assert len(texts) == len(ok) == len(values)
    for row, text, good in zip(values, texts, ok, strict=True):
        assert good == bool(np.isfinite(row).all())
        if good:
            assert text == python(row)
    return ok


def test_blendshape_like_values() -> None:
    rng = np.random.default_rng(0)
    v = rng.random((300, 52), dtype=np.float32)
    v[v < 0.05] = 0.0
    v[:, 3] = -v[:, 3] * 1e-3  # small negatives, some in scientific notation
    v[:, 4] = rng.random(300, dtype=np.float32) ** 12  # down to 1e-12 and below
    check(v)


def test_every_kind_of_float32() -> None:
    bits = np.random.default_rng(1).integers(0, 2**32, (1500, 52), dtype=np.uint64).astype(np.uint32)
    v = bits.view(np.float32)  # any exponent, denormals, some NaN / inf rows
    ok = check(v)
    assert 0 < sum(ok) < len(ok)


def test_edges_powers_of_ten_and_ties() -> None:
    p = np.array([10.0**k for k in range(-45, 39)], dtype=np.float32)
    around = np.concatenate([np.nextafter(p, np.float32(0)), p, np.nextafter(p, np.float32(np.inf))])
    special = np.array([0.0, -0.0, 1.0, 0.5, 1e-4, 9.9999995e-5, 9999999.0, 1e7, 8388608.0, 1e-45, -1e-45,
                        3.4028235e38, 0.00048828125, 99999.995, 9.9999995], dtype=np.float32)  # fmt: skip
    ties = (np.arange(1, 52 * 100 + 1) * 2.0**-20).astype(np.float32)  # exact halves at the 8th digit
    for v in (around, special, ties, -ties, ties * np.float32(1000.0)):
        check(np.resize(v, (-(-v.size // 52), 52)).astype(np.float32))


def test_buffers_are_reused_and_batches_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(json_floats, "CHUNK", 52 * 3)  # several passes per call
    f = Float7g()
    rng = np.random.default_rng(2)
    check(rng.random((10, 52), dtype=np.float32), f)
    check(rng.random((1, 52), dtype=np.float32), f)  # smaller after bigger: same buffers
    check(rng.random((7, 52), dtype=np.float32) * 1e6, f)
