"""Compiled (numba) focus measure for 8- and 16-bit data.

The exact-integer local variance of :mod:`fstack_dask._kernel`, fused into one
pass per plane with sliding int64 window sums and a running arg-max. Integer
arithmetic is exact, so the result is bit-identical to the NumPy path (tested)
and independent of where a block starts. Compiled on first use and cached on
disk (``NUMBA_CACHE_DIR`` overrides where).

``focus_measure_int`` is None when numba is not installed; the kernel then
uses its NumPy code.
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; the fallback is tested
    numba = None

__all__ = ["focus_measure_int"]


if numba is not None:

    @numba.njit(cache=True, nogil=True)
    def _box_sum(a, n, tmp, out):  # pragma: no cover - compiled
        """``n x n`` window sums of int64 ``a`` with replicated edges, exact."""
        rows, cols = a.shape
        lo = n // 2
        hi = n - 1 - lo
        for y in range(rows):
            s = np.int64(0)
            for k in range(-lo, hi + 1):
                s += a[y, min(max(k, 0), cols - 1)]
            tmp[y, 0] = s
            for x in range(1, cols):
                s += a[y, min(x + hi, cols - 1)] - a[y, max(x - 1 - lo, 0)]
                tmp[y, x] = s
        acc = np.zeros(cols, np.int64)
        for k in range(-lo, hi + 1):
            r = min(max(k, 0), rows - 1)
            for x in range(cols):
                acc[x] += tmp[r, x]
        for x in range(cols):
            out[0, x] = acc[x]
        for y in range(1, rows):
            add = min(y + hi, rows - 1)
            sub = max(y - 1 - lo, 0)
            for x in range(cols):
                acc[x] += tmp[add, x] - tmp[sub, x]
                out[y, x] = acc[x]

    @numba.njit(cache=True, nogil=True)
    def _focus_measure_int(grey, n, scale, fm, fmax, arg):  # pragma: no cover - compiled
        n_planes, rows, cols = grey.shape
        a = np.empty((rows, cols), np.int64)
        d = np.empty((rows, cols), np.int64)
        tmp = np.empty((rows, cols), np.int64)
        sums = np.empty((rows, cols), np.int64)
        nn = np.int64(n * n)
        for p in range(n_planes):
            for y in range(rows):
                for x in range(cols):
                    a[y, x] = grey[p, y, x]
            _box_sum(a, n, tmp, sums)
            for y in range(rows):
                for x in range(cols):
                    v = nn * a[y, x] - sums[y, x]
                    d[y, x] = v * v
            _box_sum(d, n, tmp, sums)
            for y in range(rows):
                for x in range(cols):
                    # int64 -> float64, one correctly rounded division, as NumPy does
                    value = np.float32(np.float64(sums[y, x]) / scale)
                    fm[p, y, x] = value
                    if p == 0 or value > fmax[y, x]:  # first maximum wins, as np.argmax
                        fmax[y, x] = value
                        arg[y, x] = p

    def focus_measure_int(grey: np.ndarray, n: int, scale: float):
        """Focus measure (float32), its maximum over planes and the arg-max plane."""
        n_planes, rows, cols = grey.shape
        fm = np.empty((n_planes, rows, cols), np.float32)
        fmax = np.empty((rows, cols), np.float32)
        arg = np.empty((rows, cols), np.intp)
        _focus_measure_int(np.ascontiguousarray(grey), n, float(scale), fm, fmax, arg)
        return fm, fmax, arg

else:  # pragma: no cover
    focus_measure_int = None
