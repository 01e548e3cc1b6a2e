"""In-memory entry point with the reference's signature and layout."""

from __future__ import annotations

import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .._params import check_alpha, check_dtype, check_focus, check_plain_array, overlap_depth
from .._public import public
from .auto import (
    AUTO,
    auto_parameters,
    check_nhsize_or_auto,
    check_sth_or_auto,
    from_the_sample,
)
from .block import BeyondFloat64, block_memory, fuse_block, selectivity_stats
from .device import check_device, engine_for, require_here

__all__ = ["focus_stack"]


@public
def focus_stack(
    im_stack: Any,
    nhsize: int | str = 9,
    focus: Any = None,
    alpha: float = 0.2,
    sth: float | str = 13,
    *,
    workers: int | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """All-in-focus image of an in-memory focus stack (Pertuz et al. 2013).

    A drop-in for the reference ``focus_stack`` (coppafish's
    ``extract/fstack.py``, after Pertuz's MATLAB ``fstack``), with the same
    signature and layout, computing the same numbers where the reference is
    defined; see "Differences from the reference" in docs/algorithm.md for
    where it is not.

    Parameters
    ----------
    im_stack : array_like
        ``[M, N, P]`` grey stack or ``[M, N, P, 3]`` RGB stack: element
        ``[:, :, p]`` is the image at focus plane ``p``. Integer or floating
        dtype, any byte order. Floats are used unscaled and must be finite.
    nhsize : int or "auto", optional
        Side of the square focus-measure window, in pixels (>= 1). ``"auto"``
        chooses it from the data (:func:`fstack_dask.auto_parameters`); the default
        9 is the reference's.
    focus : array_like of float, optional
        Focus position of each plane, strictly monotonic, length ``P``.
        Defaults to ``arange(P)``.
    alpha : float, optional
        Steepness of the selectivity-to-sharpening map, in ``[1e-6, 1]``.
    sth : float or "auto", optional
        Selectivity threshold in dB. ``"auto"`` chooses it from the data; the
        default 13 is the reference's.
    workers : int, optional
        Threads to fuse with (default: the CPUs this process may use). The
        image is cut into horizontal bands with a halo of
        :func:`fstack_dask.overlap_depth` rows, so the result is the same,
        bit for bit, whatever the number of threads; as many more bands as it
        takes for each to need at most 256 MiB of working memory, so that the
        call holds about ``workers x 256 MiB`` beside its input and output.
    device : {"cpu", "cuda"}, optional
        ``"cuda"``: fuse on the CUDA GPU (``pip install "fstack_dask[gpu]"``),
        in as few bands as fit in half its free memory; without numba's CUDA
        target or a GPU, a ``ValueError`` naming ``device``.

    Returns
    -------
    numpy.ndarray
        ``[M, N]`` (grey) or ``[M, N, 3]`` (RGB) fused image in the input's
        dtype (native byte order); integers are rounded half to even.

    Raises
    ------
    TypeError
        For a non-numeric ``im_stack`` dtype or non-numeric parameters.
    ValueError
        For a wrong ``im_stack`` shape, an empty axis, non-finite float data,
        or out-of-range parameters.

    Notes
    -----
    With fewer than 5 planes the reference's 3-point fit (step 2) does not
    exist: every pixel is then treated as fully selective, which selects the
    plane of highest local variance with the sharpest weights. A single plane
    is returned unchanged. Pixels without contrast in any plane get the plane
    mean.

    References
    ----------
    .. [1] S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of
       all-in-focus images by noise-robust selective fusion of limited
       depth-of-field images", IEEE Trans. Image Process. 22(3):1242-1251,
       2013. doi:10.1109/TIP.2012.2231087

    Examples
    --------
    >>> import numpy as np
    >>> from fstack_dask import focus_stack, synthetic_stack
    >>> data = synthetic_stack((64, 64), 7, dtype="uint8", seed=1)
    >>> fused = focus_stack(data.stack)
    >>> fused.shape, fused.dtype
    ((64, 64), dtype('uint8'))
    """
    check_plain_array(im_stack, "im_stack")  # np.asarray would drop a mask, silently
    im_stack = np.asarray(im_stack)
    check_dtype(im_stack.dtype, "im_stack")
    if im_stack.ndim not in (3, 4):
        raise ValueError(
            "im_stack must be [M, N, P] (grey) or [M, N, P, 3] (RGB), "
            f"got {im_stack.ndim} dimensions with shape {im_stack.shape}"
        )
    rgb = im_stack.ndim == 4
    if rgb and im_stack.shape[3] != 3:
        raise ValueError(f"im_stack's RGB axis (last) must have length 3, got {im_stack.shape[3]}")
    if 0 in im_stack.shape:
        raise ValueError(f"im_stack must not have an empty axis, got shape {im_stack.shape}")
    nhsize = check_nhsize_or_auto(nhsize)
    focus = check_focus(focus, im_stack.shape[2])
    alpha = check_alpha(alpha)
    sth = check_sth_or_auto(sth)
    workers = _check_workers(workers)
    device = check_device(device)
    require_here(device)

    # Plane-first (and channel-first) views; the kernel makes each band's planes contiguous.
    planes = np.moveaxis(im_stack, (2, 3), (1, 0)) if rgb else np.moveaxis(im_stack, 2, 0)
    auto = nhsize == AUTO
    if AUTO in (nhsize, sth):
        chosen = auto_parameters(
            lambda y0, y1, x0, x1: planes[..., y0:y1, x0:x1],
            shape_yx=im_stack.shape[:2], n_planes=im_stack.shape[2], dtype=im_stack.dtype,
            rgb=rgb, focus=focus, nhsize=nhsize, sth=sth,
        )  # fmt: skip
        nhsize, sth = chosen.nhsize, chosen.sth
    try:
        fused = _fuse_in_bands(
            planes, nhsize=nhsize, focus=focus, alpha=alpha, sth=sth, rgb=rgb,
            workers=workers, engine=engine_for(device),
        )  # fmt: skip
    except BeyondFloat64 as exc:  # values beyond auto's sample: say so, and what fits
        if auto:
            raise from_the_sample(exc) from None
        raise
    return np.moveaxis(fused, 0, -1) if rgb else fused


def _check_workers(workers: Any) -> int:
    if workers is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not on Linux
            return max(1, os.cpu_count() or 1)
    if isinstance(workers, (bool, np.bool_)) or not isinstance(workers, numbers.Integral):
        raise TypeError(f"workers must be an integer >= 1 or None, got {workers!r}")
    if workers < 1:
        raise ValueError(f"workers must be an integer >= 1 or None, got {workers}")
    return int(workers)


def band_bounds(rows: int, n_bands: int, halo: int) -> list[tuple[int, int, int, int]]:
    """``(y0, y1, h0, h1)`` per band: its rows ``[y0, y1)`` and, with the halo, ``[h0, h1)``."""
    edges = np.linspace(0, rows, n_bands + 1).round().astype(int)
    return [
        (int(y0), int(y1), max(0, int(y0) - halo), min(rows, int(y1) + halo))
        for y0, y1 in zip(edges[:-1], edges[1:], strict=True)
    ]


def _bands_within_budget(planes, rgb, nhsize, halo, n_bands, engine) -> int:
    """At least ``n_bands``, and as many more as it takes for one band's kernel to hold at
    most ``DEFAULT_MEMORY_PER_TASK`` (while bands stay 4 halos high): one band per thread held
    the kernel's working set for the whole image, 3.6 x the input beside it (an adversarial
    run: 2.4 GiB for a 672 MiB stack)."""
    from .._params import DEFAULT_MEMORY_PER_TASK

    rows, cols = planes.shape[-2:]
    n_planes, n_channels = planes.shape[-3], planes.shape[0] if rgb else 1
    most = max(n_bands, rows // (4 * halo))
    float16 = planes.dtype == np.float16
    while n_bands < most:
        need = block_memory((-(-rows // n_bands) + 2 * halo, cols), n_planes, n_channels,
                            planes.dtype.itemsize, rgb, nhsize=nhsize, engine=engine,
                            float16=float16)  # fmt: skip
        if need <= DEFAULT_MEMORY_PER_TASK:
            break
        n_bands += 1
    return n_bands


def _fuse_in_bands(planes, *, nhsize, focus, alpha, sth, rgb, workers, engine=None):
    """Fuse ``planes`` ((P, Y, X) or (3, P, Y, X)) in horizontal bands on a thread pool.

    Each band carries a halo of :func:`overlap_depth` rows, which is the whole
    receptive field of an output pixel, and crops it: every pixel is computed
    as in one whole-image call, bit for bit. The compiled kernel releases the
    GIL, so the bands run in parallel.
    """
    rows = planes.shape[-2]
    halo = overlap_depth(nhsize)
    if engine == "cuda":  # one GPU: as few bands as its memory allows, one after the other
        from .cuda import gpu_bands

        n_bands, workers = gpu_bands(planes, rgb, halo), 1
    else:
        # Bands of at least 4 halos, so the rows computed twice stay a small share.
        n_bands = max(1, min(workers, rows // (4 * halo)))
        n_bands = _bands_within_budget(planes, rgb, nhsize, halo, n_bands, engine)
    bounds = band_bounds(rows, n_bands, halo)

    def run(bound, fill=-np.inf):
        y0, y1, h0, h1 = bound
        res = fuse_block(
            planes[..., h0:h1, :],
            nhsize=nhsize, focus=focus, alpha=alpha, sth=sth, rgb=rgb, engine=engine,
            s_fill=fill,
        )  # fmt: skip
        core = (slice(y0 - h0, y1 - h0), slice(None))
        return (res.image[..., core[0], :], *selectivity_stats(res.s, core))

    with ThreadPoolExecutor(max_workers=max(1, min(workers, n_bands))) as pool:
        bands = list(pool.map(run, bounds))
        # Undefined S is the image's smallest S, as the reference fills it: the bands that
        # need it are fused again once every band's is known.
        again = [k for k, (_, _, undefined) in enumerate(bands) if undefined]
        if again:
            defined = [s_min for _, s_min, _ in bands if s_min == s_min]
            fill = min(defined) if defined else -np.inf  # (the reference's would be NaN)
            redone = pool.map(lambda k: run(bounds[k], fill), again)
            for k, band in zip(again, redone, strict=True):
                bands[k] = band
    if n_bands == 1:
        return bands[0][0]
    shape = planes.shape[:-3] + planes.shape[-2:] if rgb else planes.shape[-2:]
    out = None
    for (y0, y1, _, _), (band, _, _) in zip(bounds, bands, strict=True):
        if out is None:
            out = np.empty(shape, band.dtype)
        out[..., y0:y1, :] = band
    return out
