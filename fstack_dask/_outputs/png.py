"""Dependency-free PNG writing for previews (zlib + struct only).

Keeps the demos and CLI free of an imaging library; only what previews need:
8-bit grey or RGB, no interlacing, no filtering, and ``tEXt`` chunks (the demo marks its
previews with one, so that it never replaces a PNG it did not write).
"""

from __future__ import annotations

import contextlib
import numbers
import os
import struct
import uuid
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["read_png_text", "to_uint8", "write_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IDAT payload per chunk; several chunks keep each well below the 2**31 - 1
# limit on a chunk's length for very large images.
_IDAT_CHUNK = 1 << 24


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def write_png(
    path: str | os.PathLike[str], image: np.ndarray, *, text: Mapping[str, str] | None = None
) -> None:
    """Write an 8-bit grey ``(H, W)`` or RGB ``(H, W, 3)`` image as PNG.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file; overwritten if it exists.
    image : numpy.ndarray
        ``uint8`` array of shape ``(H, W)`` or ``(H, W, 3)`` with ``H, W >= 1``.
        Use :func:`to_uint8` to convert other data.
    text : mapping of str to str, optional
        ``tEXt`` chunks to write, keyword to text (e.g. ``{"Software": ...}``): keywords of
        1-79 printable Latin-1 characters, texts in Latin-1.

    Raises
    ------
    TypeError
        If ``image`` is not a ``uint8`` numpy array.
    ValueError
        If ``image`` has an unsupported shape, or ``text`` a keyword or text PNG cannot hold.
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
    texts = [_text_chunk(key, value) for key, value in (text or {}).items()]

    # Each scanline is prefixed with filter type 0 (None).
    rows = np.ascontiguousarray(image).reshape(height, -1)
    raw = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    raw[:, 0] = 0
    raw[:, 1:] = rows
    data = zlib.compress(raw.tobytes(), 6)
    del raw

    # Written aside, then renamed over ``path``: a file replaced keeps its old content for
    # its other hard links (a user's backup), and a crash leaves no truncated PNG.
    aside = f"{os.fspath(path)}.{uuid.uuid4().hex}.tmp"
    try:
        with open(aside, "wb") as fh:
            fh.write(_SIGNATURE)
            fh.write(_chunk(b"IHDR", ihdr))
            for body in texts:
                fh.write(_chunk(b"tEXt", body))
            for start in range(0, len(data), _IDAT_CHUNK):
                fh.write(_chunk(b"IDAT", data[start : start + _IDAT_CHUNK]))
            fh.write(_chunk(b"IEND", b""))
        os.replace(aside, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)


def _text_chunk(key: str, value: str) -> bytes:
    ok = isinstance(key, str) and 1 <= len(key) <= 79 and key == key.strip() and "  " not in key
    if not ok or not all(32 <= ord(c) <= 126 or 161 <= ord(c) <= 255 for c in key):
        raise ValueError(
            f"text keys must be 1-79 printable Latin-1 characters without leading, trailing "
            f"or double spaces, got {key!r}"
        )
    if not isinstance(value, str) or "\x00" in value:
        raise ValueError(f"text[{key!r}] must be a str without NUL characters, got {value!r}")
    try:
        return key.encode("latin-1") + b"\x00" + value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"text[{key!r}] must be Latin-1 text, got {value!r}") from None


def read_png_text(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``tEXt`` chunks of a PNG file, keyword to text.

    Reads chunk headers only up to the image data's end; returns an empty dict for a file
    that is not a PNG or is cut short (what it holds is then no text of ours).

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    dict of str to str
    """
    out: dict[str, str] = {}
    with open(path, "rb") as fh:
        if fh.read(8) != _SIGNATURE:
            return {}
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return out
            length, kind = struct.unpack(">I", head[:4])[0], head[4:]
            if kind == b"IEND":
                return out
            if kind != b"tEXt":
                fh.seek(length + 4, os.SEEK_CUR)  # skip the body (image data) and its CRC
                continue
            body, crc = fh.read(length), fh.read(4)
            if len(crc) < 4 or struct.unpack(">I", crc)[0] != zlib.crc32(body, zlib.crc32(kind)):
                return out  # damaged: trust nothing after it
            key, _, value = body.partition(b"\x00")
            out[key.decode("latin-1")] = value.decode("latin-1")


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
