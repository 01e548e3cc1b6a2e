"""The CUDA kernels of the fusion, as plain Python compiled by numba's CUDA target.

Each kernel walks its pixels (or voxels) in a grid-stride loop, one thread per pixel at a
time, x fastest so that neighbouring threads read neighbouring samples. The per-pixel
mathematics is :mod:`.pixel`, compiled as device functions from the same source
as the CPU kernel; what is written here is the CUDA layout of the window sums, which keep
the CPU engine's arithmetic relative to each pixel (:mod:`.compiled`,
:mod:`.fused`):

* 8- and 16-bit samples: exact integer window sums (``D = n^2 a - sum(a)`` in int32,
  ``sum(D^2)`` in int64, one rounding), so their order does not matter;
* other samples and the selectivity's box mean: float64 sums of the ``n`` terms of a
  column, then of a row, each in the CPU's order (first offset first), with the edge
  replicated;
* every float product goes through ``mul``, which on a GPU is ``libdevice.dmul_rn``:
  NVVM would otherwise contract ``a * b + c`` into a fused multiply-add (one rounding
  instead of two). So a pixel sees the same IEEE operations in the same order as on the
  CPU, whatever block it lies in.

The focus measure runs in four passes over a group of planes (temporaries for that group
only); the selectivity, weights and blend in four passes over pixels, each looping over
the planes. :func:`build` compiles them for a target: ``numba.cuda`` on a GPU, or its
simulator (``NUMBA_ENABLE_CUDASIM=1``), which runs this source as Python on NumPy scalars.
"""

from __future__ import annotations

import contextlib
import hashlib
import pathlib
import types

import numpy as np

__all__ = ["KERNELS", "build", "source_digest"]

# MATLAB's rgb2gray weights, as the reference uses them (same as _compiled's).
_LR, _LG, _LB = 0.2989, 0.5870, 0.1140

# Bound per target by build(): numba.cuda, the products' multiply, and _pixel's functions as
# device functions. None here: this module's functions only run as built.
cuda = mul = exp = log = log10 = gauss_fit = model = misfit = phi_from_s = weight = median9 = None
round_half_even = None


# ------------------------------------------------------------------ device functions


def _clamp(i, n):
    return min(max(i, 0), n - 1)


def _cell(i, rows, width):
    """Plane group, row and column of the ``i``-th element of a (groups, rows, width) grid."""
    return i // (rows * width), (i // width) % rows, i % width


def _along_row(a, g, y, x, lo, n, width):
    """``a[g, y, x - lo .. x - lo + n - 1]`` added in that order (edges replicated)."""
    acc = a[g, y, _clamp(x - lo, width)]
    for k in range(1, n):
        acc += a[g, y, _clamp(x - lo + k, width)]
    return acc


def _down_column(a, g, y, x, lo, n, rows):
    """``a[g, y - lo .. y - lo + n - 1, x]`` added in that order (edges replicated)."""
    acc = a[g, _clamp(y - lo, rows), x]
    for k in range(1, n):
        acc += a[g, _clamp(y - lo + k, rows), x]
    return acc


def _int_sample(stack, rgb, p, y, x):
    """Sample (or rounded luminance) as int32, as ``compiled._focus_int`` loads it."""
    if rgb:
        v = (mul(_LR, np.float64(stack[0, p, y, x])) + mul(_LG, np.float64(stack[1, p, y, x]))) + (
            mul(_LB, np.float64(stack[2, p, y, x]))
        )
        return np.int32(round_half_even(v))
    return np.int32(stack[0, p, y, x])


def _float_sample(stack, rgb, rounded, divisor, p, y, x):
    """Sample (or luminance) as float64 over ``divisor``, as ``compiled._load_row``."""
    if rgb:
        v = (mul(_LR, np.float64(stack[0, p, y, x])) + mul(_LG, np.float64(stack[1, p, y, x]))) + (
            mul(_LB, np.float64(stack[2, p, y, x]))
        )
        if rounded:
            v = round_half_even(v)
        return v / divisor
    return np.float64(stack[0, p, y, x]) / divisor


# ------------------------------------------------------------------ focus measure, integers


def int_rows(stack, rgb, p0, lo, hi, h1):
    """``h1[g, y, x]``: sum of the samples of plane ``p0 + g`` over ``x - lo .. x + hi``."""
    groups, rows, width = h1.shape
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, groups * rows * width, step):
        g, y, x = _cell(i, rows, width)
        s = np.int64(0)
        for k in range(-lo, hi + 1):
            s += _int_sample(stack, rgb, p0 + g, y, _clamp(x + k, width))
        h1[g, y, x] = s


def int_deviation(stack, rgb, p0, lo, hi, h1, d):
    """``d = n^2 a - sum(a)`` over the ``n x n`` window, exact (int32)."""
    groups, rows, width = d.shape
    nn = np.int64((lo + hi + 1) * (lo + hi + 1))
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, groups * rows * width, step):
        g, y, x = _cell(i, rows, width)
        s = np.int64(0)
        for k in range(-lo, hi + 1):
            s += np.int64(h1[g, _clamp(y + k, rows), x])
        d[g, y, x] = nn * np.int64(_int_sample(stack, rgb, p0 + g, y, x)) - s


def int_square_rows(lo, hi, d, h2):
    """``h2[g, y, x]``: sum of ``d^2`` over ``x - lo .. x + hi``, exact (int64)."""
    groups, rows, width = d.shape
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, groups * rows * width, step):
        g, y, x = _cell(i, rows, width)
        s = np.int64(0)
        for k in range(-lo, hi + 1):
            v = np.int64(d[g, y, _clamp(x + k, width)])
            s += v * v
        h2[g, y, x] = s


def int_measure(p0, lo, hi, scale, h2, fm):
    """``fm = sum(D^2) / (n^6 max^2)`` over the window, one correctly rounded division."""
    groups, rows, width = h2.shape
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, groups * rows * width, step):
        g, y, x = _cell(i, rows, width)
        s = np.int64(0)
        for k in range(-lo, hi + 1):
            s += h2[g, _clamp(y + k, rows), x]
        fm[p0 + g, y, x] = np.float64(s) / scale


# ------------------------------------------------------------------ focus measure, floats


def float_columns(stack, rgb, rounded, divisor, p0, lo, hi, t1):
    """``t1[g, y, x]``: samples of rows ``y - lo .. y + hi`` added in that order."""
    groups, rows, width = t1.shape
    n = lo + hi + 1
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, groups * rows * width, step):
        g, y, x = _cell(i, rows, width)
        p = p0 + g
        s = _float_sample(stack, rgb, rounded, divisor, p, _clamp(y - lo, rows), x)
        for k in range(1, n):
            s += _float_sample(stack, rgb, rounded, divisor, p, _clamp(y - lo + k, rows), x)
        t1[g, y, x] = s


def float_deviation(stack, rgb, rounded, divisor, p0, lo, hi, inv_area, t1, t2):
    """``t2 = (a - mean)^2``, the mean from the column sums ``t1`` added along the row."""
    groups, rows, width = t1.shape
    n = lo + hi + 1
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, groups * rows * width, step):
        g, y, x = _cell(i, rows, width)
        acc = _along_row(t1, g, y, x, lo, n, width)
        a = _float_sample(stack, rgb, rounded, divisor, p0 + g, y, x)
        dev = a - mul(acc, inv_area)
        t2[g, y, x] = mul(dev, dev)


def float_column_sums(lo, hi, src, dst):
    """``dst[g, y, x]``: ``src`` over rows ``y - lo .. y + hi``, added in that order."""
    groups, rows, width = src.shape
    n = lo + hi + 1
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, groups * rows * width, step):
        g, y, x = _cell(i, rows, width)
        dst[g, y, x] = _down_column(src, g, y, x, lo, n, rows)


def float_measure(p0, lo, hi, inv_area, t1, fm):
    """``fm``: the column sums ``t1`` added along the row, times ``1 / n^2``."""
    groups, rows, width = t1.shape
    n = lo + hi + 1
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, groups * rows * width, step):
        g, y, x = _cell(i, rows, width)
        v = mul(_along_row(t1, g, y, x, lo, n, width), inv_area)
        fm[p0 + g, y, x] = v if v >= 2.2250738585072014e-308 else 0.0  # compiled.TINY


# ------------------------------------------------------------------ selectivity and blend


def fit_error(fm, focus, plane_step, fit, fmax, arg, q):
    """Maximum focus measure and its plane; the Gaussian fit's misfit ``q = err / (P fmax)``.

    As ``fused._blend``: the first maximum wins; the fit as ``fused._fit_row``; the
    absolute misfit as ``pixel.misfit`` (``plane_step``: the spacing of evenly spaced
    focus positions, else 0).
    """
    n_planes, rows, width = fm.shape
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, rows * width, step):
        y = i // width
        x = i % width
        best = fm[0, y, x]
        which = 0
        for p in range(1, n_planes):
            v = fm[p, y, x]
            if v > best:  # strict: the first maximum wins, as np.argmax
                best = v
                which = p
        fmax[y, x] = best
        arg[y, x] = which
        if fit:
            ic = min(max(which, 2), n_planes - 3)
            outer = ic + 2 if which <= 1 else ic - 2
            y1 = log(np.float64(fm[outer, y, x]))
            y2 = log(np.float64(fm[ic, y, x]))
            u, s2, la = gauss_fit(focus[ic - 2], focus[ic], focus[ic + 2], y1, y2)
            amp = exp(la)
            err = misfit(fm, y, x, focus, plane_step, u, s2, amp)
            q[y, x] = err / mul(np.float64(n_planes), np.float64(best))


def selectivity_phi(lo, hi, inv_area, fit, phi_full, alpha, sth, s_fill, vs, phi, sel):
    """``S`` in dB from the box mean of ``q`` (column sums ``vs`` added along the row), and
    ``phi`` (an undefined ``S`` taken as ``s_fill``); fewer than 5 planes: ``S = +inf``,
    ``phi = phi_full``."""
    rows, width = phi.shape
    n = lo + hi + 1
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, rows * width, step):
        y = i // width
        x = i % width
        if fit:
            acc = vs[0, y, _clamp(x - lo, width)]
            for k in range(1, n):
                acc += vs[0, y, _clamp(x - lo + k, width)]
            acc = mul(acc, inv_area)
            s = mul(20.0, log10(1 / acc))
            phi[y, x] = phi_from_s(s, alpha, sth, s_fill)
        else:
            s = np.inf
            phi[y, x] = phi_full
        sel[y, x] = s


def blend(values, fm, fmax, phi, out, lo_val, hi_val, top, is_int):
    """3 x 3 median of ``phi`` (zeros outside the block), weights, weighted mean, store.

    As ``fused._median_row``, ``_blend_row`` and ``_store_row``: integers are rounded half
    to even and clipped (``hi_val``: the largest float64 not above the maximum ``top``).
    """
    n_ch, n_planes, rows, width = values.shape
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, rows * width, step):
        y = i // width
        x = i % width
        up = y > 0
        down = y < rows - 1
        left = x > 0
        right = x < width - 1
        ph = median9(
            phi[y - 1, x - 1] if up and left else 0.0,
            phi[y - 1, x] if up else 0.0,
            phi[y - 1, x + 1] if up and right else 0.0,
            phi[y, x - 1] if left else 0.0,
            phi[y, x],
            phi[y, x + 1] if right else 0.0,
            phi[y + 1, x - 1] if down and left else 0.0,
            phi[y + 1, x] if down else 0.0,
            phi[y + 1, x + 1] if down and right else 0.0,
        )
        top_fm = np.float64(fmax[y, x])
        flat = top_fm == 0
        inv = 0.0 if flat else 1.0 / top_fm
        add = 1.0 if flat else 0.0
        den = 0.0
        num0 = 0.0
        num1 = 0.0
        num2 = 0.0
        for p in range(n_planes):
            w = weight(ph, mul(np.float64(fm[p, y, x]), inv) + add)
            den += w
            num0 += mul(np.float64(values[0, p, y, x]), w)
            if n_ch == 3:
                num1 += mul(np.float64(values[1, p, y, x]), w)
                num2 += mul(np.float64(values[2, p, y, x]), w)
        for c in range(n_ch):
            v = (num0 if c == 0 else (num1 if c == 1 else num2)) / den
            if is_int:
                v = round_half_even(v)
                if v > hi_val:
                    out[c, y, x] = top
                else:
                    out[c, y, x] = max(v, lo_val)
            else:
                out[c, y, x] = v


_DEVICE_FUNCS = ("_clamp", "_cell", "_along_row", "_down_column", "_int_sample", "_float_sample")
KERNELS = (
    "int_rows", "int_deviation", "int_square_rows", "int_measure", "float_columns",
    "float_deviation", "float_column_sums", "float_measure", "fit_error", "selectivity_phi",
    "blend",
)  # fmt: skip


def _plain_multiply(a, b):
    return a * b


def build(cuda, *, simulator: bool, cache_dir: str | None = None) -> dict:
    """The kernels compiled for ``cuda`` (``numba.cuda``, or its simulator).

    On a GPU every product, here and in :mod:`.pixel`, is
    ``libdevice.dmul_rn`` (never contracted into a fused multiply-add); the
    simulator runs Python, which does not contract.

    ``cache_dir``: on a GPU, the kernels are ``cuda.jit(cache=True)`` with numba-cuda's
    disk cache in that folder, so that a new process loads those it compiled before
    (per signature and compute capability) instead of compiling them again. It must be
    one folder per :func:`source_digest` (numba checks only the kernel's own bytecode and
    this file's time stamp).

    Returns
    -------
    dict
        Kernel name to ``cuda.jit`` kernel, launched as ``kernel[blocks, threads, stream]``.
    """
    from . import pixel as _pixel

    if simulator:
        multiply = _plain_multiply
    else:
        from numba.cuda import libdevice

        multiply = libdevice.dmul_rn
    # The simulator runs device functions as plain Python calls (its wrappers only add
    # overhead; real compilation is checked by compiling the kernels to PTX).
    device = _as_is if simulator else cuda.jit(device=True)
    namespace = dict(globals())
    namespace.update(_pixel.compile_for(device, multiply=multiply))
    namespace["mul"] = multiply
    namespace["cuda"] = cuda
    for name in _DEVICE_FUNCS:
        namespace[name] = device(_rebind(globals()[name], namespace))
    cached = cache_dir is not None and not simulator
    # Only kernels are cached: a cached kernel holds the device functions it calls.
    kernel = cuda.jit(cache=True) if cached else cuda.jit
    if cached:
        from .jit import cuda_cache_folder

        folder = cuda_cache_folder(cache_dir)
    else:
        folder = contextlib.nullcontext()
    with folder:
        return {name: kernel(_rebind(globals()[name], namespace)) for name in KERNELS}


def source_digest() -> str:
    """A hash of the sources the compiled kernels come from: this file and :mod:`.pixel`."""
    from . import pixel as _pixel

    digest = hashlib.sha256()
    for module in (__file__, _pixel.__file__):
        digest.update(pathlib.Path(module).read_bytes())
    return digest.hexdigest()[:16]


def _as_is(func):
    return func


def _rebind(func, namespace: dict):
    """``func`` with ``namespace`` as its globals (names resolve to the target's versions)."""
    return types.FunctionType(func.__code__, namespace, func.__name__, func.__defaults__)
