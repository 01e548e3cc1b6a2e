"""Compiled (numba) selectivity, weights and blend: the second stage of the compiled engine.

One pass down the rows of the block does, for each row ``r``:

1. the maximum focus measure over planes and its plane (first maximum wins);
2. the reference's 3-point Gaussian fit per pixel, and the misfit ``err`` summed
   over planes in plane order, ``q = err / (P fmax)`` kept in a ring of ``n`` rows;
3. at row ``r - hi`` (once its window is complete): the ``n x n`` box mean of
   ``q`` in the NumPy engine's fixed order, ``S`` in dB and ``phi``, kept in a
   ring of 3 rows;
4. at the row above that: the 3 x 3 median of ``phi`` (zeros outside the block),
   the weights and the blend, written straight to the output.

The block holds only the focus measure (P, Y, X), ``fmax`` and the arg-max
(Y, X), and row buffers. The per-pixel scalar mathematics is in
:mod:`fstack_dask._algorithm.pixel`; the border rules and the order of every sum are the
NumPy engine's (:mod:`fstack_dask._algorithm.block`), so each output pixel is computed
the same way whatever block it lies in.
"""

from __future__ import annotations

import numpy as np

from . import pixel as _pixel
from .compiled import _box_float_row
from .jit import jit

__all__ = ["blend_compiled"]


def _fit_row(fm, focus, r, arg_row, g, u, s2, amp):
    """The reference's Gaussian fit at each pixel of row ``r`` (see ``numpy_engine._gauss3p``).

    ``g`` (5, X) is scratch: the gathered samples first, in a loop of their own,
    so that the arithmetic loop after it vectorises.
    """
    n_planes = fm.shape[0]
    width = u.shape[0]
    for x in range(width):
        i = arg_row[x]
        ic = min(max(i, 2), n_planes - 3)
        outer = ic + 2 if i <= 1 else ic - 2
        g[0, x] = focus[ic - 2]
        g[1, x] = focus[ic]
        g[2, x] = focus[ic + 2]
        g[3, x] = fm[outer, r, x]
        g[4, x] = fm[ic, r, x]
    for x in range(width):
        g[3, x] = _pixel.log(g[3, x])
        g[4, x] = _pixel.log(g[4, x])
    for x in range(width):
        uu, ss, la = _pixel.gauss_fit(g[0, x], g[1, x], g[2, x], g[3, x], g[4, x])
        u[x] = uu
        s2[x] = ss
        amp[x] = la
    for x in range(width):
        amp[x] = _pixel.exp(amp[x])


def _err_row(fm, focus, step, r, u, s2, amp, err):
    """Summed absolute misfit of the Gaussian over the planes (``pixel.misfit``)."""
    for x in range(err.shape[0]):
        err[x] = _pixel.misfit(fm, r, x, focus, step, u[x], s2[x], amp[x])


def _box_mean_row(q, y, lo, hi, rows, vs, pad, out):
    """``n x n`` mean of ``q`` (a ring of ``n`` rows) at row ``y``: the focus measure's
    fixed-order window sum (``compiled._box_float_row``), then divided by the area."""
    n = lo + hi + 1
    _box_float_row(q, n, y, lo, hi, rows, vs, pad, out)
    inv_area = 1.0 / (n * n)
    for x in range(vs.shape[0]):
        out[x] *= inv_area


def _median_row(phi_ring, y, rows, out):
    """3 x 3 median of ``phi`` at row ``y``, zeros outside the block (``medfilt2d``)."""
    width = out.shape[0]
    up = phi_ring[(y + 2) % 3]  # row y - 1
    mid = phi_ring[y % 3]
    down = phi_ring[(y + 1) % 3]  # row y + 1
    has_up = y > 0
    has_down = y < rows - 1
    for x in range(width):
        a0 = up[x - 1] if has_up and x > 0 else 0.0
        a1 = up[x] if has_up else 0.0
        a2 = up[x + 1] if has_up and x < width - 1 else 0.0
        b0 = mid[x - 1] if x > 0 else 0.0
        b1 = mid[x]
        b2 = mid[x + 1] if x < width - 1 else 0.0
        c0 = down[x - 1] if has_down and x > 0 else 0.0
        c1 = down[x] if has_down else 0.0
        c2 = down[x + 1] if has_down and x < width - 1 else 0.0
        out[x] = _pixel.median9(a0, a1, a2, b0, b1, b2, c0, c1, c2)


def _blend_row(values, fm, fmax, y, phi, wrow, inv, add, num, den, fused):
    """Weighted mean of the planes at row ``y`` into ``fused`` (C, X), float64."""
    n_ch = values.shape[0]
    width = den.shape[0]
    fmax_row = fmax[y]
    for x in range(width):
        den[x] = 0.0
        # fm / fmax as fm * (1 / fmax), in float64 as the NumPy engine; no contrast: all 1.
        flat = fmax_row[x] == 0
        inv[x] = 0.0 if flat else 1.0 / np.float64(fmax_row[x])
        add[x] = 1.0 if flat else 0.0
    for c in range(n_ch):
        for x in range(width):
            num[c, x] = 0.0
    for p in range(fm.shape[0]):
        row = fm[p, y]
        # Weights first, in a loop of their own (innermost loops are the ones that vectorise).
        for x in range(width):
            w = _pixel.weight(phi[x], np.float64(row[x]) * inv[x] + add[x])
            wrow[x] = w
            den[x] += w
        for c in range(n_ch):
            src = values[c, p, y]
            acc = num[c]
            for x in range(width):
                acc[x] += np.float64(src[x]) * wrow[x]
    for c in range(n_ch):
        for x in range(width):
            fused[c, x] = num[c, x] / den[x]


def _store_row(fused, y, out, lo_val, hi_val, top, is_int):
    """Write the fused row in the output dtype: rounded half to even and clipped for integers.

    ``hi_val`` is the largest float64 not above the dtype's maximum ``top``: for
    64-bit integers the maximum itself is not a float64 (it would round up and
    wrap), so values beyond ``hi_val`` are written as ``top``.
    """
    for c in range(fused.shape[0]):
        dst = out[c, y]
        for x in range(fused.shape[1]):
            v = fused[c, x]
            if is_int:
                v = _pixel.round_half_even(v)
                if v > hi_val:
                    dst[x] = top
                else:
                    dst[x] = max(v, lo_val)
            else:
                dst[x] = v


def _blend(
    values, fm, focus, step, n, alpha, sth, s_fill, out, lo_val, hi_val, top, is_int, fmax, arg,
    sel, work, q, phi_ring, g, num, fused, blend,
):  # fmt: skip
    n_planes, rows, width = fm.shape
    lo = n // 2
    hi = n - 1 - lo
    fit = n_planes >= 5
    # Row buffers, passed in (allocated by the caller, where tracemalloc sees them).
    u = work[0, :width]
    s2 = work[1, :width]
    amp = work[2, :width]
    err = work[3, :width]
    vs = work[4, :width]
    s_row = work[5, :width]
    phi = work[6, :width]
    den = work[7, :width]
    wrow = work[8, :width]
    pad = work[9]
    inv = work[10, :width]
    add = work[11, :width]
    phi_full = _pixel.phi_from_s(np.inf, alpha, sth, s_fill)  # fewer than 5 planes: S = +inf
    for r in range(rows + hi + 1):
        if r < rows:
            fmax_row = fmax[r]
            arg_row = arg[r]
            first = fm[0, r]
            for x in range(width):
                fmax_row[x] = first[x]
                arg_row[x] = 0
            for p in range(1, n_planes):
                row = fm[p, r]
                for x in range(width):
                    if row[x] > fmax_row[x]:  # strict: the first maximum wins, as np.argmax
                        fmax_row[x] = row[x]
                        arg_row[x] = p
            if fit:
                _fit_row(fm, focus, r, arg_row, g, u, s2, amp)
                _err_row(fm, focus, step, r, u, s2, amp, err)
                qr = q[r % n]
                for x in range(width):
                    qr[x] = err[x] / (n_planes * np.float64(fmax_row[x]))
        y = r - hi
        if 0 <= y < rows:
            ring_row = phi_ring[y % 3]
            if fit:
                _box_mean_row(q, y, lo, hi, rows, vs, pad, s_row)
                for x in range(width):
                    s = 20 * _pixel.log10(1 / s_row[x])
                    s_row[x] = s
                    ring_row[x] = _pixel.phi_from_s(s, alpha, sth, s_fill)
            else:
                for x in range(width):
                    s_row[x] = np.inf
                    ring_row[x] = phi_full
            sel_row = sel[y]
            for x in range(width):
                sel_row[x] = s_row[x]
        ym = y - 1
        if blend and 0 <= ym < rows:
            _median_row(phi_ring, ym, rows, phi)
            _blend_row(values, fm, fmax, ym, phi, wrow, inv, add, num, den, fused)
            _store_row(fused, ym, out, lo_val, hi_val, top, is_int)


def even_step(focus: np.ndarray) -> float:
    """The spacing of evenly spaced focus positions (exactly), else 0.0."""
    if focus.shape[0] < 2:
        return 0.0
    steps = np.diff(focus)
    return float(steps[0]) if np.all(steps == steps[0]) else 0.0


if jit is not None:
    _fit_row = jit(_fit_row)
    _err_row = jit(_err_row)
    _box_mean_row = jit(_box_mean_row)
    _median_row = jit(_median_row)
    _blend_row = jit(_blend_row)
    _store_row = jit(_store_row)
    _blend = jit(_blend)

    def blend_compiled(values, fm, focus, n, alpha, sth, s_fill, out, fmax, arg, sel, blend=True):
        """Selectivity, weights and blend of a block whose focus measure ``fm`` is done.

        ``values`` (C, P, Y, X) are the samples to blend; ``out`` (C, Y, X) receives
        the result in its own dtype; ``fmax`` (Y, X, fm's dtype) and ``arg`` (Y, X)
        are filled; ``sel`` (Y, X) float64 receives ``S`` in dB (NaN where undefined, there
        taken as ``s_fill``). ``blend=False``: ``S`` only, ``out`` left as it is.
        """
        dtype = out.dtype
        is_int = dtype.kind in "iu"
        if is_int:
            info = np.iinfo(dtype)
            lo_val = float(info.min)
            hi_val = float(info.max)
            if int(hi_val) > int(info.max):  # 64-bit: the maximum is not a float64
                hi_val = float(np.nextafter(hi_val, 0.0))
            top = info.max
        else:
            lo_val = hi_val = 0.0
            top = 0
        n_ch, width = values.shape[0], fm.shape[2]
        _blend(
            values, fm, focus, even_step(focus), n, float(alpha), float(sth), float(s_fill), out,
            lo_val, hi_val, dtype.type(top), is_int, fmax, arg, sel,
            np.empty((12, width + n)), np.empty((n, width)), np.empty((3, width)),
            np.empty((5, width)), np.empty((n_ch, width)), np.empty((n_ch, width)), bool(blend),
        )  # fmt: skip

else:  # pragma: no cover
    blend_compiled = None
