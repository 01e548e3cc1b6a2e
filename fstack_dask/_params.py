"""Parameter checks and the overlap-depth helper shared by every layer.

Kept free of dask and zarr so the kernel, the graph builder and the I/O layer
all validate the same way and derive the halo from one place.
"""

from __future__ import annotations

import numbers
import os
from typing import Any, Literal

import numpy as np

from ._public import public

__all__ = ["overlap_depth", "parse_axes"]

DEFAULT_MEMORY_PER_TASK = 256 * 2**20  # bytes one task may hold


#: The largest focus window: 4095 px (a halo of 6142 px); beyond, a number that large
#: overflowed in float conversions (an adversarial run). ``M / 200`` for the widest images.
MAX_NHSIZE = 4095

#: The largest ``memory_per_task``: 1 PiB, beyond any node (and an OverflowError beyond).
MAX_MEMORY = 2**50


def check_nhsize(nhsize: Any) -> int:
    """Return ``nhsize`` as an int, or raise naming the parameter."""
    if isinstance(nhsize, (bool, np.bool_)) or not isinstance(nhsize, numbers.Integral):
        raise TypeError(
            f"nhsize must be an integer from 1 to {MAX_NHSIZE}, got {nhsize!r} "
            f"({type(nhsize).__name__})"
        )
    nhsize = int(nhsize)
    if not 1 <= nhsize <= MAX_NHSIZE:
        shown = nhsize if abs(nhsize) < 10**30 else f"a number of {len(str(abs(nhsize)))} digits"
        raise ValueError(f"nhsize must be an integer from 1 to {MAX_NHSIZE}, got {shown}")
    return nhsize


def _finite(value: numbers.Real, name: str, expected: str) -> float:
    """``float(value)``, refusing what float64 cannot hold (a 400-digit int: OverflowError)."""
    try:
        number = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be {expected}, got a number beyond float64") from None
    if not np.isfinite(number):
        raise ValueError(f"{name} must be {expected}, got {number}")
    return number


@public
def overlap_depth(nhsize: int) -> int:
    """Halo, in pixels, that makes a block's result independent of its neighbours.

    The receptive field of one output pixel is a chain of three ``nhsize`` box
    windows (local mean, local variance, the selectivity's PSNR average) and one
    3 x 3 median, so a block needs ``3 * (nhsize // 2) + 1`` pixels of context on
    each side. Even sizes are asymmetric (offsets ``-n/2 .. n/2 - 1``); the
    larger side is used.

    Parameters
    ----------
    nhsize : int
        Size of the focus-measure window of Pertuz et al. [1]_.

    Returns
    -------
    int
        The halo depth in pixels.

    References
    ----------
    .. [1] S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of
       all-in-focus images by noise-robust selective fusion of limited
       depth-of-field images", IEEE Trans. Image Process. 22(3):1242-1251,
       2013. doi:10.1109/TIP.2012.2231087

    Examples
    --------
    >>> overlap_depth(9)
    13
    >>> overlap_depth(10)
    16
    """
    return 3 * (check_nhsize(nhsize) // 2) + 1


#: The smallest ``alpha``: ``phi`` reaches ``1 / alpha``, and from about 1e-17 on the
#: weights of every plane round to 0 and the fusion to NaN (an adversarial run). Far below any
#: useful value (the paper's range is (0, 1]; the reference's default 0.2).
MIN_ALPHA = 1e-6


def check_alpha(alpha: Any) -> float:
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a real number in [{MIN_ALPHA:g}, 1], got {alpha!r}")
    alpha = _finite(alpha, "alpha", f"in [{MIN_ALPHA:g}, 1]")
    if not (MIN_ALPHA <= alpha <= 1.0):
        raise ValueError(
            f"alpha must be in [{MIN_ALPHA:g}, 1] (smaller values make every weight round "
            f"to 0 or 1), got {alpha}"
        )
    return alpha


def check_sth(sth: Any) -> float:
    if isinstance(sth, (bool, np.bool_)) or not isinstance(sth, numbers.Real):
        raise TypeError(f"sth must be a finite real number, got {sth!r}")
    return _finite(sth, "sth", "a finite real number")


def check_focus(focus: Any, n_planes: int) -> np.ndarray:
    """Return the focus positions as float64, defaulting to ``arange(P)``."""
    if focus is None:
        return np.arange(n_planes, dtype=np.float64)
    arr = np.asarray(focus)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"focus must be a 1-D sequence of real numbers, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != n_planes:
        raise ValueError(
            f"focus must be 1-D with one position per plane ({n_planes}), got shape {arr.shape}"
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"focus must be finite, got {arr.tolist()}")
    if np.any(np.abs(arr) > np.finfo(np.float32).max):  # the depth map's dtype: inf there
        raise ValueError(
            f"focus must lie within float32's range (|value| <= 3.4e38, the depth map's "
            f"dtype), got {arr.tolist()}"
        )
    steps = np.diff(arr)
    if n_planes > 1 and not (np.all(steps > 0) or np.all(steps < 0)):
        # The 3-point fit divides by differences of focus positions.
        raise ValueError(f"focus must be strictly monotonic, got {arr.tolist()}")
    if n_planes > 1 and np.abs(steps).min() < 1e-6 * (np.abs(arr).max() + 1.0):
        from ._errors import warn

        # The reference's fit adds 1 to each position (MATLAB's index): steps far below
        # that 1 (metres, or large offsets) cancel to a few digits, and the engines and the
        # reference then differ by many levels (an adversarial run).
        warn(
            f"focus steps of {np.abs(steps).min():.3g} at positions up to "
            f"{np.abs(arr).max():.3g} leave the reference's Gaussian fit (which adds 1 to each "
            "position) a few significant digits: the result is that of an ill-conditioned fit; "
            "give focus in plane numbers or in micrometres"
        )
    return arr


def check_plain_array(obj: Any, name: str) -> None:
    """Refuse what a fusion of an array would lose or cannot plan: a masked array's mask (dropped
    silently), a dask array's unknown chunk sizes (NaN, after boolean indexing: raw errors
    from NumPy or dask; an adversarial run)."""
    # An ndarray's .data is a memoryview, which numpy refuses to make of datetime64 samples
    # ("cannot include dtype 'M' in a buffer", naming no parameter): look inside other arrays only.
    inner = obj if isinstance(obj, np.ndarray) else getattr(obj, "data", obj)
    meta = getattr(inner, "_meta", None)  # a dask array's chunk type
    if isinstance(obj, np.ma.MaskedArray) or isinstance(meta, np.ma.MaskedArray):
        raise TypeError(
            f"{name} is a masked array, whose mask the fusion would ignore; pass "
            f"{name}.filled(value), or {name}.data to fuse the values under the mask too"
        )
    chunks = getattr(inner, "chunks", None)
    # (a Zarr array's or an HDF5 dataset's chunks are a tuple of ints: only dask's hold NaN)
    axes = [axis for axis in chunks if isinstance(axis, tuple)] if isinstance(chunks, tuple) else []
    if any(isinstance(c, float) and np.isnan(c) for axis in axes for c in axis):
        raise ValueError(
            f"{name} is a dask array with unknown chunk sizes (NaN: after boolean indexing?); "
            f"call {name}.compute_chunk_sizes() first"
        )


def wider_than_float64(dtype: np.dtype) -> str | None:
    """Why a floating dtype wider than float64 cannot be fused, else None.

    ``np.longdouble`` (float128 on x86-64 Linux) passed the dtype checks and then failed in
    numba's typing, a page of its errors, or at the output ("No Zarr data type found"): the
    fusion computes in float64, and neither Zarr nor OME-TIFF stores such samples.
    """
    if dtype.kind == "f" and dtype.itemsize > 8:
        return (
            f"has dtype {dtype} (long double), wider than the float64 the fusion computes "
            "in and than Zarr or OME-TIFF can store; convert it to float64 first"
        )
    return None


def check_dtype(dtype: Any, name: str = "im_stack") -> np.dtype:
    """Accept integer and floating dtypes up to 64 bits (any byte order); refuse the rest."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        raise TypeError(
            f"{name} must have an integer or floating dtype, got {dtype} "
            "(bool, complex, datetime, object and string data cannot be fused)"
        )
    if (why := wider_than_float64(dtype)) is not None:
        raise TypeError(f"{name} {why} ({name}.astype('float64'))")
    return dtype


def parse_axes(axes: Any, ndim: int) -> str:
    """Validate and normalise an axes string.

    Parameters
    ----------
    axes : str
        One letter per array dimension, case-insensitive. Must contain ``z``
        (focus), ``y`` and ``x``; ``c`` marks the optional channel axis and
        any other letter is a batch axis.
    ndim : int
        Number of dimensions of the array the axes describe.

    Returns
    -------
    str
        The lower-cased axes string.

    Raises
    ------
    TypeError
        If `axes` is not a str.
    ValueError
        If `axes` has the wrong length, contains non-letters or repeated
        letters, or lacks one of ``z``, ``y``, ``x``.

    Examples
    --------
    >>> parse_axes("CZYX", 4)
    'czyx'
    >>> parse_axes("yxz", 3)
    'yxz'
    """
    if not isinstance(axes, str):
        raise TypeError(f"axes must be a str such as 'zyx', got {type(axes).__name__}")
    low = axes.lower()
    if len(low) != ndim:
        raise ValueError(
            f"axes {axes!r} has {len(low)} letters but the array has {ndim} dimensions; "
            f"expected exactly one letter per dimension (e.g. 'zyx' for a 3-D stack)"
        )
    if not (low.isascii() and low.isalpha()):
        raise ValueError(f"axes {axes!r} must contain only ASCII letters, e.g. 'zyx' or 'czyx'")
    repeated = sorted({a for a in low if low.count(a) > 1})
    if repeated:
        raise ValueError(
            f"axes {axes!r} repeats {''.join(repeated)!r}; each letter may appear once"
        )
    missing = [a for a in "zyx" if a not in low]
    if missing:
        raise ValueError(
            f"axes {axes!r} lacks {''.join(missing)!r}; expected the focus axis 'z' and the "
            f"image axes 'y' and 'x' (e.g. 'zyx')"
        )
    return low


def check_flag(value: Any, name: str) -> bool:
    """A True/False option; anything else (``"no"``, 0, None) is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


MAX_CHUNK = 2**31 - 1


def check_chunks(chunks: Any, name: str = "chunks") -> tuple[int, int] | None:
    """``None``, a positive int, or a (y, x) pair of them, each at most 2**31 - 1.

    A value of another type (a bool, a float, a str, a list of one) is a TypeError naming the
    type expected, where it was a ValueError as a 0 is (a review)."""
    if chunks is None:
        return None
    pair = (chunks, chunks) if isinstance(chunks, (numbers.Integral,)) else chunks
    if isinstance(pair, np.ndarray) and pair.ndim == 1:  # (y, x) as an array of ints
        pair = tuple(pair.tolist())
    ok = isinstance(pair, (tuple, list)) and len(pair) == 2
    if not ok or not all(
        isinstance(c, numbers.Integral) and not isinstance(c, (bool, np.bool_)) for c in pair
    ):
        raise TypeError(
            f"{name} must be a positive int or a (y, x) pair of them, got {chunks!r} "
            f"({type(chunks).__name__})"
        )
    if any(c < 1 for c in pair):
        raise ValueError(f"{name} must be a positive int or a (y, x) pair of them, got {chunks!r}")
    if any(int(c) > MAX_CHUNK for c in pair):
        raise ValueError(f"{name} must be at most {MAX_CHUNK} pixels, got {chunks!r}")
    return int(pair[0]), int(pair[1])


def check_memory(value: Any, name: str = "memory_per_task") -> int:
    """Bytes from an int or a size string such as ``"256MiB"``, ``"1GiB"``, ``"500MB"``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number of bytes or a size such as '1GiB', got {value!r}")
    if _fraction_of_a_byte(value):
        # (1.5 ran as 1 byte, refused later as the option's: a config's 1.5 meant GiB)
        raise ValueError(
            f"{name} must be a whole number of bytes or a size with its unit such as "
            f"'{str(value).strip()}GiB', got {value!r}"
        )
    if isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and np.isfinite(value)
    ):
        n = int(value)
    elif isinstance(value, str) and value.strip():
        from dask.utils import parse_bytes

        try:
            # (dask reads a unit alone, "MiB", as one of it: a number was left out)
            n = parse_bytes(value.strip()) if any(map(str.isdigit, value)) else None
        except OverflowError:  # (a 400-digit size: dask's int(inf))
            raise ValueError(
                f"{name} must be at most 1 PiB ({MAX_MEMORY} bytes), got a number beyond float64"
            ) from None
        except (ValueError, TypeError):
            n = None
        if n is None:
            raise ValueError(
                f"{name} must be a size such as 256MiB, 1GiB, 500MB or a number of bytes "
                f"(units B to PiB, at most 1 PiB), got {value!r}"
            ) from None
    else:
        raise TypeError(
            f"{name} must be a number of bytes or a size such as '1GiB', got {value!r} "
            f"({type(value).__name__})"
        )
    if n < 1:
        raise ValueError(f"{name} must be a positive size, got {value!r}")
    if n > MAX_MEMORY:
        shown = value if len(str(value)) < 30 else f"a number of {len(str(value))} digits"
        raise ValueError(f"{name} must be at most 1 PiB ({MAX_MEMORY} bytes), got {shown}")
    return int(n)


def _fraction_of_a_byte(value: Any) -> bool:
    """Whether ``value`` is a number of bytes, or its text without a unit, not whole."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return False
    if isinstance(value, (bool, np.bool_, numbers.Integral)) or not isinstance(value, numbers.Real):
        return False
    return bool(np.isfinite(value)) and value != int(value)


Channels = Literal["auto", "rgb", "independent"]  # the channels= a type checker accepts


def resolve_channels(channels: Any, axes: str, shape: tuple[int, ...], dtype: Any) -> bool:
    """Return True for RGB fusion (one shared weight map), False otherwise."""
    if not isinstance(channels, str):  # (a TypeError, as other parameters' types are)
        raise TypeError(
            f"channels must be a str, 'auto', 'rgb' or 'independent', got {channels!r} "
            f"({type(channels).__name__})"
        )
    if channels not in ("auto", "rgb", "independent"):
        raise ValueError(f"channels must be 'auto', 'rgb' or 'independent', got {channels!r}")
    if "c" not in axes:
        if channels == "rgb":
            raise ValueError(  # (axes read from the source as often as given: not "got axes=")
                f"channels='rgb' needs a channel axis 'c', and the stack's axes are {axes!r}"
            )
        return False
    n_c = shape[axes.index("c")]
    if channels == "rgb":
        if n_c != 3:
            raise ValueError(f"channels='rgb' needs a channel axis of length 3, got {n_c}")
        return True
    if channels == "auto":
        return n_c == 3 and np.dtype(dtype) == np.uint8
    return False


def is_synchronous(scheduler: Any) -> bool:
    """Whether ``scheduler`` is dask's synchronous scheduler, by name or as its get."""
    if isinstance(scheduler, str):
        return scheduler.lower() in ("synchronous", "sync", "single-threaded")
    return (
        callable(scheduler)
        and "local" in getattr(scheduler, "__module__", "")
        and getattr(scheduler, "__name__", "") == "get_sync"
    )


def local_workers(value: Any) -> int:
    """dask's ``num_workers`` (``DASK_NUM_WORKERS``), or every core where it is unset or 0.

    "abc" stopped a run with "invalid literal for int()", and -1 with "max_workers must be
    greater than 0" once planned, neither naming the setting (an adversarial run on names,
    2026-12-06)."""
    if not value:  # None, 0 or "": unset
        return cpu_count()
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or number != value and str(number) != str(value).strip():
        raise ValueError(
            f"dask's num_workers config (DASK_NUM_WORKERS) must be a positive integer, got "
            f"{value!r}"
        )
    return number


def cpu_count() -> int:
    """CPUs this process may use (its affinity, which a batch scheduler sets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
