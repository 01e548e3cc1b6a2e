"""The multiscale pyramid of an output: how many levels, their shapes, the 2 x 2 mean.

Each level-``L`` pixel is the mean of the (up to) 2 x 2 level-``L - 1`` pixels it covers,
summed in a fixed order, so the pyramid is bit-identical whatever the chunking and the
scheduler, like level 0. Integer images are rounded half to even; the depth and selectivity
maps average their finite values (NaN where none is). The passes that compute the levels
block by block are in ``_runs.pyramid``.
"""

from __future__ import annotations

import math

import numpy as np

from .._dtypes import to_dtype
from .._fp_env import with_ieee_arithmetic

__all__ = ["downsample", "level_shape", "n_levels"]


def n_levels(shape_yx: tuple[int, int], block: tuple[int, int]) -> int:
    """Levels beyond 0 until the image fits in one block (chunk): 0 if it already does."""
    ratio = max(shape_yx[0] / block[0], shape_yx[1] / block[1])
    return max(0, math.ceil(math.log2(ratio))) if ratio > 1 else 0


def level_shape(shape_yx: tuple[int, int], level: int) -> tuple[int, int]:
    f = 2**level
    return math.ceil(shape_yx[0] / f), math.ceil(shape_yx[1] / f)


def _pair_sum(a: np.ndarray, axis: int) -> tuple[np.ndarray, int]:
    """Sum of neighbouring pairs along ``axis`` (a trailing odd element alone), and counts."""
    even = np.take(a, np.arange(0, a.shape[axis], 2), axis=axis)
    odd = np.take(a, np.arange(1, a.shape[axis], 2), axis=axis)
    total = even.copy()
    index = [slice(None)] * a.ndim
    index[axis] = slice(0, odd.shape[axis])
    total[tuple(index)] += odd
    return total, odd.shape[axis]


#: Input samples per band of rows: the float64 temporaries of a whole 8192^2 region (a level
#: task of 4096 px chunks) held 30 times its uint8 samples, 1.9 GiB, twice memory_per_task.
BAND_PIXELS = 2**20


@with_ieee_arithmetic
def downsample(values: np.ndarray, *, dtype: np.dtype, nan_aware: bool) -> np.ndarray:
    """2 x 2 mean over the last two axes (odd edges average what they have), in bands of an
    even number of rows (each output pixel's sum is the same, in the same order).

    Examples
    --------
    >>> downsample(np.array([[1, 2, 3], [3, 4, 5]], np.uint8), dtype=np.uint8, nan_aware=False)
    array([[2, 4]], dtype=uint8)
    """
    rows, row_pixels = values.shape[-2], math.prod(values.shape) // max(1, values.shape[-2])
    band = max(2, BAND_PIXELS // max(1, row_pixels) // 2 * 2)
    if rows <= band:
        return _downsample(values, dtype=dtype, nan_aware=nan_aware)
    out = np.empty((*values.shape[:-2], -(-rows // 2), -(-values.shape[-1] // 2)), dtype)
    for y in range(0, rows, band):
        out[..., y // 2 : (y + band) // 2, :] = _downsample(
            values[..., y : y + band, :], dtype=dtype, nan_aware=nan_aware
        )
    return out


def _downsample(values: np.ndarray, *, dtype: np.dtype, nan_aware: bool) -> np.ndarray:
    f = values.astype(np.float64)
    # only NaN is left out: selectivity is +inf with fewer than 5 planes (a mean over it is
    # +inf), and leaving it out made a level NaN or dropped it (an adversarial run)
    finite = ~np.isnan(f) if nan_aware else None
    if nan_aware:
        f = np.where(finite, f, 0.0)
    s, _ = _pair_sum(f, f.ndim - 2)
    s, _ = _pair_sum(s, f.ndim - 1)
    if nan_aware:
        n = finite.astype(np.float64)
    else:
        n = np.ones(f.shape[-2:], np.float64)
    n, _ = _pair_sum(n, n.ndim - 2)
    n, _ = _pair_sum(n, n.ndim - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s / n
    return to_dtype(mean, np.dtype(dtype))  # (a 64-bit maximum wrapped: an adversarial run)
