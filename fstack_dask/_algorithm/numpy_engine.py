"""The NumPy engine: the readable specification of the per-block numerics (Pertuz et al. 2013).

Layout is plane-first: a grey block is ``(P, Y, X)``, an RGB block ``(3, P, Y, X)``, so
each plane is one contiguous 2-D array. What every function here keeps, and why, is in
:mod:`.block`'s docstring; :func:`.block.fuse_block` runs this engine (``engine="numpy"``) or
the compiled one, whose focus measure this module shares (same bits either way).

References
----------
.. [1] S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of all-in-focus images
   by noise-robust selective fusion of limited depth-of-field images", IEEE Trans. Image
   Process. 22(3):1242-1251, 2013. doi:10.1109/TIP.2012.2231087
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._dtypes import to_dtype

__all__ = ["focus_measure", "fm_dtype", "luminance", "selectivity"]


#: Use the compiled focus measure in :func:`focus_measure` (same bits either way).
USE_COMPILED = True

#: :data:`.compiled.TINY`, float64's smallest normal number, below which every engine flushes
#: a local variance to 0 (here too without importing numba, which the compiled module does).
TINY = 2.2250738585072014e-308


# MATLAB's rgb2gray weights, as the reference uses them.
_LUMA = (0.2989, 0.5870, 0.1140)


_INT64_MAX = np.iinfo(np.int64).max


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Grey image from ``(3, ...)`` RGB, as MATLAB's ``rgb2gray``.

    Integer input is rounded back to its dtype, as the reference does; float
    input stays float64.
    """
    r, g, b = (rgb[i] for i in range(3))
    if rgb.dtype.kind in "iu":
        grey = _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b
        return np.round(grey).astype(rgb.dtype)
    r, g, b = (c.astype(np.float64) for c in (r, g, b))
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


def _window_pads(n: int) -> tuple[int, int]:
    # Offsets -n//2 .. n-1-n//2: OpenCV's default anchor and ndimage's centre.
    return n // 2, n - 1 - n // 2


def _box_sum_int(a: np.ndarray, n: int) -> np.ndarray:
    """Exact ``n x n`` window sums of an int64 plane, edge replicated.

    int64 running sums may wrap on huge blocks; differences of wrapped sums are
    still exact whenever the window sum itself fits, which the caller ensures.
    """
    lo, hi = _window_pads(n)
    padded = np.pad(a, ((lo, hi), (lo, hi)), mode="edge")
    h, w = a.shape
    cs = np.cumsum(padded, axis=0)
    rows = cs[n - 1 :].copy()
    rows[1:] -= cs[: h - 1]
    cs = np.cumsum(rows, axis=1)
    out = cs[:, n - 1 :].copy()
    out[:, 1:] -= cs[:, : w - 1]
    return out


def _box_sum_float(a: np.ndarray, n: int) -> np.ndarray:
    """``n x n`` window sums of a float64 plane, edge replicated, in fixed order."""
    lo, hi = _window_pads(n)
    padded = np.pad(a, ((lo, hi), (lo, hi)), mode="edge")
    h, w = a.shape
    rows = padded[0:h].copy()
    for k in range(1, n):
        rows += padded[k : k + h]
    out = rows[:, 0:w].copy()
    for k in range(1, n):
        out += rows[:, k : k + w]
    return out


def _exact_int_ok(dtype: np.dtype, n: int) -> bool:
    """Whether the int64 variance sums of ``dtype`` data cannot overflow."""
    if dtype.kind not in "iu" or dtype.itemsize > 2:
        return False
    info = np.iinfo(dtype)
    value_range = int(info.max) - int(info.min)
    # |n^2 a - window sum| <= n^2 * range, squared, summed over n^2 terms.
    return n**6 * value_range**2 <= _INT64_MAX


def fm_dtype(dtype: np.dtype) -> np.dtype:
    """dtype of the focus measure for samples of ``dtype``.

    float32 (half the memory of the largest array) for 8- and 16-bit integers
    and float16, whose local variances it holds to ~1e-7 relative over their
    whole range (the parity tests show it keeps the reference's numbers).
    float64 for wider integers and for float32/float64 samples, whose squared
    deviations span more than float32's exponent range.
    """
    dtype = np.dtype(dtype)
    if (dtype.kind in "iu" and dtype.itemsize <= 2) or dtype == np.float16:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _float_divisor(dtype: np.dtype) -> float:
    # MATLAB's im2double scales integers to [0, 1] (signed: [-1, 1]); floats stay as they are.
    return float(np.iinfo(dtype).max) if dtype.kind in "iu" else 1.0


def _focus_measure_compiled() -> Any:
    """The compiled focus measure (None without numba), imported when first used."""
    from .compiled import focus_measure_compiled

    return focus_measure_compiled


def focus_measure(
    grey: np.ndarray, n: int, *, compiled: bool | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey-level local variance of each plane, its maximum and arg-max plane.

    The reference scales integers to [0, 1] (``im2double``), takes the
    ``n x n`` mean ``u``, and averages ``(im - u)**2`` over another ``n x n``
    window. For 8- and 16-bit data this is computed exactly in integers:
    with ``D = n^2 a - sum(a)``, ``fm = sum(D^2) / (n^6 max^2)``, rounded once.
    Float data is used as is (MATLAB's ``im2double`` leaves floats alone).

    ``fm`` has dtype :func:`fm_dtype`. With numba installed the compiled code
    of :mod:`fstack_dask._algorithm.compiled` computes it (``compiled=None`` follows
    ``USE_COMPILED``); both paths give the same bits.

    Returns
    -------
    fm : (P, Y, X) float32 or float64
    fmax : (Y, X), fm's dtype
    arg : (Y, X) intp, the first plane reaching ``fmax``
    """
    n_planes, h, w = grey.shape
    dtype = grey.dtype
    if compiled is None:
        compiled = USE_COMPILED
    fm = np.empty((n_planes, h, w), dtype=fm_dtype(dtype))
    exact = _exact_int_ok(dtype, n)
    wide = dtype.kind in "iu" and dtype.itemsize == 8
    scale = float(n**6) * float(np.iinfo(dtype).max) ** 2 if exact or wide else None
    if wide:
        _focus_measure_wide(grey, n, scale, fm)
    elif compiled and (compiled_measure := _focus_measure_compiled()) is not None:
        # numba has no float16 arithmetic; float32 holds float16 samples exactly.
        stack = np.ascontiguousarray(grey, np.float32 if dtype == np.float16 else None)[None]
        divisor = _float_divisor(dtype)
        compiled_measure(stack, False, n, fm, exact_scale=scale, divisor=divisor)
    elif exact:
        for p in range(n_planes):
            a = grey[p].astype(np.int64)
            d = n * n * a - _box_sum_int(a, n)
            fm[p] = _box_sum_int(d * d, n) / scale
    else:
        inv_area = 1.0 / (n * n)
        for p in range(n_planes):
            a = grey[p].astype(np.float64)
            if dtype.kind in "iu":
                a /= _float_divisor(dtype)
            dev = a - _box_sum_float(a, n) * inv_area
            v = _box_sum_float(dev * dev, n) * inv_area
            fm[p] = np.where(v >= TINY, v, 0.0)  # as the compiled engine: see TINY
    fmax = fm[0].copy()
    arg = np.zeros((h, w), dtype=np.intp)
    for p in range(1, n_planes):  # plane by plane: contiguous, unlike argmax over axis 0
        arg[fm[p] > fmax] = p  # strict: the first maximum wins, as np.argmax
        np.maximum(fmax, fm[p], out=fmax)
    return fm, fmax, arg


def _focus_measure_wide(grey: np.ndarray, n: int, scale: float, fm: np.ndarray) -> None:
    """Focus measure of 64-bit integers, ``D = n^2 a - sum(a)`` exact before one rounding.

    Their window sums do not fit int64 and would lose the low bits in float64
    (near 2**63 the variations are below float64's resolution of the sum). So
    each sample is split as ``a = 2**32 hi + lo``; the exact int64 ``D`` of each
    half gives ``D = 2**32 D_hi + D_lo``, rounded once to float64; then
    ``fm = sum(D^2) / (n^6 max^2)`` in fixed-order float64 sums. Both engines use
    this code for these rare dtypes.
    """
    nn = n * n
    for p in range(grey.shape[0]):
        a = grey[p]
        hi = (a >> 32).astype(np.int64)  # arithmetic shift for int64, logical for uint64
        lo = (a & 0xFFFFFFFF).astype(np.int64)
        d = (nn * hi - _box_sum_int(hi, n)).astype(np.float64) * 2.0**32
        d += (nn * lo - _box_sum_int(lo, n)).astype(np.float64)
        fm[p] = _box_sum_float(d * d, n) / scale


def _gauss3p(focus: np.ndarray, fm: np.ndarray, arg: np.ndarray):
    """The reference's 3-point Gaussian fit of the focus curve, step 2.

    Reproduces coppafish's ``gauss3p`` including its index handling: the
    centre index is clamped to ``[2, P-3]``, and the line
    ``index3[I >= 1] = index1[I >= 1]`` (which reads ``step - 1`` where
    ``P - 1 - step`` was meant) makes the first and third samples the same
    sample (``Ic + 2`` where the arg-max is 0 or 1, ``Ic - 2`` elsewhere). A
    parabola through two equal outer values is symmetric, so the fitted centre
    sits on ``focus[Ic]``, the (clamped) arg-max plane, and only the width and
    height come from the data. The +1/+2 terms are the reference's MATLAB
    1-based positions; ``u`` is in those units.
    """
    n_planes = fm.shape[0]
    ic = np.clip(arg, 2, n_planes - 3)
    outer = np.where(arg <= 1, ic + 2, ic - 2)
    x1, x2, x3 = focus[ic - 2], focus[ic], focus[ic + 2]
    y1 = np.log(np.take_along_axis(fm, outer[None], axis=0)[0].astype(np.float64))
    y2 = np.log(np.take_along_axis(fm, ic[None], axis=0)[0].astype(np.float64))
    y3 = y1
    # Same expressions, same evaluation order as the reference.
    c = ((y1 - y2) * (x2 - x3) - (y2 - y3) * (x1 - x2)) / (
        (x1**2 - x2**2) * (x2 - x3) - (x2**2 - x3**2) * (x1 - x2)
    )
    b = ((y2 - y3) - c * (x2 - x3) * (x2 + x3 + 2)) / (x2 - x3)
    s_squared = -1 / (2 * c)
    u = b * s_squared
    a = y1 - b * (x1 + 1) - c * (x1 + 1) ** 2
    amp = np.exp(a + u**2.0 / (2 * s_squared))
    return u, s_squared, amp


def selectivity(fm: np.ndarray, fmax: np.ndarray, arg: np.ndarray, focus, n: int) -> np.ndarray:
    """Selectivity ``S`` in dB; NaN where the Gaussian fit is undefined.

    ``S = 20 log10(1 / mean_window(err / (P fmax)))`` with ``err`` the summed
    absolute misfit of the Gaussian to the focus curve. With fewer than 5
    planes there is no 3-point fit at step 2; every pixel is then treated as
    fully selective (``S = +inf``).
    """
    n_planes = fm.shape[0]
    if n_planes < 5:
        return np.full(fmax.shape, np.inf)
    u, s_squared, amp = _gauss3p(focus, fm, arg)
    err = np.zeros(fmax.shape)
    for p in range(n_planes):
        # Sequential over planes, as the reference's loop; fm upcast to float64.
        model = amp * np.exp(-((focus[p] + 1 - u) ** 2) / (2 * s_squared))
        err += np.abs(fm[p].astype(np.float64) - model)
    inv_psnr = _box_sum_float(err / (n_planes * fmax), n) * (1.0 / (n * n))
    return 20 * np.log10(1 / inv_psnr)


def _fuse_numpy(stack, nhsize, focus, alpha, sth, rgb, *, s_fill, blend=True):
    """The NumPy engine: the specification, whole planes at a time."""
    from scipy.signal import medfilt2d  # here: importing scipy.signal takes 0.2-2 s

    native = stack.dtype
    n_planes = focus.shape[0]
    with np.errstate(all="ignore"):
        if rgb:
            grey = np.stack([luminance(stack[:, p]) for p in range(n_planes)])
        else:
            grey = stack
        # The focus measure is bit-identical either way: compiled when numba is there.
        fm, fmax, arg = focus_measure(grey, nhsize)
        del grey
        s_raw = selectivity(fm, fmax.astype(np.float64), arg, focus, nhsize)
        if not blend:
            return np.zeros(stack.shape[-2:], stack.dtype), fmax, arg, s_raw
        s_used = np.where(np.isnan(s_raw), s_fill, s_raw)

        phi = 0.5 * (1 + np.tanh(alpha * (s_used - sth))) / alpha
        phi = medfilt2d(phi, 3)

        flat = fmax == 0
        # fmn = fm / fmax as fm * (1 / fmax) in float64 (one division per pixel, not per
        # voxel); no contrast anywhere (fmax = 0): fmn = 1, all planes equally sharp.
        inv = np.where(flat, 0.0, 1.0 / fmax.astype(np.float64))
        add = flat.astype(np.float64)
        values = stack if rgb else stack[None]
        num = np.zeros((values.shape[0],) + fmax.shape)
        den = np.zeros(fmax.shape)
        for p in range(n_planes):
            fmn = fm[p] * inv + add  # float64
            weight = 0.5 + 0.5 * np.tanh(phi * (fmn - 1))
            den += weight
            for ch in range(values.shape[0]):
                num[ch] += values[ch, p].astype(np.float64) * weight
        fused = num / den
    image = to_dtype(fused if rgb else fused[0], native)
    return image, fmax, arg, s_raw
