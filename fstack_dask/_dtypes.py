"""Float64 values into a sample dtype: rounded half to even and clipped, never wrapped.

Shared by the kernel's NumPy engine (the fused image) and the pyramid's 2 x 2 means: the
largest 64-bit integer is no float64 (it rounds up to 2**64 or 2**63), so a plain
``np.clip(..., info.max).astype(dtype)`` wraps a saturated value to 0 or to the minimum.
"""

from __future__ import annotations

import numpy as np

__all__ = ["to_dtype"]


def to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round half to even and clip into an integer dtype; cast into a float dtype.

    Examples
    --------
    >>> to_dtype(np.array([2.0**64, -1.0, 2.5]), np.dtype("uint64")).tolist()
    [18446744073709551615, 0, 2]
    """
    dtype = np.dtype(dtype)
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
