"""Dependency-free PNG writing for previews (zlib + struct only).

Keeps the demos and CLI free of an imaging library; only what previews need:
8-bit grey or RGB, no interlacing, no filtering.
"""

from __future__ import annotations

import numbers
import os
import struct
import zlib
from typing import Any

import numpy as np

__all__ = ["to_uint8", "write_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IDAT payload per chunk; several chunks keep each well below the 2**31 - 1
# limit on a chunk's length for very large images.
_IDAT_CHUNK = 1 << 24


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write an 8-bit grey ``(H, W)`` or RGB ``(H, W, 3)`` image as PNG.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file; overwritten if it exists.
    image : numpy.ndarray
        ``uint8`` array of shape ``(H, W)`` or ``(H, W, 3)`` with ``H, W >= 1``.
        Use :func:`to_uint8` to convert other data.

    Raises
    ------
    TypeError
        If ``image`` is not a ``uint8`` numpy array.
    ValueError
        If ``image`` has an unsupported shape.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(f"image must be a uint8 numpy array, got {kind}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"image must have shape (H, W) or (H, W, 3), got {image.shape}")
    height, width = image.shape[:2]
    if height < 1 or width < 1:
        raise ValueError(f"image must be at least 1 x 1, got {image.shape}")
    colour_type = 0 if image.ndim == 2 else 2
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)

    # Each scanline is prefixed with filter type 0 (None).
    rows = np.ascontiguousarray(image).reshape(height, -1)
    raw = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    raw[:, 0] = 0
    raw[:, 1:] = rows
    data = zlib.compress(raw.tobytes(), 6)
    del raw

    with open(path, "wb") as fh:
        fh.write(_SIGNATURE)
        fh.write(_chunk(b"IHDR", ihdr))
        for start in range(0, len(data), _IDAT_CHUNK):
            fh.write(_chunk(b"IDAT", data[start : start + _IDAT_CHUNK]))
        fh.write(_chunk(b"IEND", b""))


def to_uint8(image: Any, *, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Percentile contrast stretch of a numeric array to ``uint8``, for previews.

    Values at or below the ``low`` percentile map to 0, at or above the
    ``high`` percentile to 255, linearly in between. Percentiles are taken over
    the finite values only; NaN maps to 0, +inf to 255, -inf to 0. A constant
    image (or one with no finite values) maps to zeros.

    Parameters
    ----------
    image : array_like
        Real numeric (or boolean) array of any shape.
    low, high : float, default 0.5, 99.5
        Percentiles, ``0 <= low < high <= 100``.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of the same shape.

    Raises
    ------
    TypeError
        If ``image`` is not real numeric, or ``low``/``high`` are not reals.
    ValueError
        If ``low``/``high`` are out of range or not ordered.

    Examples
    --------
    >>> to_uint8(np.array([0.0, 0.5, 1.0, np.nan]), low=0, high=100)
    array([  0, 128, 255,   0], dtype=uint8)
    """
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"image must be a real numeric array, got dtype {arr.dtype}")
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number in [0, 100], got {value!r}")
    low, high = float(low), float(high)
    if not (0.0 <= low < high <= 100.0):
        raise ValueError(f"low and high must satisfy 0 <= low < high <= 100, got {low}, {high}")

    x = arr.astype(np.float64)
    finite = np.isfinite(x)
    out = np.zeros(x.shape, dtype=np.uint8)
    if not finite.any():
        return out
    vals = x if finite.all() else x[finite]
    lo, hi = np.percentile(vals, [low, high])
    if not hi > lo:  # constant (within the percentiles): nothing to stretch
        return out
    with np.errstate(invalid="ignore", over="ignore"):  # +-inf and NaN handled below
        x -= lo
        x *= 255.0 / (hi - lo)
    np.clip(x, 0.0, 255.0, out=x)
    np.rint(x, out=x)
    x[np.isnan(x)] = 0.0
    out[...] = x
    return out
