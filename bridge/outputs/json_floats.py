"""``%.7g`` of many float32 values at once, byte for byte what Python's ``b"%.7g" % v`` writes.

ZeroMQ's JSON messages carry 52 values per frame as ``%.7g``; Python formats each float on
its own (~110 ns: nearly 6 µs a frame, most of a message's cost).  Here a whole batch is
formatted with numpy, in three steps:

1. Digits: the 7 significant digits are ``rint(|v| * 10**(6 - e))`` in float64.  A float32
   is exact in float64 and the product is off by at most a few parts in 1e16, so the
   rounding is the correctly rounded one (what Python writes) unless the product lies within
   1e-8 of a half; such values (exact ties among them) are formatted by Python instead.
2. Text, in two little-endian 64-bit words per value: the digits' ASCII from two small
   tables, then as ``%g`` lays them out: fixed notation for exponents -4 to 6 (the point or
   the ``0.000`` prefix shifted in) or ``d.dddddde-XX``; trailing zeros of the fraction
   dropped (and the point with them), the comma after the last character, a ``-`` in front.
3. The words viewed as bytes, each value's prefix kept: one boolean compaction per batch.

A row with a non-finite value is left to Python (:func:`format_rows` says which).
Little-endian machines only (elsewhere :func:`format_rows` gives None: format in Python).
"""

from __future__ import annotations

import sys

import numpy as np

_DIGITS = 7
_E_MIN, _E_MAX = -4, 6  #: exponents %g writes without an exponent part, for 7 digits
_POW_BIAS = 64
#: 10.0 ** (i - _POW_BIAS): float32 values need -45 .. 51 (from Python, so each is the closest double)
_POW10F = np.array([10.0 ** (i - _POW_BIAS) for i in range(2 * _POW_BIAS)])
_MASK = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)  #: low k bytes
_U8 = np.uint64(8)
LITTLE_ENDIAN = sys.byteorder == "little"


def _ascii_words(count: int, width: int) -> np.ndarray:
    """``i`` -> its ``width`` decimal digits as ASCII bytes in a uint64 (first digit lowest)."""
    words = np.zeros(count, dtype=np.uint64)
    for j in range(width):
        digit = (np.arange(count) // 10 ** (width - 1 - j)) % 10
        words |= (digit + ord("0")).astype(np.uint64) << np.uint64(8 * j)
    return words


def _trailing_zeros(count: int, width: int) -> np.ndarray:
    i = np.arange(count)
    tz = np.zeros(count, dtype=np.int64)
    for t in range(1, width + 1):
        tz += i % 10**t == 0
    return tz


_WORD4, _WORD3 = _ascii_words(10_000, 4), _ascii_words(1_000, 3)
_TZ4, _TZ3 = _trailing_zeros(10_000, 4), _trailing_zeros(1_000, 3)
#: "0.", "0.0", "0.00", "0.000" as words, by prefix length 2..5
_PREFIX = np.array([int.from_bytes(("0." + "0" * (k - 2)).encode().ljust(8, b"\0"), "little") if k >= 2 else 0
                    for k in range(6)], dtype=np.uint64)  # fmt: skip


#: Rows formatted per pass: a pass's arrays then stay small enough (~50 kB) for the C library
#: to hand out again from its heap, where whole batches (MBs of temporaries) would be mapped
#: and unmapped, and page-faulted in, every time (measured: twice as slow).
CHUNK_ROWS = 128


def format_rows(values: np.ndarray) -> tuple[list[bytes], list[bool]] | None:
    """``values`` ``[M, K]`` float32 -> per row ``b",".join(b"%.7g" % v for v in row)``.

    Returns ``(texts, ok)``: ``ok[i]`` False where row ``i`` holds a non-finite value (its
    text is then empty: format that row in Python); None on a big-endian machine."""
    if not LITTLE_ENDIAN:
        return None
    x = np.ascontiguousarray(values, dtype=np.float32)
    texts: list[bytes] = []
    ok: list[bool] = []
    for start in range(0, x.shape[0], CHUNK_ROWS):
        t, o = _format_chunk(x[start : start + CHUNK_ROWS])
        texts += t
        ok += o
    return texts, ok


def _format_chunk(x: np.ndarray) -> tuple[list[bytes], list[bool]]:
    rows, k = x.shape
    flat = x.reshape(-1)
    finite = np.isfinite(flat)
    mag = np.abs(flat).astype(np.float64)
    zero = mag == 0.0
    safe = np.where(finite & ~zero, mag, 1.0)
    e = np.floor(np.log10(safe)).astype(np.int64)  # the decimal exponent; may be one off: fixed below
    y = safe * _POW10F[_DIGITS - 1 - e + _POW_BIAS]
    for _ in range(3):
        high, low = y >= 9999999.5, y < 999999.5
        wrong = high | low
        if not wrong.any():
            break
        at = np.flatnonzero(wrong)
        e[at] += np.where(high[at], 1, -1)
        y[at] = safe[at] * _POW10F[_DIGITS - 1 - e[at] + _POW_BIAS]
    n = np.rint(y)
    near_half = np.abs(y - np.floor(y) - 0.5) < 1e-8  # too close to call in float64: Python decides
    n[zero] = 0.0
    e[zero] = 0
    # the 7 digits as ASCII in one word: the first four from one table, the last three from another
    top = np.floor(n / 1000.0)
    bottom = (n - top * 1000.0).astype(np.intp)
    top = top.astype(np.intp)
    digits = _WORD4[top] | (_WORD3[bottom] << np.uint64(32))
    trailing = np.where(bottom == 0, 3 + _TZ4[top], _TZ3[bottom])  # zeros at the end of the 7
    trailing[zero] = _DIGITS - 1
    fixed = (e >= _E_MIN) & (e <= _E_MAX)
    small = e < 0
    # fixed, e >= 0: the point after the first e + 1 digits
    point = (e + 1).clip(1, 7).astype(np.uint64)
    lo = ((digits & _MASK[point]) | (np.uint64(ord(".")) << (_U8 * point))
          | ((digits >> (_U8 * point)) << (_U8 * (point + np.uint64(1)))))  # fmt: skip
    # fixed, e < 0: "0." and -e - 1 zeros, then the digits
    lead = (1 - e).clip(2, 5)
    shift = _U8 * lead.astype(np.uint64)
    lo = np.where(small, _PREFIX[lead] | (digits << shift), lo)
    hi = np.where(small, digits >> (np.uint64(64) - shift), np.uint64(0))
    # keep the fraction's digits up to its last non-zero one
    kept = np.maximum(_DIGITS - 1 - e - trailing, 0)
    length = np.where(small, 1, e + 1) + np.where(kept > 0, kept + 1, 0)  # without sign or comma
    sci = np.flatnonzero(~fixed)
    if len(sci):  # scientific (rare): d.dddddd cut after its last non-zero digit, then "e-05"
        es, digits_s = e[sci], digits[sci]
        mantissa = ((digits_s & _MASK[1]) | (np.uint64(ord(".")) << _U8)
                    | ((digits_s >> _U8) << np.uint64(16)))  # fmt: skip
        kept_s = np.maximum(_DIGITS - 1 - trailing[sci], 0)
        cut = (1 + np.where(kept_s > 0, kept_s + 1, 0)).astype(np.uint64)  # 1..8 bytes
        exp = np.abs(es)
        suffix = (np.uint64(ord("e")) | (np.where(es < 0, np.uint64(ord("-")), np.uint64(ord("+"))) << _U8)
                  | ((exp // 10 + ord("0")).astype(np.uint64) << np.uint64(16))
                  | ((exp % 10 + ord("0")).astype(np.uint64) << np.uint64(24)))  # fmt: skip
        cut_lo = np.minimum(cut, np.uint64(7))  # all 8 mantissa bytes: the suffix is all in hi
        lo[sci] = np.where(cut == 8, mantissa, (mantissa & _MASK[cut_lo]) | (suffix << (_U8 * cut_lo)))
        hi[sci] = np.where(cut > 4, suffix >> (np.uint64(64) - _U8 * cut), np.uint64(0))
        length[sci] = cut.astype(np.int64) + 4
    # the comma right after the text
    in_lo = length < 8
    at_lo = np.minimum(length, 7).astype(np.uint64)
    at_hi = np.maximum(length - 8, 0).astype(np.uint64)
    comma = np.uint64(ord(","))
    lo = np.where(in_lo, (lo & _MASK[at_lo]) | (comma << (_U8 * at_lo)), lo)
    hi = np.where(in_lo, hi, (hi & _MASK[at_hi]) | (comma << (_U8 * at_hi)))
    negative = np.signbit(flat)
    hi = np.where(negative, (hi << _U8) | (lo >> np.uint64(56)), hi)
    lo = np.where(negative, (lo << _U8) | np.uint64(ord("-")), lo)
    length += negative
    text = np.empty((flat.size, 2), dtype=np.uint64)
    text[:, 0], text[:, 1] = lo, hi
    for i in np.flatnonzero(near_half & finite & ~zero).tolist():  # rare: Python's own digits
        raw = b"%.7g," % float(flat[i])
        text[i] = np.frombuffer(raw.ljust(16, b"\0"), dtype=np.uint64)
        length[i] = len(raw) - 1
    # each value's text and comma, back to back: the first length + 1 of its 16 bytes
    count = length + 1
    before = np.cumsum(count)
    pick = np.repeat(np.arange(0, 16 * flat.size, 16) - (before - count), count)
    pick += np.arange(pick.size)
    blob = np.take(text.view(np.uint8).reshape(-1), pick).tobytes()
    ends = before[k - 1 :: k].tolist()
    ok = finite.reshape(rows, k).all(axis=1).tolist()
    texts, start = [], 0
    for end, good in zip(ends, ok, strict=True):
        texts.append(blob[start : end - 1] if good else b"")
        start = end
    return texts, ok
