"""Small helpers the input readers share: optional imports, unit names, region keys.

Kept apart from the readers so that each reader module holds one input kind only.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import math
import os
import sys
from collections.abc import Iterator
from typing import Any

from .._imports import keeping_signal_handlers
from .._ngff import OME_LENGTHS, OME_TIMES

__all__ = [
    "DIM_NAMES",
    "MissingExtraError",
    "UnreadableFileError",
    "dim_letters",
    "file_stamp",
    "import_optional",
    "named_letters",
    "ngff_unit",
    "region_key",
    "region_unit",
    "without_stamps",
]

_NO_STAMPS = contextvars.ContextVar("fstack_dask_no_stamps", default=False)


def file_stamp(path: str) -> tuple[int, ...]:
    """(size, mtime in ns) of the file at ``path``, for a reader's dask token (a file changed
    gets another key); nothing within :func:`without_stamps`."""
    if _NO_STAMPS.get():
        return ()
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def without_stamps() -> Iterator[None]:
    """Tokens of what a reader reads, not of when its files were last written: a resume's
    record of a file source, whose files are compared one by one (size, times, inode) and whose
    finished blocks are read again where one differs, so that a file only touched (or copied
    back unchanged) is accepted there, as for a store's chunk files."""
    token = _NO_STAMPS.set(True)
    try:
        yield
    finally:
        _NO_STAMPS.reset(token)


#: px along y and x of a read unit of a source read by any region at no decoding cost
#: (memory-mapped or contiguous data), as the vendor readers' regions
REGION_UNIT = 512


class MissingExtraError(ImportError):
    """An optional dependency of one input kind is not installed."""


class UnreadableFileError(OSError):
    """One file of a source cannot be decoded (truncated, corrupt): messages name the file,
    not the region of the stack that needed it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"file {path!r} cannot be decoded ({reason})")
        self.path, self.reason = path, reason

    def __reduce__(self):  # raised in worker processes, shown by the driver
        return type(self), (self.path, self.reason)


def import_optional(module: str, *, extra: str, what: str, package: str | None = None) -> Any:
    """Import `module` or raise a one-line `MissingExtraError` naming the extra to install.

    Parameters
    ----------
    module : str
        Module to import, e.g. ``"tifffile"``.
    extra : str
        The ``fstack_dask`` extra that installs it, e.g. ``"tiff"``.
    what : str
        What needs it, for the message, e.g. ``"reading TIFF files"``.
    package : str, optional
        The name to install it by, when not `module` (``"pillow"`` for ``PIL``).

    Returns
    -------
    module
        The imported module.
    """
    found = sys.modules.get(module)
    if found is not None:  # (readers ask at each file: no handlers to keep)
        return found
    try:
        with keeping_signal_handlers():  # (dask-jobqueue's import takes Ctrl-C for itself)
            return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{what} needs the package {package or module!r}, which is not installed; "
            f'install it with: pip install "fstack_dask[{extra}]"'
        ) from exc


# OME-NGFF 0.4/0.5 allow the UDUNITS-2 names below; files spell them many ways.
_NGFF_UNITS = {
    "angstrom", "attometer", "centimeter", "decimeter", "exameter", "femtometer", "foot",
    "gigameter", "hectometer", "inch", "kilometer", "megameter", "meter", "micrometer",
    "mile", "millimeter", "nanometer", "parsec", "petameter", "picometer", "terameter",
    "yard", "yoctometer", "yottameter", "zeptometer", "zettameter",
    "attosecond", "centisecond", "day", "decisecond", "exasecond", "femtosecond",
    "gigasecond", "hectosecond", "hour", "kilosecond", "megasecond", "microsecond",
    "millisecond", "minute", "nanosecond", "petasecond", "picosecond", "second",
    "terasecond", "yoctosecond", "yottasecond", "zeptosecond", "zettasecond",
}  # fmt: skip
_UNIT_ALIASES = {
    "\u00b5m": "micrometer",  # micro sign
    "\u03bcm": "micrometer",  # Greek mu
    "um": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "nm": "nanometer",
    "pm": "picometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "dm": "decimeter",
    "m": "meter",
    "km": "kilometer",
    "\u00e5": "angstrom",
    "\u212b": "angstrom",
    "a": "angstrom",
    "in": "inch",
    "inches": "inch",
    "s": "second",
    "sec": "second",
    "secs": "second",
    "seconds": "second",
    "ms": "millisecond",
    "msec": "millisecond",
    "\u00b5s": "microsecond",
    "\u03bcs": "microsecond",
    "us": "microsecond",
    "usec": "microsecond",
    "ns": "nanosecond",
    "ps": "picosecond",
    "fs": "femtosecond",
    "min": "minute",
    "mins": "minute",
    "minutes": "minute",
    "h": "hour",
    "hr": "hour",
    "hours": "hour",
    "d": "day",
    "days": "day",
}


_OME_SYMBOLS = {
    **{symbol: name for name, (symbol, _) in OME_LENGTHS.items()},
    **{symbol: name for name, symbol in OME_TIMES.items()},
}


# Dimension names, besides single letters, that say what an axis is; anything else
# (xarray's default "dim_0", "band", "row", ...) needs axes=.
DIM_NAMES = {
    "focus": "z", "depth": "z", "plane": "z", "planes": "z",
    "time": "t",
    "channel": "c", "channels": "c",
}  # fmt: skip


def dim_letters(names: Any) -> list[str | None]:
    """Our letter for each dimension name (a single letter, any case, or one of `DIM_NAMES`),
    None for a name that says nothing (``"dim_0"``, ``None``).

    Examples
    --------
    >>> dim_letters(["Channel", "depth", "Y", "x", "band", None])
    ['c', 'z', 'y', 'x', None, None]
    """
    out: list[str | None] = []
    for name in names:
        text = name if isinstance(name, str) else ""
        out.append(text.lower() if len(text) == 1 else DIM_NAMES.get(text.lower()))
    return out


def named_letters(names: Any) -> list[str | None]:
    """`dim_letters`, or all None where two words name one axis (``plane`` and ``depth``):
    such names say nothing and axes= decides, as for a Zarr array since 6cb9f60 (an HDF5
    dataset or xarray array so named was refused with axes= as contradicting 'zzyx').
    Two single letters for one axis are the file's own contradiction, refused as before.

    Examples
    --------
    >>> named_letters(["plane", "depth", "y", "x"]), named_letters(["z", "Z", "y", "x"])
    ([None, None, None, None], ['z', 'z', 'y', 'x'])
    """
    letters = dim_letters(names)
    if len(set(letters)) < len(letters) and any(isinstance(n, str) and len(n) > 1 for n in names):
        return [None] * len(letters)
    return letters


def ngff_unit(name: Any) -> str | None:
    """The OME-NGFF unit name for a unit as files write it, or None when unknown.

    Examples
    --------
    >>> ngff_unit("\u00b5m"), ngff_unit("micron"), ngff_unit("Second"), ngff_unit("pixel")
    ('micrometer', 'micrometer', 'second', None)
    >>> ngff_unit("Mm"), ngff_unit("mm"), ngff_unit("ft")  # OME's symbols, case and all
    ('megameter', 'millimeter', 'foot')
    >>> ngff_unit("micrometre"), ngff_unit("Nanometres"), ngff_unit("inches")
    ('micrometer', 'nanometer', 'inch')
    """
    if not isinstance(name, str):
        return None
    if name.strip() in _OME_SYMBOLS:  # "Mm" is a megametre, "mm" a millimetre
        return _OME_SYMBOLS[name.strip()]
    low = name.strip().lower().replace("metre", "meter")  # British "micrometre", CF's too
    if low in _NGFF_UNITS:
        return low
    if low.endswith("s") and low[:-1] in _NGFF_UNITS:  # "micrometers", "seconds"
        return low[:-1]
    return _UNIT_ALIASES.get(name.strip(), _UNIT_ALIASES.get(low))


def positive_finite(value: Any) -> float | None:
    """`value` as a float when it is a finite number > 0 (a usable pixel size), else None."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def region_unit(axes: str, shape: tuple[int, ...], *, rgb: bool = False) -> tuple[int, ...]:
    """The read unit of data that any region of is read without decoding more (contiguous
    HDF5, uncompressed TIFF): every plane and colour sample of :data:`REGION_UNIT` px,
    one of every other axis. Its whole shape as the unit made every block read the whole
    stack (an adversarial run: 50 reads of it at 4096^2, memory growing with the image).
    ``rgb``: the ``c`` axis holds colour samples, read together.

    Examples
    --------
    >>> region_unit("tzyx", (3, 21, 4096, 300))
    (1, 21, 512, 300)
    """
    return tuple(
        min(REGION_UNIT, n) if a in "yx" else n if a == "z" or (a == "c" and rgb) else 1
        for a, n in zip(axes, shape, strict=True)
    )


def region_key(key: Any, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Normalise an index into one step-1 slice per dimension, clipped to `shape`.

    The readers fetch whole read units and crop them, so they only need
    contiguous regions. Integers are allowed (they select a length-1 slice;
    callers drop the dimension afterwards with `int_axes`).
    """
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = (slice(None),) * (len(shape) - len(key) + 1)
        key = key[:at] + fill + key[at + 1 :]
    if len(key) > len(shape):
        raise IndexError(f"too many indices ({len(key)}) for {len(shape)} dimensions")
    key = key + (slice(None),) * (len(shape) - len(key))
    out = []
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step != 1:
                raise IndexError(f"only step-1 slices are supported, got {k!r}")
            out.append(slice(start, max(start, stop)))
        else:
            i = int(k)  # numpy integers too
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for a dimension of length {n}")
            i %= n
            out.append(slice(i, i + 1))
    return tuple(out)


def int_axes(key: Any, ndim: int) -> tuple[int, ...]:
    """Dimensions that an index selects with an integer (to be squeezed from the result)."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:at] + (slice(None),) * (ndim - len(key) + 1) + key[at + 1 :]
    return tuple(i for i, k in enumerate(key) if not isinstance(k, slice))
