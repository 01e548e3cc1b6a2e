"""Compiled (numba) focus measure for 8- and 16-bit data.

The exact-integer local variance of :mod:`fstack_dask._kernel`, fused into one
pass per plane with sliding int64 window sums and a running arg-max. Integer
arithmetic is exact, so the result is bit-identical to the NumPy path (tested)
and independent of where a block starts. Compiled on first use and cached on
disk (``NUMBA_CACHE_DIR`` overrides where).

``focus_measure_int`` is None when numba is not installed; the kernel then
uses its NumPy code.

The compiled code is cached in the user's cache folder
(``$XDG_CACHE_HOME/fstack_dask/numba``, else ``~/.cache/fstack_dask/numba``),
not beside this file: numba's files in an installed package's ``__pycache__``
outlive ``pip uninstall`` and turn the left-over folder into an empty
namespace package that shadows a later (editable) install.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; the fallback is tested
    numba = None

__all__ = ["focus_measure_int"]


def _user_cache_dir() -> str | None:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "fstack_dask", "numba")
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return None  # not writable: numba's own choice
    return path


@contextlib.contextmanager
def _cache_dir_for_our_functions():
    """numba picks a function's cache folder when it is decorated: set it for ours only."""
    saved = numba.config.CACHE_DIR
    chosen = saved or _user_cache_dir()
    if chosen:
        numba.config.CACHE_DIR = chosen
    try:
        yield
    finally:
        numba.config.CACHE_DIR = saved


if numba is not None:

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

    with _cache_dir_for_our_functions():
        _box_sum = numba.njit(cache=True, nogil=True)(_box_sum)
        _focus_measure_int = numba.njit(cache=True, nogil=True)(_focus_measure_int)

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
