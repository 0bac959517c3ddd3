"""``%.7g`` of many float32 values at once, byte for byte what Python's ``b"%.7g" % v`` writes.

ZeroMQ's JSON messages carry 52 values per frame as ``%.7g``; Python formats each float on
its own (~110 ns: nearly 6 µs a frame, most of a message's cost).  Here a whole batch is
formatted with numpy, in three steps:

1. Digits: the 7 significant digits are ``rint(|v| * 10**(6 - e))`` in float64.  A float32
   is exact in float64 and the product is off by at most a few parts in 1e16, so the
   rounding is the correctly rounded one (what Python writes) unless the product lies within
   1e-8 of a half, or so close to a power of ten that the exponent is in doubt; such values
   (exact ties among them) are formatted by Python instead.
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

#: Most values formatted per pass (~4 MB of buffers at most; 256 performers x 2 frames fit
#: in one).  Every array of a pass is one of :class:`Float7g`'s buffers (``out=``), so a
#: batch allocates next to nothing: fresh temporaries of whole batches were measured twice
#: as slow (the C library maps, unmaps and page-faults them in every time), and per-pass
#: call overhead makes small passes slow (8192 values: +20 %, 2048: +100 %).
CHUNK = 32_768


class Float7g:
    """Formats rows of float32 values as ``%.7g`` joined by commas; holds its buffers
    (grown to the largest pass seen, at most :data:`CHUNK` values)."""

    def __init__(self) -> None:
        self._capacity = -1
        self._grow(0)

    def _grow(self, n: int) -> None:
        if n <= self._capacity:
            return
        f8, i8, u8, b1 = np.float64, np.int64, np.uint64, np.bool_
        self._f = [np.empty(n, f8) for _ in range(4)]
        self._i = [np.empty(n, i8) for _ in range(6)]
        self._u = [np.empty(n, u8) for _ in range(5)]
        self._b = [np.empty(n, b1) for _ in range(5)]
        self._text = np.empty((n, 2), u8)
        self._keep = np.empty((n, 16), b1)
        self._capacity = n

    def format_rows(self, values: np.ndarray) -> tuple[list[bytes], list[bool]] | None:
        """``values`` ``[M, K]`` float32 -> per row ``b",".join(b"%.7g" % v for v in row)``.

        Returns ``(texts, ok)``: ``ok[i]`` False where row ``i`` holds a non-finite value
        (its text is then empty: format that row in Python); None on a big-endian machine."""
        if not LITTLE_ENDIAN:
            return None
        x = np.ascontiguousarray(values, dtype=np.float32)
        k = x.shape[1]
        per = max(1, CHUNK // k)
        texts: list[bytes] = []
        ok: list[bool] = []
        for start in range(0, x.shape[0], per):
            with np.errstate(invalid="ignore", over="ignore"):  # NaN / inf rows are Python's
                t, o = self._chunk(x[start : start + per])
            texts += t
            ok += o
        return texts, ok

    def _chunk(self, x: np.ndarray) -> tuple[list[bytes], list[bool]]:
        rows, k = x.shape
        flat = x.reshape(-1)
        n = flat.size
        self._grow(n)
        mag, safe, y, tf = (a[:n] for a in self._f)
        e, ti, top, bottom, trailing, length = (a[:n] for a in self._i)
        digits, lo, hi, u1, sh = (a[:n] for a in self._u)
        finite, zero, valid, m, neg = (a[:n] for a in self._b)
        np.isfinite(flat, out=finite)
        np.abs(flat, out=mag)
        np.equal(mag, 0.0, out=zero)
        np.logical_not(zero, out=valid)
        np.logical_and(valid, finite, out=valid)
        safe.fill(1.0)
        np.copyto(safe, mag, where=valid)
        # the decimal exponent e (log10 may be one off: fixed below), digits y = |v| * 10**(6 - e)
        np.log10(safe, out=tf)
        np.floor(tf, out=tf)
        np.copyto(e, tf, casting="unsafe")
        np.subtract(_DIGITS - 1 + _POW_BIAS, e, out=ti)
        np.take(_POW10F, ti, out=y, mode="clip")
        np.multiply(y, safe, out=y)
        for _ in range(3):
            high, low = y >= 9999999.5, y < 999999.5
            wrong = np.flatnonzero(high | low)
            if not len(wrong):
                break
            e[wrong] += np.where(high[wrong], 1, -1)
            y[wrong] = safe[wrong] * _POW10F[_DIGITS - 1 - e[wrong] + _POW_BIAS]
        # within 1e-8 of a half, float64 cannot tell how the exact value rounds; and below
        # 999999.96 (exponent estimated one too high, or y a hair from 9999999.5 before the
        # step up) the exponent itself hangs on the last bits: Python decides those
        np.floor(y, out=tf)
        np.subtract(y, tf, out=tf)
        np.subtract(tf, 0.5, out=tf)
        np.abs(tf, out=tf)
        np.less(tf, 1e-8, out=m)
        np.less(y, 999999.96, out=neg)
        np.logical_or(m, neg, out=m)
        np.logical_and(m, valid, out=m)
        near = np.flatnonzero(m)
        np.rint(y, out=y)
        np.copyto(y, 0.0, where=zero)
        np.copyto(e, 0, where=zero)
        # (np.take: mode="clip" writes straight into out=; every index here is in range)
        # the 7 digits as ASCII in one word: the first four from one table, the last three from another
        np.divide(y, 1000.0, out=tf)
        np.floor(tf, out=tf)
        np.copyto(top, tf, casting="unsafe")
        np.multiply(tf, 1000.0, out=tf)
        np.subtract(y, tf, out=tf)
        np.copyto(bottom, tf, casting="unsafe")
        np.take(_WORD4, top, out=digits, mode="clip")
        np.take(_WORD3, bottom, out=u1, mode="clip")
        np.left_shift(u1, np.uint64(32), out=u1)
        np.bitwise_or(digits, u1, out=digits)
        np.take(_TZ3, bottom, out=trailing, mode="clip")  # zeros at the end of the 7 digits
        np.take(_TZ4, top, out=ti, mode="clip")
        ti += 3
        np.equal(bottom, 0, out=m)
        np.copyto(trailing, ti, where=m)
        np.copyto(trailing, _DIGITS - 1, where=zero)
        # fixed, e >= 0: the point after the first e + 1 digits
        np.add(e, 1, out=ti)
        np.clip(ti, 1, 7, out=ti)
        _with_char(digits, ti, ".", lo, sh, u1)
        np.right_shift(digits, sh, out=u1)
        np.add(sh, _U8, out=sh)
        np.left_shift(u1, sh, out=u1)
        np.bitwise_or(lo, u1, out=lo)
        # fixed, e < 0: "0." and -e - 1 zeros, then the digits (hi gets what passes 8 bytes)
        np.subtract(1, e, out=ti)
        np.clip(ti, 2, 5, out=ti)
        np.copyto(sh, ti, casting="unsafe")
        np.multiply(sh, _U8, out=sh)
        np.less(e, 0, out=m)  # small
        np.take(_PREFIX, ti, out=u1, mode="clip")
        np.left_shift(digits, sh, out=hi)
        np.bitwise_or(u1, hi, out=u1)
        np.copyto(lo, u1, where=m)
        np.subtract(np.uint64(64), sh, out=sh)
        np.right_shift(digits, sh, out=u1)
        hi.fill(0)
        np.copyto(hi, u1, where=m)
        # length: the whole part, then the point and the fraction up to its last non-zero digit
        np.subtract(_DIGITS - 1, e, out=ti)
        ti -= trailing
        np.maximum(ti, 0, out=ti)  # fraction digits kept
        np.add(e, 1, out=length)
        np.copyto(length, 1, where=m)
        np.greater(ti, 0, out=m)
        ti += 1
        ti *= m
        length += ti
        np.subtract(e, _E_MIN, out=ti)
        np.greater(ti.view(np.uint64), np.uint64(_E_MAX - _E_MIN), out=m)  # e outside -4..6
        np.logical_and(m, valid, out=m)
        if m.any():
            self._scientific(np.flatnonzero(m), e, digits, trailing, lo, hi, length)
        # the comma right after the text
        np.minimum(length, 7, out=ti)
        _with_char(lo, ti, ",", u1, sh, sh)
        np.less(length, 8, out=m)
        np.copyto(lo, u1, where=m)
        np.subtract(length, 8, out=ti)
        np.maximum(ti, 0, out=ti)
        _with_char(hi, ti, ",", u1, sh, sh)
        np.logical_not(m, out=m)
        np.copyto(hi, u1, where=m)
        # a minus sign in front: both words move up a byte
        np.signbit(flat, out=neg)
        np.left_shift(hi, _U8, out=u1)
        np.right_shift(lo, np.uint64(56), out=sh)
        np.bitwise_or(u1, sh, out=u1)
        np.copyto(hi, u1, where=neg)
        np.left_shift(lo, _U8, out=u1)
        np.bitwise_or(u1, np.uint64(ord("-")), out=u1)
        np.copyto(lo, u1, where=neg)
        length += neg
        text = self._text[:n]
        text[:, 0] = lo
        text[:, 1] = hi
        for i in near.tolist():  # rare: Python's own digits
            raw = b"%.7g," % float(flat[i])
            text[i] = np.frombuffer(raw.ljust(16, b"\0"), dtype=np.uint64)
            length[i] = len(raw) - 1
        # each value's text and comma, back to back: the first length + 1 of its 16 bytes
        keep = self._keep[:n]
        np.take(_KEEP, length, axis=0, out=keep.view(np.uint64), mode="clip")
        blob = text.view(np.uint8)[keep].tobytes()
        length += 1
        ends = np.cumsum(length.reshape(rows, k).sum(axis=1)).tolist()
        ok = finite.reshape(rows, k).all(axis=1).tolist()
        texts, start = [], 0
        for end, good in zip(ends, ok, strict=True):
            texts.append(blob[start : end - 1] if good else b"")
            start = end
        return texts, ok

    @staticmethod
    def _scientific(sci: np.ndarray, e: np.ndarray, digits: np.ndarray, trailing: np.ndarray,
                    lo: np.ndarray, hi: np.ndarray, length: np.ndarray) -> None:  # fmt: skip
        """``d.dddddd`` cut after its last non-zero digit, then ``e-05``: the values at ``sci``."""
        es, ds = e[sci], digits[sci]
        mantissa = (ds & _MASK[1]) | (np.uint64(ord(".")) << _U8) | ((ds >> _U8) << np.uint64(16))
        kept = np.maximum(_DIGITS - 1 - trailing[sci], 0)
        cut = (1 + np.where(kept > 0, kept + 1, 0)).astype(np.uint64)  # 1..8 bytes
        exp = np.abs(es)
        suffix = (np.uint64(ord("e")) | (np.where(es < 0, np.uint64(ord("-")), np.uint64(ord("+"))) << _U8)
                  | ((exp // 10 + ord("0")).astype(np.uint64) << np.uint64(16))
                  | ((exp % 10 + ord("0")).astype(np.uint64) << np.uint64(24)))  # fmt: skip
        cut_lo = np.minimum(cut, np.uint64(7))  # all 8 mantissa bytes: the suffix is all in hi
        lo[sci] = np.where(cut == 8, mantissa, (mantissa & _MASK[cut_lo]) | (suffix << (_U8 * cut_lo)))
        hi[sci] = np.where(cut > 4, suffix >> (np.uint64(64) - _U8 * cut), np.uint64(0))
        length[sci] = cut.astype(np.int64) + 4


#: row ``L``: the first ``L + 1`` of 16 bytes (a value's text and its comma), as two words of bools
_KEEP = (np.arange(16)[None, :] <= np.arange(16)[:, None]).view(np.uint64)


def _with_char(word: np.ndarray, at: np.ndarray, char: str, out: np.ndarray, shift: np.ndarray,
               scratch: np.ndarray) -> None:  # fmt: skip
    """``out`` = each ``word`` kept below byte ``at``, with ``char`` in byte ``at``; ``shift``
    is left holding ``8 * at`` unless ``scratch`` is the same array (then it is used up)."""
    np.take(_MASK, at, out=out, mode="clip")
    np.bitwise_and(out, word, out=out)
    np.copyto(shift, at, casting="unsafe")
    np.multiply(shift, _U8, out=shift)
    np.left_shift(np.uint64(ord(char)), shift, out=scratch)
    np.bitwise_or(out, scratch, out=out)
