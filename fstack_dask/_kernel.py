"""Per-block numerical kernel of the Pertuz et al. (2013) fusion.

This module is the readable, reference-exact specification of the per-block
numerics, in NumPy (the ``"numpy"`` engine), and the entry point
:func:`fuse_block`, which runs either it or the compiled engine
(:mod:`fstack_dask._compiled` and :mod:`fstack_dask._fused`, numba): one
engine per call, chosen by ``engine=`` or the module-level :data:`ENGINE`.
The two engines compute the same operations in the same order; they differ
only in the last bits of ``exp``/``tanh``/``log`` (NumPy's versus
:mod:`fstack_dask._pixel`), so they are compared by their rounded output.

Layout inside this module is plane-first: a grey block is ``(P, Y, X)``, an
RGB block ``(3, P, Y, X)``, so each plane is one contiguous 2-D array.

Two properties every function here must keep, because the chunked pipeline
relies on them for bit-identical output across chunkings:

* Each output pixel depends only on its neighbourhood, through arithmetic whose
  order does not depend on where the block starts. Integer window sums use
  exact int64 running sums (exact, hence position-free); float window sums add
  the ``n`` terms in a fixed order relative to the output pixel.
* Border rules (replicated edge for the box windows, zeros for the 3 x 3
  median) are applied at the block's edge. Called on the whole image they are
  the reference's rules; called on a block with a halo of
  :func:`fstack_dask.overlap_depth` pixels, the halo absorbs them and the caller
  crops it away.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from ._compiled import focus_measure_compiled, plane_major
from ._fused import blend_compiled


def _default_engine() -> str:
    choice = os.environ.get("FSTACK_DASK_ENGINE", "").strip().lower()
    if choice in ("numpy", "compiled"):
        return choice
    return "compiled" if blend_compiled is not None else "numpy"


#: The engine :func:`fuse_block` uses when it is not given one: ``"compiled"``
#: (numba) when numba is installed, else ``"numpy"``. The environment variable
#: ``FSTACK_DASK_ENGINE=numpy`` (or ``compiled``) sets it in every process.
ENGINE = _default_engine()

#: Use the compiled focus measure in :func:`focus_measure` (same bits either way).
USE_COMPILED = True

# MATLAB's rgb2gray weights, as the reference uses them.
_LUMA = (0.2989, 0.5870, 0.1140)
_INT64_MAX = np.iinfo(np.int64).max


class BlockResult(NamedTuple):
    """What :func:`fuse_block` returns; optional maps are ``None`` unless asked for."""

    image: np.ndarray
    depth: np.ndarray | None
    selectivity: np.ndarray | None


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
    of :mod:`fstack_dask._compiled` computes it (``compiled=None`` follows
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
    elif compiled and focus_measure_compiled is not None:
        # numba has no float16 arithmetic; float32 holds float16 samples exactly.
        stack = np.ascontiguousarray(grey, np.float32 if dtype == np.float16 else None)[None]
        divisor = _float_divisor(dtype)
        focus_measure_compiled(stack, False, n, fm, exact_scale=scale, divisor=divisor)
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
            fm[p] = _box_sum_float(dev * dev, n) * inv_area
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


def fuse_block(
    stack: np.ndarray,
    *,
    nhsize: int = 9,
    focus: np.ndarray | None = None,
    alpha: float = 0.2,
    sth: float = 13.0,
    rgb: bool = False,
    with_depth: bool = False,
    with_selectivity: bool = False,
    engine: str | None = None,
) -> BlockResult:
    """Fuse one block: ``(P, Y, X)`` grey or ``(3, P, Y, X)`` RGB.

    Arguments are assumed valid (the public entry points check them); the
    samples are checked here (non-finite floats, float64 beyond
    :func:`float64_limit`: ``ValueError`` naming ``im_stack``). The fused image
    has the input's dtype in native byte order: integers are rounded half to
    even and clipped to the dtype's range (64-bit integers are fused in float64,
    so to float64's precision: about 1 part in 2**53).

    Where no plane has any contrast in the focus window (``max fm == 0``:
    flat background, saturation) every plane is equally in focus and the
    result is the plane mean; where ``S`` is undefined it is taken as
    ``-inf`` (no selectivity: ``phi = 0``, equal weights). The reference
    instead returns garbage there and fills undefined ``S`` with the whole
    image's minimum, a non-local step.

    ``engine`` is ``"compiled"`` (numba) or ``"numpy"``; None follows
    :data:`ENGINE`. Both compute the same numbers up to the last bits of the
    transcendental functions; never mix them within one image. ``"cuda"`` runs
    the compiled engine's operations on a CUDA GPU (:mod:`fstack_dask._cuda`).

    References
    ----------
    .. [1] S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of
       all-in-focus images by noise-robust selective fusion of limited
       depth-of-field images", IEEE Trans. Image Process. 22(3):1242-1251,
       2013.
    """
    stack = np.asarray(stack)
    native = stack.dtype.newbyteorder("=")
    if stack.dtype != native:
        stack = stack.astype(native)
    n_planes = stack.shape[1] if rgb else stack.shape[0]
    if focus is None:
        focus = np.arange(n_planes, dtype=np.float64)
    focus = np.ascontiguousarray(focus, dtype=np.float64)
    check_samples(stack, nhsize)
    engine = ENGINE if engine is None else engine
    if engine == "compiled":
        if blend_compiled is None:
            raise ValueError("engine='compiled' needs numba, which is not installed")
        fuse = _fuse_compiled
    elif engine == "numpy":
        fuse = _fuse_numpy
    elif engine == "cuda":  # the GPU (device="cuda"); imported only when asked for
        from ._cuda import fuse_cuda as fuse
    else:
        raise ValueError(f"engine must be 'compiled', 'numpy' or 'cuda', got {engine!r}")
    image, fmax, arg, s_raw = fuse(
        stack, nhsize, focus, alpha, sth, rgb, with_selectivity=with_selectivity
    )
    depth = None
    if with_depth:
        depth = focus[arg].astype(np.float32)
        depth[fmax == 0] = np.nan
    return BlockResult(image, depth, s_raw)


def float64_limit(n: int) -> float:
    """Largest magnitude of float64 samples whose local variance cannot overflow.

    Squared deviations of up to twice the magnitude are summed over ``n^2``
    pixels in float64: ``4 n^2 m^2 <= 2**1022``.
    """
    return 2.0**510 / n


def check_samples(stack: np.ndarray, n: int) -> None:
    """Refuse samples the fusion cannot compute with (``ValueError`` naming ``im_stack``).

    Non-finite floats; float64 values beyond :func:`float64_limit` (float32 and
    narrower always fit: their squares are taken in float64).
    """
    if stack.dtype.kind != "f" or stack.size == 0:
        return
    hi, lo = stack.max(), stack.min()  # NaN propagates through both
    if not (np.isfinite(hi) and np.isfinite(lo)):
        raise ValueError("im_stack contains NaN or infinite values; they cannot be fused")
    limit = float64_limit(n)
    biggest = max(abs(float(hi)), abs(float(lo)))
    if biggest > limit:
        raise ValueError(
            f"im_stack has values of magnitude {biggest:.3g}, beyond {limit:.3g}: their local "
            f"variance (nhsize={n}) would overflow float64; rescale the data"
        )


def _fuse_numpy(stack, nhsize, focus, alpha, sth, rgb, *, with_selectivity):
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
        s_used = np.where(np.isnan(s_raw), -np.inf, s_raw)

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
    image = _to_dtype(fused if rgb else fused[0], native)
    sel = s_raw.astype(np.float32) if with_selectivity else None
    return image, fmax, arg, sel


def _fuse_compiled(stack, nhsize, focus, alpha, sth, rgb, *, with_selectivity):
    """The compiled engine: two compiled passes, no (P, Y, X) float64 temporaries."""
    native = stack.dtype
    values = stack if rgb else stack[None]
    if native == np.float16:  # numba has no float16 arithmetic; float32 holds it exactly
        values = values.astype(np.float32)
    values = plane_major(values)  # the reference's layout is pixel-major: one tiled copy
    n_ch, n_planes, h, w = values.shape
    if native.kind in "iu" and native.itemsize == 8:  # rare: the shared NumPy code, same bits
        grey = np.stack([luminance(values[:, p]) for p in range(n_planes)]) if rgb else values[0]
        fm = focus_measure(grey, nhsize, compiled=False)[0]
        del grey
    else:
        fm = np.empty((n_planes, h, w), fm_dtype(native))
        exact = _exact_int_ok(native, nhsize)
        scale = float(nhsize**6) * float(np.iinfo(native).max) ** 2 if exact else None
        focus_measure_compiled(
            values, rgb, nhsize, fm, exact_scale=scale, divisor=_float_divisor(native)
        )
    fmax = np.empty((h, w), fm.dtype)
    arg = np.empty((h, w), np.intp)
    out = np.empty((n_ch, h, w), np.float64 if native == np.float16 else native)
    sel = np.empty((h, w), np.float32) if with_selectivity else None
    blend_compiled(values, fm, focus, nhsize, alpha, sth, out, fmax, arg, sel)
    image = out if rgb else out[0]
    return image.astype(native, copy=False), fmax, arg, sel


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round half to even and clip into an integer dtype; cast into a float dtype."""
    if dtype.kind == "f":
        return values.astype(dtype)
    info = np.iinfo(dtype)
    top = float(info.max)
    if int(top) > info.max:  # 64-bit: the maximum is no float64; it would round up and wrap
        top = float(np.nextafter(top, 0.0))
    rounded = np.round(values)
    out = np.clip(rounded, float(info.min), top).astype(dtype)
    out[rounded > top] = info.max
    return out


def block_memory(
    shape_yx: tuple[int, int],
    n_planes: int,
    n_channels: int,
    itemsize: int,
    rgb: bool,
    *,
    nhsize: int = 9,
    engine: str | None = None,
    float16: bool = False,
) -> int:
    """Upper estimate, in bytes, of what one :func:`fuse_block` call holds.

    Both engines hold the input block and the copy Dask makes when it
    concatenates the halo (``2 C P b`` per pixel) and the focus measure
    (``P f``, ``f`` = 4 bytes for samples of up to 2 bytes, else 8, see
    :func:`fm_dtype`). The compiled engine adds only 2-D maps (``fmax``, the
    arg-max, the output, the selectivity and the depth map being made) and
    row buffers of ``O(nhsize)`` rows (``float16=True``: the samples are
    widened to float32 first, ``4 C P`` more). The NumPy engine adds the luminance for RGB, the
    int64 temporaries of one plane and about twenty 2-D float64 maps.
    Measured with tracemalloc in ``tests/test_kernel_memory.py``. The ``"cuda"``
    engine: the larger of its host and GPU memory (``_cuda.host_block_memory``,
    ``_cuda.device_block_memory``), so that ``memory_per_task`` bounds both.
    """
    rows, cols = int(shape_yx[0]), int(shape_yx[1])
    pixels = rows * cols
    f = 4 if itemsize <= 2 else 8
    engine = ENGINE if engine is None else engine
    if engine == "cuda":  # the larger of what the block holds on the host and on the GPU
        from ._cuda import device_block_memory, host_block_memory

        shape = (rows, cols)
        return max(
            host_block_memory(shape, n_planes, n_channels, itemsize, rgb, float16=float16),
            device_block_memory(shape, n_planes, n_channels, itemsize, float16=float16),
        )
    if engine == "numpy":
        per_pixel = n_planes * (2 * n_channels * itemsize + (itemsize if rgb else 0) + f)
        return pixels * (per_pixel + 8 * (8 + 20 + n_channels + 2))
    # fmax, arg-max, output (float64 before a float16 cast), selectivity, depth map in making.
    per_pixel = n_planes * (2 * n_channels * itemsize + f) + f + 8 + 10 * n_channels + 4 + 13
    if float16:
        per_pixel += 4 * n_channels * n_planes
    if itemsize == 8:  # 64-bit integers: the NumPy focus measure (luminance, plane temporaries)
        per_pixel += (8 * n_planes if rgb else 0) + 80
    n = int(nhsize)
    row_buffers = cols * (32 * n + 200 + 32 * n_channels) + 200 * n
    return pixels * per_pixel + row_buffers
