"""Compiled (numba) focus measure: the first stage of the compiled engine.

The grey-level local variance of :mod:`fstack_dask._algorithm.block`, computed plane by
plane while streaming down the rows, so that each plane is read once and the
window sums live in a few rows of cache instead of whole-plane temporaries:

* 8- and 16-bit data: exact integers, ``D = n^2 a - window_sum(a)`` in int32,
  ``fm = window_sum(D^2) / (n^6 max^2)`` in int64, one rounding. Integer sums
  are exact, so the order of the additions does not matter: sliding sums along
  the columns, prefix sums along the rows.
* other dtypes: float64 sums of the ``n`` terms in the NumPy engine's order
  (down the columns, then along the rows, each in a fixed order relative to the
  output pixel), so the result does not depend on where the block starts.

Both paths give the same bits as the NumPy engine (tested). RGB stacks are
turned into their luminance row by row, rounded as the reference does.

``focus_measure_compiled`` is None when numba is not installed.
"""

from __future__ import annotations

import numpy as np

from .jit import jit

__all__ = ["focus_measure_compiled", "plane_major"]

#: float64's smallest normal number. A local variance below it is flushed to 0, no contrast:
#: as a subnormal, ``1 / fmax`` overflowed and tiny float64 samples (about 1e-154) fused to
#: NaN (an adversarial run). Every engine flushes the same values.
TINY = 2.2250738585072014e-308

# MATLAB's rgb2gray weights, as the reference uses them (same as _kernel._LUMA).
_LR, _LG, _LB = 0.2989, 0.5870, 0.1140


def _load_row(stack, rgb, rounded, divisor, p, y, out):
    """Row ``y`` of plane ``p`` as float64 (luminance for RGB, rounded for integers)."""
    width = out.shape[0]
    if rgb:
        for x in range(width):
            v = (_LR * stack[0, p, y, x] + _LG * stack[1, p, y, x]) + _LB * stack[2, p, y, x]
            if rounded:
                v = np.rint(v)  # NumPy's round: half to even
            out[x] = v / divisor
    else:
        for x in range(width):
            out[x] = stack[0, p, y, x] / divisor


def _prefix_window_int(row, lo, hi, prefix, out):
    """``out[x] = sum(row[clamp(x - lo .. x + hi)])`` (edges replicated), exact integers."""
    width = row.shape[0]
    s = prefix.dtype.type(0)
    prefix[0] = s
    j = 1
    for _ in range(lo):
        s += row[0]
        prefix[j] = s
        j += 1
    for x in range(width):
        s += row[x]
        prefix[j] = s
        j += 1
    for _ in range(hi):
        s += row[width - 1]
        prefix[j] = s
        j += 1
    n = lo + hi + 1
    for x in range(width):
        out[x] = prefix[x + n] - prefix[x]


def _focus_int(stack, rgb, n, scale, fm, a_rows, h1, h2, v1, v2, d2, p32, p64, fl):
    """Exact-integer focus measure of every plane into ``fm`` (P, Y, X).

    The row buffers are passed in (allocated by the caller, where tracemalloc sees them).
    """
    n_planes, rows, width = fm.shape
    lo = n // 2
    hi = n - 1 - lo
    ring = n + 1  # running column sums need rows y - 1 - lo .. y + hi
    nn = np.int32(n * n)
    for p in range(n_planes):
        for r in range(rows + 2 * hi):
            if r < rows:
                a = a_rows[r % ring]
                if rgb:
                    _load_row(stack, rgb, True, 1.0, p, r, fl)
                    for x in range(width):
                        a[x] = np.int32(fl[x])
                else:
                    src = stack[0, p, r]
                    for x in range(width):
                        a[x] = np.int32(src[x])
                _prefix_window_int(a, lo, hi, p32, h1[r % ring])
            y1 = r - hi
            if 0 <= y1 < rows:
                _column_sums(h1, ring, y1, lo, hi, rows, v1)
                a = a_rows[y1 % ring]
                for x in range(width):
                    d = np.int32(nn * a[x] - v1[x])
                    d2[x] = np.int64(d) * np.int64(d)
                _prefix_window_int(d2, lo, hi, p64, h2[y1 % ring])
            y2 = y1 - hi
            if 0 <= y2 < rows:
                _column_sums(h2, ring, y2, lo, hi, rows, v2)
                out = fm[p, y2]
                for x in range(width):
                    out[x] = np.float64(v2[x]) / scale  # one correctly rounded division
    return fm


def _column_sums(h, ring, y, lo, hi, rows, v):
    """Sliding sum over rows ``clamp(y - lo .. y + hi)`` of the row sums ``h`` (exact)."""
    width = v.shape[0]
    if y == 0:
        for x in range(width):
            v[x] = 0
        for k in range(-lo, hi + 1):
            src = h[min(max(k, 0), rows - 1) % ring]
            for x in range(width):
                v[x] += src[x]
    else:
        add = h[min(y + hi, rows - 1) % ring]
        sub = h[max(y - 1 - lo, 0) % ring]
        for x in range(width):
            v[x] += add[x] - sub[x]


def _box_float_row(rows_buf, ring, y, lo, hi, rows, vs, pad, out):
    """``n x n`` window sum at row ``y``, in the NumPy engine's order: down, then along."""
    width = vs.shape[0]
    n = lo + hi + 1
    first = rows_buf[min(max(y - lo, 0), rows - 1) % ring]
    for x in range(width):
        vs[x] = first[x]
    for k in range(1, n):
        src = rows_buf[min(max(y - lo + k, 0), rows - 1) % ring]
        for x in range(width):
            vs[x] += src[x]
    for j in range(lo):
        pad[j] = vs[0]
    for x in range(width):
        pad[lo + x] = vs[x]
    for j in range(hi):
        pad[lo + width + j] = vs[width - 1]
    for x in range(width):
        out[x] = pad[x]
    for k in range(1, n):
        for x in range(width):
            out[x] += pad[x + k]


def _focus_float(stack, rgb, rounded, divisor, n, fm, a_rows, dev2, vs, pad, acc):
    """Float64 focus measure of every plane (fixed-order sums) into ``fm`` (P, Y, X)."""
    n_planes, rows, width = fm.shape
    lo = n // 2
    hi = n - 1 - lo
    ring = n + 1
    inv_area = 1.0 / (n * n)
    for p in range(n_planes):
        for r in range(rows + 2 * hi):
            if r < rows:
                _load_row(stack, rgb, rounded, divisor, p, r, a_rows[r % ring])
            y1 = r - hi
            if 0 <= y1 < rows:
                _box_float_row(a_rows, ring, y1, lo, hi, rows, vs, pad, acc)
                a = a_rows[y1 % ring]
                d = dev2[y1 % ring]
                for x in range(width):
                    dev = a[x] - acc[x] * inv_area
                    d[x] = dev * dev
            y2 = y1 - hi
            if 0 <= y2 < rows:
                _box_float_row(dev2, ring, y2, lo, hi, rows, vs, pad, acc)
                out = fm[p, y2]
                for x in range(width):
                    v = acc[x] * inv_area
                    out[x] = v if v >= TINY else 0.0  # see TINY
    return fm


def _copy_tiles(src, dst):
    """``dst[...] = src`` for a strided (C, P, Y, X) view, in tiles of 16 pixels of a row.

    The reference's layout is pixel-major (y, x, z[, c]): its plane-major view
    has the planes innermost in memory. Copying 16 pixels of a row for every
    plane and channel reads whole cache lines and writes short runs, about 5x
    faster than NumPy's copy of the same view.
    """
    n_ch, n_planes, rows, width = src.shape
    for y in range(rows):
        for x0 in range(0, width, 16):
            x1 = min(x0 + 16, width)
            for p in range(n_planes):
                for c in range(n_ch):
                    for x in range(x0, x1):
                        dst[c, p, y, x] = src[c, p, y, x]


if jit is not None:
    _copy_tiles = jit(_copy_tiles)
    _load_row = jit(_load_row)
    _prefix_window_int = jit(_prefix_window_int)
    _column_sums = jit(_column_sums)
    _box_float_row = jit(_box_float_row)
    _focus_int = jit(_focus_int)
    _focus_float = jit(_focus_float)

    def focus_measure_compiled(
        stack: np.ndarray, rgb: bool, n: int, fm: np.ndarray, *, exact_scale, divisor
    ) -> np.ndarray:
        """Fill ``fm`` (P, Y, X) with the focus measure of ``stack`` (C, P, Y, X).

        ``exact_scale`` (``n^6 max^2``) selects the exact-integer path; otherwise
        the float path divides the samples by ``divisor`` (the integer dtype's
        maximum, as ``im2double``; 1 for floats).
        """
        width = fm.shape[2]
        ring = n + 1
        if exact_scale is not None:
            _focus_int(
                stack, rgb, n, float(exact_scale), fm,
                np.empty((ring, width), np.int32), np.empty((ring, width), np.int32),
                np.empty((ring, width), np.int64), np.empty(width, np.int32),
                np.empty(width, np.int64), np.empty(width, np.int64),
                np.empty(width + n, np.int32), np.empty(width + n, np.int64),
                np.empty(width, np.float64),
            )  # fmt: skip
        else:
            rounded = stack.dtype.kind in "iu"
            _focus_float(
                stack, rgb, rounded, float(divisor), n, fm,
                np.empty((ring, width)), np.empty((ring, width)), np.empty(width),
                np.empty(width + n), np.empty(width),
            )  # fmt: skip
        return fm

    def plane_major(values: np.ndarray) -> np.ndarray:
        """``values`` (C, P, Y, X) as a C-contiguous array (itself if it is one)."""
        if values.flags.c_contiguous:
            return values
        out = np.empty(values.shape, values.dtype)
        _copy_tiles(values, out)
        return out

else:  # pragma: no cover
    focus_measure_compiled = None
    plane_major = np.ascontiguousarray
