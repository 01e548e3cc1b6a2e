"""One block through one engine: :func:`fuse_block`, the engines' choice, memory per block.

:func:`fuse_block` fuses a ``(P, Y, X)`` grey or ``(3, P, Y, X)`` RGB block with one engine
per call, chosen by ``engine=`` or the module-level :data:`ENGINE`: the NumPy engine
(:mod:`.numpy_engine`, the readable, reference-exact specification), the compiled engine
(:mod:`.compiled` and :mod:`.fused`, numba), or the CUDA engine (:mod:`.cuda`). The NumPy
and compiled engines compute the same operations in the same order; they differ only in the
last bits of ``exp``/``tanh``/``log`` (NumPy's versus :mod:`.pixel`), so they are compared
by their rounded output, and one run uses one of them.

Two properties every engine keeps, because the chunked pipeline relies on them for
bit-identical output across chunkings:

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

import functools
import importlib.util
import os
import sys
from typing import Any, NamedTuple

import numpy as np

from .._fp_env import with_ieee_arithmetic
from .._imports import WARM_UP_THREAD
from .numpy_engine import (
    _exact_int_ok,
    _float_divisor,
    _fuse_numpy,
    fm_dtype,
    focus_measure,
    luminance,
)

#: The compiled engine's functions, imported when first used: numba (and the SciPy it
#: imports) takes 1-2 s, which a command that fuses nothing (a refusal, ``info``) paid.
_COMPILED = {"focus_measure_compiled": ".compiled", "plane_major": ".compiled",
             "blend_compiled": ".fused"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _COMPILED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .._imports import import_through_one_ctrl_c  # (numba's import, half done, breaks it)

    return getattr(import_through_one_ctrl_c(_COMPILED[name], __package__), name)


def _numba_found() -> bool:
    """Whether numba is installed, without importing it."""
    if "numba" in sys.modules:
        return sys.modules["numba"] is not None
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


def _default_engine() -> str:
    choice = os.environ.get("FSTACK_DASK_ENGINE", "")
    default = "compiled" if _numba_found() else "numpy"
    if choice in ("numpy", "compiled"):
        return choice
    return default  # another value is refused where a run picks its engine (device.py)


#: The engine :func:`fuse_block` uses when it is not given one: ``"compiled"``
#: (numba) when numba is installed, else ``"numpy"``. The environment variable
#: ``FSTACK_DASK_ENGINE=numpy`` (or ``compiled``) sets it in every process.
ENGINE = _default_engine()


def chosen_engine(engine: str | None = None) -> str:
    """``engine``, or where None the default, :data:`ENGINE`: the compiled engine unless
    numba, installed, fails to import (one older than this NumPy raises ImportError), which
    leaves the NumPy engine with a warning, as a missing numba does; the check imports
    numba, so it is made only where an engine is needed (not by a refused command)."""
    if engine is not None:
        return engine
    asked = os.environ.get("FSTACK_DASK_ENGINE", "") == "compiled"
    if ENGINE != "compiled" or asked or not _numba_broken():
        return ENGINE
    return "numpy"


def require_engine(engine: str) -> None:
    """Refuse the compiled engine where numba cannot be imported (``ValueError``, one line):
    a run names its engine where it is planned, before numba is imported (a refused command
    imports none), and checks it here once ``dst`` is accepted, before anything is written."""
    problem = engine_problem(engine)
    if problem is not None:
        raise ValueError(problem)


def engine_problem(engine: str) -> str | None:
    """Why this process cannot run ``engine`` (one line), or None if it can. Picklable by
    reference, so that a run asks each of its worker processes before writing."""
    if engine == "compiled" and __getattr__("blend_compiled") is None:
        return (
            "engine='compiled' needs numba, which could not be imported (python -c 'import "
            "numba' says why): repair it, or set FSTACK_DASK_ENGINE=numpy for the NumPy engine "
            "(the same image up to the last bits, slower)"
        )
    return None


@functools.cache
def _numba_broken() -> bool:
    """Whether numba, found, fails to import (said once a process)."""
    if __getattr__("blend_compiled") is not None:
        return False
    from .._errors import warn

    warn("numba is installed but could not be imported (python -c 'import numba' says why): "
         "the NumPy engine fuses instead, the same image up to the last bits, slower")  # fmt: skip
    return True


class BlockResult(NamedTuple):
    """What :func:`fuse_block` returns; optional maps are ``None`` unless asked for."""

    image: np.ndarray
    depth: np.ndarray | None
    selectivity: np.ndarray | None
    s: np.ndarray  # S in dB, float64, NaN where undefined (as computed, before any fill)


@with_ieee_arithmetic
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
    s_fill: float = -np.inf,
    selectivity_only: bool = False,
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
    result is the plane mean (the reference returns garbage there). Where
    ``S`` is undefined (NaN) it is taken as ``s_fill``: the reference fills it
    with the whole image's smallest ``S``, which a chunked run finds before it
    fuses the blocks that need it (``BlockResult.s`` holds ``S`` as computed);
    ``-inf`` (no selectivity: ``phi = 0``, equal weights) by default.
    ``selectivity_only=True`` computes ``S`` alone (the image is then not computed: its
    array holds nothing meaningful), for a pass that looks for the image's smallest ``S``.

    ``engine`` is ``"compiled"`` (numba) or ``"numpy"``; None follows
    :data:`ENGINE`. Both compute the same numbers up to the last bits of the
    transcendental functions; never mix them within one image. ``"cuda"`` runs
    the compiled engine's operations on a CUDA GPU (:mod:`fstack_dask._algorithm.cuda`).

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
    engine = chosen_engine(engine)
    if engine == "compiled":
        require_engine(engine)
        fuse = _fuse_compiled
    elif engine == "numpy":
        fuse = _fuse_numpy
    elif engine == "cuda":  # the GPU (device="cuda"); imported only when asked for
        from .cuda import fuse_cuda as fuse
    else:
        raise ValueError(f"engine must be 'compiled', 'numpy' or 'cuda', got {engine!r}")
    # The GPU keeps the arg-max and maximum on the device unless the depth map needs them.
    extra = {"with_depth": with_depth} if engine == "cuda" else {}
    if selectivity_only and engine != "cuda":  # (the GPU computes all: S is the same)
        extra["blend"] = False
    image, fmax, arg, s_raw = fuse(
        stack, nhsize, focus, alpha, sth, rgb, s_fill=float(s_fill), **extra
    )
    depth = None
    if with_depth:
        depth = focus[arg].astype(np.float32)
        depth[fmax == 0] = np.nan
    sel = s_raw.astype(np.float32) if with_selectivity else None
    return BlockResult(image, depth, sel, s_raw)


def selectivity_stats(s: np.ndarray, core: tuple[slice, slice]) -> tuple[float, bool]:
    """What filling undefined ``S`` as the reference does (with its image's smallest ``S``)
    needs from a block whose ``S`` (:attr:`BlockResult.s`) is known: the smallest defined
    ``S`` of its ``core`` pixels (NaN if none is), and whether any ``S`` within one pixel of
    the core (the reach of the 3 x 3 median of ``phi``) is undefined: only then does the
    block's output depend on the fill.

    Examples
    --------
    >>> s = np.array([[1.0, np.nan, 3.0], [4.0, 5.0, 6.0]])
    >>> selectivity_stats(s, (slice(1, 2), slice(2, 3)))
    (6.0, True)
    """
    rows, cols = s.shape
    inner = s[core]
    defined = inner[~np.isnan(inner)]
    smallest = float(defined.min()) if defined.size else float("nan")
    (y0, y1, _), (x0, x1, _) = core[0].indices(rows), core[1].indices(cols)
    ring = s[max(0, y0 - 1) : min(rows, y1 + 1), max(0, x0 - 1) : min(cols, x1 + 1)]
    return smallest, bool(np.isnan(ring).any())


def block_buffer(shape: tuple[int, ...], dtype: Any, *, engine: str | None = None) -> np.ndarray:
    """An empty buffer for a block's samples, ``(P, Y, X)`` or ``(3, P, Y, X)``, where
    ``engine`` wants them: for the GPU, this thread's pinned staging buffer
    (:func:`.cuda.staging_buffer`: the block is then sent without another copy); else a
    new array."""
    engine = ENGINE if engine is None else engine
    if engine == "cuda":
        from .cuda import staging_buffer

        pinned = staging_buffer(shape, dtype)
        if pinned is not None:
            return pinned
    return np.empty(shape, dtype)


def warm_up(dtype: np.dtype, *, n_planes: int, n_channels: int, kernel: dict) -> None:
    """Load the compiled kernel for these types in a background thread (about 0.5 s from
    numba's disk cache, or a compilation on first use), while a run is being prepared; a
    program ending meanwhile waits for it, unless stopped (``_cli.stopping.leave``).

    ``kernel`` holds :func:`fuse_block`'s keyword arguments (``rgb`` among them); only the
    compiled engine has anything to load."""
    import threading

    engine = chosen_engine(kernel.get("engine"))
    if engine != "compiled":
        return
    shape = ((n_channels,) if kernel.get("rgb") else ()) + (max(5, n_planes), 8, 8)
    tiny = np.zeros(shape, np.dtype(dtype).newbyteorder("="))
    kwargs = {**kernel, "focus": np.arange(shape[-3], dtype=np.float64)}

    def load() -> None:
        try:
            fuse_block(tiny, **kwargs)
        except Exception:  # the run itself will meet (and report) any problem
            pass

    # Not a daemon: Python waits for it at exit. A program that ended while the thread was
    # inside LLVM (a run refused or failed within the seconds a first compilation takes)
    # died in LLVM's teardown (exit 134, an assertion in ScalarEvolution, or -11) after its
    # own error line. Waiting costs at most that compilation, which is then cached.
    threading.Thread(target=load, name=WARM_UP_THREAD, daemon=False).start()


def float64_limit(n: int) -> float:
    """Largest magnitude of float64 samples whose local variance cannot overflow.

    Squared deviations of up to twice the magnitude are summed over ``n^2``
    pixels in float64: ``4 n^2 m^2 <= 2**1022``.
    """
    return 2.0**510 / n


class BeyondFloat64(ValueError):
    """Samples whose local variance would overflow float64 (``biggest``, ``nhsize``): a run
    whose nhsize "auto" chose says which one fits (``_runs.blocks``)."""

    biggest: float
    nhsize: int


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
        exc = BeyondFloat64(
            f"im_stack has values of magnitude {biggest:.3g}, beyond {limit:.3g}: their local "
            f"variance (nhsize={n}) would overflow float64; rescale the data"
        )
        exc.biggest, exc.nhsize = biggest, n
        raise exc


def _fuse_compiled(stack, nhsize, focus, alpha, sth, rgb, *, s_fill, blend=True):
    """The compiled engine: two compiled passes, no (P, Y, X) float64 temporaries."""
    from .compiled import focus_measure_compiled, plane_major
    from .fused import blend_compiled

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
    sel = np.empty((h, w), np.float64)
    blend_compiled(values, fm, focus, nhsize, alpha, sth, s_fill, out, fmax, arg, sel, blend)
    if not blend:  # S alone: ``out`` was never written, and its cast to float16 warned
        # "overflow encountered in cast"; an image of zeros, as the NumPy engine's
        return np.zeros((h, w), native), fmax, arg, sel
    image = out if rgb else out[0]
    return image.astype(native, copy=False), fmax, arg, sel


def haloed_shape(
    block: tuple[int, int], halo: int, shape_yx: tuple[int, int], engine: str | None = None
) -> tuple[int, int]:
    """The y/x shape a block's task reads: the block and its halo, clipped to the image, as
    every read is (a halo deeper than a small or thin image reads no more than the image:
    counted whole, nhsize 501 on a 100 x 100 stack asked for 298 MB per task). The NumPy
    engine pads what it reads by its windows (a 40 x 40 block at nhsize 1001: 13 MB), so for
    it the halo is counted whole."""
    full = block[0] + 2 * halo, block[1] + 2 * halo
    if (ENGINE if engine is None else engine) == "numpy":
        return full
    return min(full[0], shape_yx[0]), min(full[1], shape_yx[1])


def wide_int(dtype: Any) -> bool:
    """Whether samples of ``dtype`` are 64-bit integers, whose focus measure (both engines')
    is the NumPy one (``numpy_engine._focus_measure_wide``); False for None."""
    return dtype is not None and np.dtype(dtype).kind in "iu" and np.dtype(dtype).itemsize == 8


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
    wide_int: bool = False,
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
    engine: the larger of its host and GPU memory (``cuda.host_block_memory``,
    ``cuda.device_block_memory``), so that ``memory_per_task`` bounds both.
    """
    rows, cols = int(shape_yx[0]), int(shape_yx[1])
    pixels = rows * cols
    f = 4 if itemsize <= 2 else 8
    engine = ENGINE if engine is None else engine
    if engine == "cuda":  # the larger of what the block holds on the host and on the GPU
        from .cuda import device_block_memory, host_block_memory

        shape = (rows, cols)
        return max(
            host_block_memory(shape, n_planes, n_channels, itemsize, rgb, float16=float16),
            device_block_memory(shape, n_planes, n_channels, itemsize, float16=float16),
        )
    if engine == "numpy":
        per_pixel = n_planes * (2 * n_channels * itemsize + (itemsize if rgb else 0) + f)
        return pixels * (per_pixel + 8 * (8 + 20 + n_channels + 2))
    # fmax, arg-max, output (float64 before a float16 cast), S (float64) and the selectivity
    # map (float32), depth map in making.
    per_pixel = n_planes * (2 * n_channels * itemsize + f) + f + 8 + 10 * n_channels + 12 + 13
    if float16:
        per_pixel += 4 * n_channels * n_planes
    if itemsize == 8:  # 64-bit integers: the NumPy focus measure (luminance, plane temporaries)
        per_pixel += (8 * n_planes if rgb else 0) + 80
    n = int(nhsize)
    row_buffers = cols * (32 * n + 200 + 32 * n_channels) + 200 * n
    if wide_int:  # their window sums pad a plane by the window, two int64 planes at once (the
        # 80 count the plane): a halo clipped to a small image left 10 times the rest uncounted
        row_buffers += 16 * ((rows + n - 1) * (cols + n - 1) - pixels)
    return pixels * per_pixel + row_buffers
