"""Synthetic focus stacks with a known all-in-focus image and depth map.

Used by the tests, benchmarks and demos: the ground truth lets fusion quality be
measured (e.g. RMSE or PSNR against ``all_in_focus``) instead of eyeballed.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np
import scipy.fft
from scipy.ndimage import gaussian_filter

from ._public import public

__all__ = ["SyntheticStack", "synthetic_stack"]

# Texture occupies [_LO, _HI] of full scale (after a robust stretch, clipped to
# [_CLIP_LO, _CLIP_HI]) so that additive noise of a few per cent rarely clips.
_LO, _HI = 0.1, 0.9
_CLIP_LO, _CLIP_HI = 0.05, 0.95
# Number of precomputed blur levels between sigma 0 and max_sigma.
_N_LEVELS = 12
# Elements (rows * N * P * C) handled per block when rendering the stack; keeps
# the per-block temporaries to a few tens of MB whatever the stack size.
_BLOCK_ELEMENTS = 1 << 20


@public
class SyntheticStack(NamedTuple):
    """A synthetic focus stack with its ground truth: the result of :func:`synthetic_stack`.

    A named tuple, so ``stack, sharp, depth = synthetic_stack(...)`` unpacks it; the fields
    compare a fused image with the sharp image it should approach (PSNR) and a depth map
    with the true in-focus plane of each pixel.
    """

    stack: np.ndarray
    """Focus stack, (M, N, P) grey or (M, N, P, 3) RGB, in the requested dtype."""
    all_in_focus: np.ndarray
    """Noise-free sharp image, (M, N) or (M, N, 3), same dtype as ``stack``."""
    depth: np.ndarray
    """True in-focus plane position per pixel, float64 (M, N), in 0 .. P-1."""


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_nonneg_real(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite real number >= 0, got {value!r}")
    try:
        value = float(value)
    except OverflowError:  # a 400-digit int
        raise ValueError(f"{name} must be a finite real number >= 0, got a number beyond "
                         "float64") from None  # fmt: skip
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite real number >= 0, got {value}")
    return value


def _check_shape(shape: Any) -> tuple[int, int]:
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise TypeError(f"shape must be a (rows, cols) tuple of two integers >= 1, got {shape!r}")
    return (_check_int("shape[0]", shape[0], 1), _check_int("shape[1]", shape[1], 1))


#: Beyond these, numpy's "Maximum allowed dimension exceeded", a MemoryError or a blur that
#: runs for hours, none naming the parameter: the stack is made in
#: memory (16 Gi voxels are 32 GiB as uint16), and a blur of 10^4 px is flat on any image.
MAX_VOXELS = 2**34
MAX_SIGMA = 1e4


def _check_size(m: int, n: int, p: int, c: int, max_sigma: float) -> None:
    if m * n * p * c > MAX_VOXELS:
        raise ValueError(
            f"shape {(m, n)} x n_planes {p}{' x 3 channels' if c == 3 else ''} is "
            f"{m * n * p * c:.3g} voxels, beyond the {MAX_VOXELS:.3g} a stack made in memory may "
            "hold; choose a smaller shape or n_planes"
        )
    if max_sigma > MAX_SIGMA:
        raise ValueError(f"max_sigma must be at most {MAX_SIGMA:g} px, got {max_sigma:g}")


def _check_dtype(dtype: Any) -> np.dtype:
    if dtype is None:  # (np.dtype(None) is float64: taken silently; a sweep of contract 4)
        raise TypeError("dtype must be an integer or floating dtype, got None")
    if isinstance(dtype, (np.generic, np.ndarray)):  # (np.dtype(np.int64(9)) is int64: a value)
        raise TypeError(f"dtype must be an integer or floating dtype, got the value {dtype!r}")
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be an integer or floating dtype, got {dtype!r}") from exc
    if dt.kind not in "uif":
        raise TypeError(f"dtype must be an integer or floating dtype, got {dt}")
    return dt


def _band_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Unit-std white noise low-passed at ``sigma`` pixels (float32, (M, N, C))."""
    w = rng.standard_normal(shape, dtype=np.float32)
    gaussian_filter(w, (sigma, sigma, 0), output=w)
    std = float(w.std())
    if std > 0:
        w /= std
    return w


def _coarse_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Like :func:`_band_noise` for large ``sigma``, filtered in the Fourier domain.

    A direct Gaussian filter costs O(sigma) per pixel (seconds at 2048 x 2048
    for sigma ~ 170); the FFT cost does not depend on sigma. Boundaries wrap,
    which does not matter for a texture.
    """
    m, n = shape[:2]
    w = rng.standard_normal(shape, dtype=np.float32)
    spec = scipy.fft.rfft2(w, axes=(0, 1))
    fy = scipy.fft.fftfreq(m)[:, None]
    fx = scipy.fft.rfftfreq(n)[None, :]
    spec *= np.exp(-2 * np.pi**2 * sigma**2 * (fy**2 + fx**2)).astype(np.float32)[..., None]
    w = scipy.fft.irfft2(spec, s=(m, n), axes=(0, 1))
    std = float(w.std())
    if std > 0:
        w /= std
    return w


def _gauss2d(y: np.ndarray, x: np.ndarray, cy: float, cx: float, width: float) -> np.ndarray:
    # Separable outer product: two 1-D exps instead of an (M, N) one.
    gy = np.exp(-((y - cy) ** 2) / (2 * width**2))
    gx = np.exp(-((x - cx) ** 2) / (2 * width**2))
    return np.outer(gy, gx)


def _norm_coords(m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    # Same scale on both axes so that bumps and patches are round.
    scale = max(m, n)
    return np.arange(m) / scale, np.arange(n) / scale


def _texture(shape: tuple[int, int], channels: int, rng: np.random.Generator) -> np.ndarray:
    """Sharp texture in [_CLIP_LO, _CLIP_HI], float32 (M, N, C)."""
    m, n = shape
    c = channels
    detail = np.zeros((m, n, c), dtype=np.float32)

    # Band-limited noise at several scales: high frequencies everywhere, so every
    # pixel carries focus information. RGB gets a shared luminance component plus
    # weaker independent chroma so the channels stay correlated like real colour.
    for sigma, weight in ((0.7, 1.0), (1.5, 0.8), (3.0, 0.6), (6.0, 0.5)):
        detail += weight * _band_noise(rng, (m, n, 1), sigma)
        if c > 1:
            detail += (0.4 * weight) * _band_noise(rng, (m, n, c), sigma)

    def colour(lo: float, hi: float) -> np.ndarray:
        amp = rng.uniform(lo, hi) * rng.choice((-1.0, 1.0))
        if c == 1:
            return np.array([amp], dtype=np.float32)
        return (amp + 0.8 * rng.standard_normal(c)).astype(np.float32)

    # Crisp geometric features (additive, so the texture continues inside them).
    small = min(m, n)
    area = m * n
    yy_full = np.arange(m, dtype=np.float32)
    xx_full = np.arange(n, dtype=np.float32)
    for _ in range(max(2, round(area / 48**2))):  # disks
        r = float(np.exp(rng.uniform(np.log(2.0), np.log(max(3.0, small / 12)))))
        cy, cx = rng.uniform(0, m), rng.uniform(0, n)
        y0, y1 = max(0, int(cy - r)), min(m, int(cy + r) + 2)
        x0, x1 = max(0, int(cx - r)), min(n, int(cx + r) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        mask = (yy_full[y0:y1, None] - cy) ** 2 + (xx_full[None, x0:x1] - cx) ** 2 <= r * r
        detail[y0:y1, x0:x1][mask] += colour(1.5, 3.5)
    for _ in range(max(1, round(area / 96**2))):  # rectangles: axis-aligned edges
        h = int(rng.integers(2, max(3, small // 8)))
        w = int(rng.integers(2, max(3, small // 8)))
        y0, x0 = int(rng.integers(0, m)), int(rng.integers(0, n))
        detail[y0 : y0 + h, x0 : x0 + w] += colour(1.5, 3.5)
    for _ in range(max(1, round(area / 96**2))):  # thin line segments, any angle
        length = rng.uniform(0.05, 0.3) * small
        half_w = rng.uniform(0.4, 1.2)
        theta = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0, m), rng.uniform(0, n)
        dy, dx = np.sin(theta), np.cos(theta)
        ext = length / 2 + half_w + 1
        y0, y1 = max(0, int(cy - ext)), min(m, int(cy + ext) + 2)
        x0, x1 = max(0, int(cx - ext)), min(n, int(cx + ext) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        ry = yy_full[y0:y1, None] - cy
        rx = xx_full[None, x0:x1] - cx
        along = ry * dy + rx * dx
        across = np.abs(ry * dx - rx * dy)
        mask = (np.abs(along) <= length / 2) & (across <= half_w)
        detail[y0:y1, x0:x1][mask] += colour(2.0, 4.0)

    # A few flatter patches (detail damped, coarse shading kept), where a focus
    # measure has little to work with, as in real specimens.
    y, x = _norm_coords(m, n)
    amp = np.ones((m, n), dtype=np.float64)
    for _ in range(int(rng.integers(2, 4))):
        cy, cx = rng.uniform(0, m / max(m, n)), rng.uniform(0, n / max(m, n))
        amp -= 0.9 * _gauss2d(y, x, cy, cx, rng.uniform(0.05, 0.09))
    np.clip(amp, 0.1, 1.0, out=amp)
    detail *= amp.astype(np.float32)[..., None]
    del amp

    # Coarse shading so the image is not a uniform grey on average.
    coarse = max(4.0, max(m, n) / 12)
    detail += 0.8 * _coarse_noise(rng, (m, n, 1), coarse)
    if c > 1:
        detail += 0.4 * _coarse_noise(rng, (m, n, c), coarse)

    lo, hi = np.percentile(detail, [0.1, 99.9])
    scale = (_HI - _LO) / (hi - lo) if hi > lo else 0.0
    detail -= np.float32(lo)
    detail *= np.float32(scale)
    detail += np.float32(_LO if scale else 0.5)
    np.clip(detail, _CLIP_LO, _CLIP_HI, out=detail)
    return detail


def _depth(shape: tuple[int, int], n_planes: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth height surface (tilt + broad bumps), float64 (M, N)."""
    m, n = shape
    y, x = _norm_coords(m, n)
    h = rng.uniform(-1, 1) * y[:, None] + rng.uniform(-1, 1) * x[None, :]
    for _ in range(int(rng.integers(3, 6))):
        cy = rng.uniform(-0.1, 1.1) * m / max(m, n)
        cx = rng.uniform(-0.1, 1.1) * n / max(m, n)
        amp = rng.uniform(0.5, 1.5) * rng.choice((-1.0, 1.0))
        h += amp * _gauss2d(y, x, cy, cx, rng.uniform(0.12, 0.35))
    # Keep one plane of margin at each end so every pixel has planes on both
    # sides of focus (impossible for fewer than four planes).
    lo, hi = (1.0, n_planes - 2.0) if n_planes >= 4 else (0.0, n_planes - 1.0)
    hmin, hmax = float(h.min()), float(h.max())
    if hmax - hmin <= 1e-12:
        return np.full((m, n), (lo + hi) / 2)
    h -= hmin
    h *= (hi - lo) / (hmax - hmin)
    h += lo
    # Guard against rounding just outside [lo, hi].
    return np.clip(h, lo, hi, out=h)


def _quantise(x: np.ndarray, dtype: np.dtype, out: np.ndarray) -> None:
    """Write ``x`` (float32 in [0, 1], clobbered) into ``out`` as ``dtype``."""
    if dtype.kind == "f":
        np.clip(x, 0.0, 1.0, out=x)
        out[...] = x
        return
    maxval = np.iinfo(dtype).max
    if dtype.itemsize > 2:  # float32 cannot represent the top of wider ranges
        x = x.astype(np.float64)
    x *= maxval
    np.rint(x, out=x)
    np.clip(x, 0, maxval, out=x)
    out[...] = x


@public
def synthetic_stack(
    shape: tuple[int, int] = (256, 256),
    n_planes: int = 21,
    *,
    rgb: bool = False,
    dtype: Any = "uint16",
    noise: float = 0.01,
    max_sigma: float = 4.0,
    seed: int | np.random.Generator = 0,
) -> SyntheticStack:
    """Make a synthetic focus stack with known all-in-focus image and depth.

    A sharp texture (band-limited noise at several scales, crisp disks,
    rectangles and line segments, a few flatter patches, coarse shading) is
    viewed through a depth-dependent Gaussian defocus blur over a smooth height
    surface (a tilt plus a few broad Gaussian bumps). Plane ``p`` at pixel
    ``(i, j)`` is the texture blurred with

    ``sigma = min(max_sigma * |p - depth[i, j]| / (P / 2), max_sigma)``

    followed by additive Gaussian noise and quantisation to ``dtype``. The
    spatially varying blur is rendered by blurring the texture at 12 sigma
    levels (quadratically spaced, dense near focus) and interpolating linearly
    in sigma per pixel between the two neighbouring levels.

    Parameters
    ----------
    shape : tuple of two int, default (256, 256)
        Image size ``(M, N)``.
    n_planes : int, default 21
        Number of focal planes ``P`` (>= 1).
    rgb : bool, default False
        Make a colour stack ``(M, N, P, 3)`` instead of grey ``(M, N, P)``.
    dtype : dtype-like, default "uint16"
        Output dtype. Integer dtypes use ``0 .. iinfo(dtype).max`` (signed
        dtypes only their non-negative half); floating dtypes use ``[0, 1]``.
        The noise-free texture spans about 10 % .. 90 % of that range so that
        noise rarely clips.
    noise : float, default 0.01
        Standard deviation of the additive Gaussian noise, as a fraction of
        full scale (>= 0).
    max_sigma : float, default 4.0
        Largest defocus blur, in pixels (0 to 10^4), reached at half the stack
        depth from focus and beyond.
    seed : int or numpy.random.Generator, default 0
        Integer seed (>= 0), or a generator (which is advanced, so repeated
        calls with it differ). The same integer seed gives identical arrays;
        texture, depth and noise use independent streams, so changing
        ``noise`` leaves ``all_in_focus`` and ``depth`` unchanged.

    Returns
    -------
    SyntheticStack
        Named tuple ``(stack, all_in_focus, depth)``: the stack in the reference
        layout ``(M, N, P[, 3])``, the noise-free sharp image ``(M, N[, 3])`` in
        the same dtype, and the true in-focus plane position, float64 ``(M, N)``
        in plane-index units (within ``[1, P - 2]`` when ``P >= 4``).

    Raises
    ------
    TypeError
        If an argument has the wrong type; the message names the parameter.
    ValueError
        If an argument is out of range, or the stack would hold more than 2**34
        voxels; the message names the parameter.

    Notes
    -----
    Peak memory is the output plus ``12 * M * N * C`` float32 blur levels and a
    few tens of MB of per-block temporaries (about 210 MiB beyond the output
    for 2048 x 2048 grey).

    References
    ----------
    .. [1] Pertuz, S., Puig, D., Garcia, M. A., & Fusiello, A. (2013).
       Generation of all-in-focus images by noise-robust selective fusion of
       limited depth-of-field images. IEEE Trans. Image Process. 22(3),
       1242-1251.

    Examples
    --------
    >>> s = synthetic_stack((32, 48), n_planes=5, seed=1)
    >>> s.stack.shape, s.stack.dtype
    ((32, 48, 5), dtype('uint16'))
    >>> s.all_in_focus.shape, s.depth.dtype
    ((32, 48), dtype('float64'))
    >>> bool(s.depth.min() >= 0 and s.depth.max() <= 4)
    True
    >>> synthetic_stack((8, 8), 3, rgb=True, dtype="float32").stack.shape
    (8, 8, 3, 3)
    """
    m, n = _check_shape(shape)
    p = _check_int("n_planes", n_planes, 1)
    if not isinstance(rgb, (bool, np.bool_)):
        raise TypeError(f"rgb must be a bool, got {rgb!r}")
    dt = _check_dtype(dtype)
    noise = _check_nonneg_real("noise", noise)
    max_sigma = _check_nonneg_real("max_sigma", max_sigma)
    _check_size(m, n, p, 3 if rgb else 1, max_sigma)
    rng_tex, rng_depth, rng_noise = _streams(seed)
    c = 3 if rgb else 1
    tex = _texture((m, n), c, rng_tex)
    depth = _depth((m, n), p, rng_depth)
    levels = _blur_levels(tex, max_sigma)
    all_in_focus = np.empty((m, n, c), dtype=dt)
    _quantise(tex, dt, all_in_focus)
    del tex
    stack = _render(levels, depth, p, dt, noise, rng_noise)
    if not rgb:
        stack = stack[..., 0]  # trailing length-1 axis: contiguous view
        all_in_focus = all_in_focus[..., 0]
    return SyntheticStack(stack, all_in_focus, depth)


def _streams(seed: int | np.random.Generator) -> tuple[np.random.Generator, ...]:
    """Independent streams for texture, depth and noise: changing ``noise`` leaves texture
    and depth unchanged."""
    if isinstance(seed, np.random.Generator):
        return tuple(seed.spawn(3))
    ss_tex, ss_depth, ss_noise = np.random.SeedSequence(_check_int("seed", seed, 0)).spawn(3)
    # SFC64 draws normals ~1.6x faster than PCG64; the noise is M * N * P draws.
    noise = np.random.Generator(np.random.SFC64(ss_noise))
    return np.random.default_rng(ss_tex), np.random.default_rng(ss_depth), noise


def _blur_levels(tex: np.ndarray, max_sigma: float) -> np.ndarray:
    """The texture blurred at the sigma levels, ``(M, N, L, C)`` float32.

    Level l has sigma = max_sigma * (l / (L - 1))**2: quadratic spacing is dense near focus,
    where fine detail changes fastest, and its inverse is a sqrt. The two levels a pixel
    interpolates between are adjacent in memory, and a row block of levels is one
    contiguous slab.
    """
    m, n, c = tex.shape
    n_lev = _N_LEVELS if max_sigma > 0 else 2  # two identical levels when no blur
    levels = np.empty((m, n, n_lev, c), dtype=np.float32)
    for i in range(n_lev):
        s = max_sigma * (i / (n_lev - 1)) ** 2
        levels[:, :, i, :] = gaussian_filter(tex, (s, s, 0)) if s > 0 else tex
    return levels


def _render(
    levels: np.ndarray,
    depth: np.ndarray,
    p: int,
    dt: np.dtype,
    noise: float,
    rng_noise: np.random.Generator,
) -> np.ndarray:
    """The ``(M, N, P, C)`` stack: per pixel and plane, the two blur levels around its sigma
    interpolated linearly in sigma, plus noise, quantised; in row blocks."""
    m, n, n_lev, c = levels.shape
    stack = np.empty((m, n, p, c), dtype=dt)
    planes = np.arange(p, dtype=np.float32)
    rows = max(1, _BLOCK_ELEMENTS // (n * p * c))
    top = np.float32(n_lev - 2)
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        npix = (r1 - r0) * n
        # g = (L - 1) * sqrt(sigma / max_sigma), so level k = floor(g) and
        # sigma_k <= sigma <= sigma_{k+1}; everything in float32 (this loop
        # touches M * N * P elements).
        g = np.abs(planes - depth[r0:r1, :, None].astype(np.float32))
        g *= np.float32(2.0 / p)
        np.minimum(g, np.float32(1.0), out=g)
        np.sqrt(g, out=g)
        g *= np.float32(n_lev - 1)
        k = np.floor(g)
        np.minimum(k, top, out=k)
        # Weight linear in sigma: (g**2 - k**2) / ((k + 1)**2 - k**2).
        w = g - k
        g += k
        w *= g
        k *= 2
        k += 1
        w /= k
        del g
        # Back to k from 2k + 1, then to flat indices into the block's levels.
        idx = k.astype(np.intp)
        del k
        idx >>= 1
        idx += (np.arange(npix, dtype=np.intp) * n_lev).reshape(r1 - r0, n, 1)
        flat = levels[r0:r1].reshape(npix * n_lev, c)
        lo = np.take(flat, idx.ravel(), axis=0)
        idx += 1
        hi = np.take(flat, idx.ravel(), axis=0)
        del idx
        hi -= lo
        hi *= w.reshape(-1, 1)
        lo += hi
        del hi, w
        if noise > 0:
            lo += np.float32(noise) * rng_noise.standard_normal(lo.shape, dtype=np.float32)
        _quantise(lo, dt, stack[r0:r1].reshape(npix * p, c))
    return stack
