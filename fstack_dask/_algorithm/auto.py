"""Automatic ``nhsize`` and ``sth`` from a bounded, deterministic sample of the stack.

The reference's fixed ``nhsize=9, sth=13`` stay the defaults. ``"auto"`` picks them
from the data before any graph is built, from a fixed grid of tiles that depends only
on the image's shape (never on its chunking), so the choice, and hence the output, is
the same however the stack is chunked or scheduled.

The rule (fitted on training seeds of :func:`fstack_dask.synthetic_stack` only; see
``benchmarks/auto_sweep.py`` and ``benchmarks/QUALITY.md``) uses three measurements of the
sample and one simulation:

* ``noise``: the standard deviation of the noise of the (luminance) planes, from the
  median absolute value of a 3 x 3 Laplacian-type residual (Immerkaer 1996) that
  cancels smooth image content; the plane with the least residual (the most defocused
  one, where texture is weakest) is used, then the median over tiles.
* ``texture``: the median over sampled pixels of the highest local variance (9 x 9,
  over the planes), i.e. how much in-focus contrast a typical pixel has.
* ``curve_width``: the median number of planes whose local variance is above half way
  between its minimum and maximum over the planes: how many planes a pixel stays in
  focus for.
* ``noise_selectivity``: the 95th percentile of the selectivity ``S`` that pure white
  noise reaches with the same planes, focus positions and window (a deterministic
  simulation): the ``S`` below which a pixel's focus curve is indistinguishable from
  noise.

With ``snr = texture / noise**2``:

* ``nhsize`` is the ladder value (9, 11, 15, 21, 31) nearest, in log scale, to
  ``70 / sqrt(snr) * max(1, curve_width / 8)``: a noisier focus measure needs a wider
  window to average its noise down, and so do broad focus curves, whose planes differ
  little. The ladder starts at the reference's 9: smaller windows score higher on
  clean synthetic stacks (at PSNRs above 45 dB), but on real photographs they let the
  choice follow specular highlights and the slight misregistration between planes
  (``benchmarks/QUALITY.md``);
* ``sth = noise_selectivity - 14 * log10(snr) - 4 * max(0, log2(4 / curve_width))``
  (``log10(snr)`` clipped to [0, 4]; ``sth`` to [-20, 40]), rounded to 0.1 dB: where
  noise dominates, pixels whose selectivity is no better than noise's are averaged
  (the plane mean is the best estimate there); the cleaner the stack, the fewer pixels
  are averaged; and the fewer planes a pixel stays in focus for (strong blur between
  planes), the more an average of planes blurs, so the lower the threshold.

References
----------
.. [1] S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of all-in-focus
   images by noise-robust selective fusion of limited depth-of-field images", IEEE
   Trans. Image Process. 22(3):1242-1251, 2013.
.. [2] J. Immerkaer, "Fast noise variance estimation", Computer Vision and Image
   Understanding 64(2):300-302, 1996.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .._fp_env import with_ieee_arithmetic
from .._params import MAX_NHSIZE, check_nhsize, check_sth
from .._public import public
from .numpy_engine import focus_measure, luminance, selectivity

__all__ = ["AUTO", "AutoParameters", "auto_parameters", "sample_tiles"]

log = logging.getLogger("fstack_dask")

AUTO = "auto"
#: Version of the rule, stored with the result (provenance).
RULE = "fstack_dask.auto/2"
#: Window sizes ``nhsize="auto"`` chooses from.
NHSIZE_LADDER = (9, 11, 15, 21, 31)
#: At most TILE_GRID x TILE_GRID tiles of TILE x TILE pixels, fewer and smaller when
#: they would hold more than SAMPLE_BUDGET bytes; never fewer than 2 x 2 of MIN_TILE.
TILE, MIN_TILE, TILE_GRID = 128, 64, 4
SAMPLE_BUDGET = 64 * 2**20
# Fitted constants of the rule (benchmarks/auto_sweep.py, training seeds only).
_NH_SCALE, _WIDTH_KNEE, _STH_PER_DECADE = 70.0, 8.0, 14.0
_NARROW_WIDTH, _STH_PER_HALVING = 4.0, 4.0
_FEATURE_WINDOW = 9
# The simulated noise stack: S is a 2-D window average, so its 95th percentile needs
# many windows: up to 12 windows a side, within ~4 M voxels (at least 64 px a side).
_NOISE_WINDOWS, _NOISE_VOXELS, _NOISE_MIN_SIDE = 12, 4_000_000, 64
_NOISE_SEED, _NOISE_QUANTILE = 20130, 95.0
_STH_RANGE = (-20.0, 40.0)  # below -20 dB every defined S is "selective" anyway
_STH_FEW_PLANES = 13.0  # below 5 planes there is no selectivity, sth is never used

ReadTile = Callable[[int, int, int, int], Any]


@public
@dataclass(frozen=True)
class AutoParameters:
    """Parameters chosen by :func:`auto_parameters`, with the measurements behind them.

    ``nhsize`` and ``sth`` are what the fusion uses; a value the caller fixed is
    passed through unchanged. The rest is provenance: ``noise`` (noise standard
    deviation of the luminance, in data units), ``texture`` (median highest 9 x 9
    local variance, data units squared), ``snr`` (``texture / noise**2``),
    ``curve_width`` (planes), ``noise_selectivity`` (dB; NaN when not needed),
    the sample read (``tiles``, ``tile_shape``, ``bytes_read``) and the ``rule``'s
    version.
    """

    nhsize: int
    sth: float
    noise: float
    texture: float
    snr: float
    curve_width: float
    noise_selectivity: float
    tiles: int
    tile_shape: tuple[int, int]
    bytes_read: int
    rule: str = RULE

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite floats as strings), for logs and provenance."""
        out = asdict(self)
        out["tile_shape"] = list(self.tile_shape)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = str(value)
        return out

    def summary(self) -> str:
        """One line for logs and the CLI."""
        return (
            f"nhsize={self.nhsize} sth={self.sth:g} (noise {self.noise:.3g}, "
            f"texture/noise^2 {self.snr:.3g}, focus curve {self.curve_width:g} planes; "
            f"{self.tiles} tiles of {self.tile_shape[0]}x{self.tile_shape[1]} px, "
            f"{self.bytes_read / 2**20:.1f} MiB read)"
        )


def check_nhsize_or_auto(nhsize: Any) -> int | str:
    """``"auto"`` or a valid ``nhsize``; anything else raises naming the parameter."""
    if isinstance(nhsize, str):
        if nhsize == AUTO:
            return AUTO
        # A string other than "auto" is a wrong type, as "9" always was.
        raise TypeError(
            f"nhsize must be an integer from 1 to {MAX_NHSIZE} or 'auto', got {nhsize!r} (str)"
        )
    if isinstance(nhsize, (bool, np.bool_)) or not isinstance(nhsize, numbers.Integral):
        raise TypeError(
            f"nhsize must be an integer from 1 to {MAX_NHSIZE} or 'auto', got {nhsize!r} "
            f"({type(nhsize).__name__})"
        )
    return check_nhsize(nhsize)


def check_sth_or_auto(sth: Any) -> float | str:
    """``"auto"`` or a valid ``sth``; anything else raises naming the parameter."""
    if isinstance(sth, str):
        if sth == AUTO:
            return AUTO
        raise TypeError(f"sth must be a finite real number or 'auto', got {sth!r} (str)")
    if isinstance(sth, (bool, np.bool_)) or not isinstance(sth, numbers.Real):
        raise TypeError(f"sth must be a finite real number or 'auto', got {sth!r}")
    return check_sth(sth)


def sample_tiles(
    shape_yx: tuple[int, int],
    *,
    n_planes: int,
    n_channels: int = 1,
    itemsize: int = 2,
    budget: int = SAMPLE_BUDGET,
) -> tuple[tuple[int, int, int, int], ...]:
    """The fixed tile grid ``(y0, y1, x0, x1)`` that :func:`auto_parameters` reads.

    Up to 4 x 4 tiles of 128 x 128 px, spread evenly from edge to edge, fewer along
    an axis that is shorter than four tiles; smaller (down to 64 px) and then fewer
    (down to 2 x 2) when they would hold more than ``budget`` bytes
    (``n_planes * n_channels * itemsize`` per pixel). Depends only on these
    arguments, never on how the stack is chunked.

    Examples
    --------
    >>> sample_tiles((256, 300), n_planes=21)
    ((0, 128, 0, 128), (0, 128, 86, 214), (0, 128, 172, 300), (128, 256, 0, 128), \
(128, 256, 86, 214), (128, 256, 172, 300))
    """
    ny, nx = (int(s) for s in shape_yx)
    per_px = max(1, int(n_planes) * int(n_channels) * int(itemsize))
    side, grid = TILE, TILE_GRID

    def layout(side: int, grid: int):
        ty, tx = min(side, ny), min(side, nx)
        gy, gx = min(grid, -(-ny // ty)), min(grid, -(-nx // tx))
        return ty, tx, gy, gx

    def nbytes(side: int, grid: int) -> int:
        ty, tx, gy, gx = layout(side, grid)
        return ty * tx * gy * gx * per_px

    while nbytes(side, grid) > budget and side > MIN_TILE:
        side = max(MIN_TILE, side - 16)
    while nbytes(side, grid) > budget and grid > 2:
        grid -= 1
    ty, tx, gy, gx = layout(side, grid)

    def starts(n: int, t: int, g: int) -> list[int]:
        if g == 1:
            return [(n - t) // 2]
        return [round(i * (n - t) / (g - 1)) for i in range(g)]

    return tuple(
        (y0, y0 + ty, x0, x0 + tx) for y0 in starts(ny, ty, gy) for x0 in starts(nx, tx, gx)
    )


def _noise_std(plane: np.ndarray) -> float:
    """Noise standard deviation of one plane: MAD of a 3 x 3 residual (Immerkaer).

    The kernel [[1,-2,1],[-2,4,-2],[1,-2,1]] cancels constant, linear and quadratic
    content; on white noise its output has standard deviation 6 sigma. The median
    (not the mean) keeps edges and texture from inflating the estimate.
    """
    h, w = plane.shape
    if h < 3 or w < 3:
        return 0.0
    kernel = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))
    res = np.zeros((h - 2, w - 2))
    for i in range(3):
        for j in range(3):
            res += kernel[i][j] * plane[i : i + h - 2, j : j + w - 2]
    return float(1.4826 * np.median(np.abs(res)) / 6.0)


def _tile_features(grey: np.ndarray) -> tuple[float, float, float]:
    """(noise, texture, curve width) of one ``(P, Y, X)`` float64 tile."""
    from scipy.ndimage import uniform_filter  # here: scipy takes 0.4 s to import

    noise = min(_noise_std(p) for p in grey)
    n = _FEATURE_WINDOW
    var = np.empty(grey.shape)
    for k, p in enumerate(grey):
        dev = p - uniform_filter(p, n, mode="nearest")
        var[k] = uniform_filter(dev * dev, n, mode="nearest")
    vmax, vmin = var.max(axis=0), var.min(axis=0)
    width = (var > 0.5 * (vmax + vmin)).sum(axis=0)
    return noise, float(np.median(vmax)), float(np.median(width))


def _as_grey_stacks(block: np.ndarray, rgb: bool, n_planes: int) -> np.ndarray:
    """``(K, P, Y, X)`` float64 grey stacks from a tile as ``read_tile`` returns it."""
    block = np.asarray(block)
    if rgb:
        if block.ndim != 4 or block.shape[0] != 3 or block.shape[1] != n_planes:
            raise ValueError(f"read_tile must return (3, P, Y, X) for RGB, got {block.shape}")
        block = block.astype(block.dtype.newbyteorder("="))
        grey = np.stack([luminance(block[:, p]) for p in range(n_planes)])
        return grey[None].astype(np.float64)
    if block.ndim < 3 or block.shape[-3] != n_planes:
        raise ValueError(f"read_tile must return (..., P, Y, X) for grey, got {block.shape}")
    return block.reshape((-1,) + block.shape[-3:]).astype(np.float64)


def _gaussian_noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Standard normal noise from PCG64's raw stream (Box-Muller).

    The raw bit stream of a seeded PCG64 is stable across NumPy versions (NEP 19),
    unlike ``Generator.standard_normal``, so the simulated threshold does not move
    when NumPy is upgraded.
    """
    n = int(np.prod(shape))
    raw = np.random.PCG64(seed).random_raw(2 * ((n + 1) // 2))
    u = ((raw >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    u1, u2 = u[0::2], u[1::2]
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])
    return z[:n].reshape(shape)


def noise_selectivity(n_planes: int, nhsize: int, focus: np.ndarray | None = None) -> float:
    """95th percentile of the selectivity ``S`` (dB) of a pure white-noise stack.

    A deterministic simulation (fixed seed; ``12 * nhsize`` px a side, fewer for many
    planes, at least 64) with the given planes, focus positions and window, through
    the kernel's own focus measure and selectivity. ``S`` is scale-free, so the
    noise level does not matter.
    """
    focus = np.arange(n_planes, dtype=np.float64) if focus is None else np.asarray(focus, float)
    side = min(_NOISE_WINDOWS * nhsize, int(math.sqrt(_NOISE_VOXELS / n_planes)))
    side = max(side, _NOISE_MIN_SIDE)
    stack = _gaussian_noise((n_planes, side, side), _NOISE_SEED)
    with np.errstate(all="ignore"):
        fm, fmax, arg = focus_measure(stack, nhsize)
        s = selectivity(fm, fmax.astype(np.float64), arg, focus, nhsize)
    # Undefined fits (NaN) and -inf count as "no selectivity": far below any threshold.
    s = np.where(np.isfinite(s) | (s > 0), s, -1e3)
    return float(np.percentile(s, _NOISE_QUANTILE))


def _magnitude(block: np.ndarray, biggest: float) -> float:
    """The largest finite magnitude seen so far (float64 only: narrower floats cannot
    overflow the variance; NaN and infinities the fusion refuses in their own words). Any
    byte order: a big-endian one (FITS, a '>f8' Zarr v2 store) was not looked at,
    and the fusion refused it naming the nhsize "auto" chose."""
    if block.dtype.kind != "f" or block.dtype.itemsize < 8 or block.size == 0:
        return biggest
    m = float(np.abs(block).max())
    return m if math.isfinite(m) and m > biggest else biggest


def _check_overflow(nhsize: int, biggest: float) -> None:
    """Refuse, before anything is fused, an auto ``nhsize`` whose window the sampled float64
    values would overflow: the fusion would refuse it naming an nhsize the user never gave."""
    from .block import float64_limit

    limit = float64_limit(nhsize)
    if biggest <= limit:
        return
    raise ValueError(
        f"nhsize='auto' chose nhsize={nhsize} for the stack's texture and noise, but its values "
        f"reach magnitude {biggest:.3g}, beyond {limit:.3g}, where the local variance of a window "
        f"of {nhsize} x {nhsize} pixels would overflow float64; {what_fits(nhsize, biggest)}"
    )


def what_fits(nhsize: int, biggest: float, start_again: bool = False) -> str:
    """What to do where values of magnitude ``biggest`` overflow ``nhsize``'s window: the
    largest nhsize that holds them, or rescaling (``start_again``: an output begun with
    ``nhsize`` is overwritten, for a resume keeps its nhsize)."""
    from .block import float64_limit

    fits = next((n for n in range(nhsize, 0, -1) if float64_limit(n) >= biggest), None)
    if not fits:
        return "rescale the data"
    again = " with overwrite=True" if start_again else ""
    return f"pass nhsize={fits} (it holds them){again}, or rescale the data"


def beyond_the_sample(exc: Any, *, start_again: bool = False) -> str:
    """What a block says of values that overflow the nhsize "auto" chose (``exc``: a
    ``BeyondFloat64``): the sample it chose from did not hold them, and what fits; not
    "(nhsize=21) would overflow", naming an nhsize the user never gave."""
    return (
        f"has values of magnitude {exc.biggest:.3g}, which the sample from which nhsize='auto' "
        f"chose nhsize={exc.nhsize} did not hold: their local variance would overflow float64; "
        f"{what_fits(exc.nhsize, exc.biggest, start_again)}"
    )


def from_the_sample(exc: Any) -> ValueError:
    """``exc`` (a ``BeyondFloat64`` of ``fuse_block``) as ``fuse`` and ``focus_stack`` raise it
    where nhsize was "auto"."""
    new = type(exc)(f"im_stack {beyond_the_sample(exc)}")
    new.biggest, new.nhsize = exc.biggest, exc.nhsize
    return new


def _ladder(x: float) -> int:
    x = max(x, 1.0)
    return min(NHSIZE_LADDER, key=lambda n: abs(math.log(n) - math.log(x)))


@public
@with_ieee_arithmetic
def auto_parameters(
    read_tile: ReadTile,
    *,
    shape_yx: tuple[int, int],
    n_planes: int,
    dtype: Any,
    rgb: bool,
    n_channels: int | None = None,
    focus: Any = None,
    nhsize: int | str = AUTO,
    sth: float | str = AUTO,
    budget: int = SAMPLE_BUDGET,
    quiet: bool = False,
) -> AutoParameters:
    """Choose ``nhsize`` and/or ``sth`` from a fixed sample of the stack.

    Parameters
    ----------
    read_tile : callable
        ``read_tile(y0, y1, x0, x1)`` returns that y/x region of the stack in
        plane-first layout as a NumPy array: ``(P, Y, X)`` grey (leading axes, if
        any, are independent grey stacks, e.g. channels, and are pooled) or
        ``(3, P, Y, X)`` RGB. It is called once per tile of :func:`sample_tiles`,
        whose grid depends only on ``shape_yx``, so the choice does not depend on
        chunking.
    shape_yx : (int, int)
        Image size.
    n_planes : int
        Number of focus planes ``P``.
    dtype : dtype-like
        The stack's dtype (for the size of the sample).
    rgb : bool
        Whether tiles are ``(3, P, Y, X)`` colour, fused on their luminance.
    n_channels : int, optional
        Channels per pixel that ``read_tile`` returns (3 for RGB, the number of
        independent grey stacks otherwise; default 3 if ``rgb`` else 1), for the
        size of the sample.
    focus : array_like, optional
        Focus positions (default ``arange(P)``), as given to the fusion.
    nhsize, sth : int / float or "auto", optional
        A fixed value is kept and used in choosing the other.
    budget : int, optional
        Bytes of stack the sample may hold (default 64 MiB; never fewer than 2 x 2
        tiles of 64 x 64 px).
    quiet : bool, optional
        Log no "auto parameters" note (a run logs it once its dst is accepted).

    Returns
    -------
    AutoParameters
        The chosen values and the measurements behind them.

    Notes
    -----
    Reads at most 16 tiles of 128 x 128 px with all their planes:
    ``min(16 * 128**2, Y * X) * P * C * itemsize`` bytes (C = 3 for RGB), capped at
    ``budget``; for 51 planes of uint16 that is 27 MiB, whatever the image's size.

    References
    ----------
    .. [1] S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of
       all-in-focus images by noise-robust selective fusion of limited
       depth-of-field images", IEEE Trans. Image Process. 22(3):1242-1251, 2013.

    Examples
    --------
    >>> import numpy as np
    >>> from fstack_dask import synthetic_stack
    >>> planes = np.moveaxis(synthetic_stack((128, 128), 11, noise=0.05, seed=1).stack, 2, 0)
    >>> chosen = auto_parameters(
    ...     lambda y0, y1, x0, x1: planes[:, y0:y1, x0:x1],
    ...     shape_yx=(128, 128), n_planes=11, dtype=planes.dtype, rgb=False)
    >>> chosen.nhsize > 9, chosen.tiles
    (True, 1)
    """
    nhsize = check_nhsize_or_auto(nhsize)
    sth = check_sth_or_auto(sth)
    n_planes = int(n_planes)
    focus_arr = None if focus is None else np.asarray(focus, dtype=np.float64)
    itemsize = np.dtype(dtype).itemsize
    if n_channels is None:
        n_channels = 3 if rgb else 1
    tiles = sample_tiles(
        shape_yx, n_planes=n_planes, n_channels=n_channels, itemsize=itemsize, budget=budget
    )
    noises, textures, widths = [], [], []
    bytes_read, biggest = 0, 0.0
    with np.errstate(all="ignore"):
        for y0, y1, x0, x1 in tiles:
            block = np.asarray(read_tile(y0, y1, x0, x1))
            bytes_read += block.nbytes
            biggest = _magnitude(block, biggest)
            for grey in _as_grey_stacks(block, rgb, n_planes):
                n, t, w = _tile_features(grey)
                noises.append(n)
                textures.append(t)
                widths.append(w)
    noise = float(np.median(noises))
    texture = float(np.median(textures))
    width = float(np.median(widths))
    if noise * noise > 0:  # (not noise > 0: a noise below 1e-154 squares to 0 in float64)
        snr = texture / noise**2
    else:
        snr = math.inf if texture > 0 else 0.0

    if nhsize == AUTO:
        root = math.sqrt(snr) if snr > 0 else 0.0
        target = math.inf if root == 0 else _NH_SCALE / root * max(1.0, width / _WIDTH_KNEE)
        nhsize = NHSIZE_LADDER[-1] if math.isinf(target) else _ladder(target)
        _check_overflow(nhsize, biggest)
    s_noise = math.nan
    if sth == AUTO:
        if n_planes < 5:
            sth = _STH_FEW_PLANES
        else:
            s_noise = noise_selectivity(n_planes, int(nhsize), focus_arr)
            decades = min(max(math.log10(snr), 0.0), 4.0) if snr > 0 else 0.0
            halvings = max(0.0, math.log2(_NARROW_WIDTH / max(width, 1.0)))
            sth = s_noise - _STH_PER_DECADE * decades - _STH_PER_HALVING * halvings
            sth = round(min(max(sth, _STH_RANGE[0]), _STH_RANGE[1]), 1)
    chosen = AutoParameters(
        nhsize=int(nhsize),
        sth=float(sth),
        noise=noise,
        texture=texture,
        snr=float(snr),
        curve_width=width,
        noise_selectivity=float(s_noise),
        tiles=len(tiles),
        tile_shape=(tiles[0][1] - tiles[0][0], tiles[0][3] - tiles[0][2]),
        bytes_read=int(bytes_read),
    )
    if not quiet:
        log.info("auto parameters: %s", chosen.summary())
    return chosen


def needs_auto(nhsize: Any, sth: Any) -> bool:
    """Whether either parameter asks for ``"auto"`` (after validating both)."""
    return check_nhsize_or_auto(nhsize) == AUTO or check_sth_or_auto(sth) == AUTO
