"""Dask graph building: the chunked, haloed fusion of a focus stack.

No numerics here (those are in ``_algorithm``) and no Zarr I/O (``_sources``, ``_outputs``). The
graph is one overlap over y and x with z (and RGB channels) in one chunk (with 5
planes or more, after a first pass for each image's smallest S). ``boundary="none"``
leaves the true image edge to the kernel's own border rules; the block function crops
its own halo, so chunks of any size, uneven last chunks included, give the same bits as
the whole image. The graph is planned and built in ``lazy_layers``; this module holds the
public ``fuse`` and ``auto_parameters_for`` and turns its layers into the user's arrays.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, overload

import dask.array as da
import numpy as np
from numpy.typing import DTypeLike

from .._algorithm.auto import (
    AutoParameters,
    check_nhsize_or_auto,
    check_sth_or_auto,
)
from .._params import (
    DEFAULT_MEMORY_PER_TASK,
    Channels,
    check_focus,
    resolve_channels,
)
from .._public import public
from .lazy_chunks import cast_chunk
from .lazy_layers import _auto_for_plan, _plan, checked_stack, fused_layers

__all__ = ["FusionResult", "auto_parameters_for", "fuse"]


@public
class FusionResult(NamedTuple):
    """Lazy outputs of :func:`fuse` with ``return_maps=True``, sharing one graph.

    ``image`` has the input's axes without z; ``depth`` (float32, focus units
    of the plane with the highest focus measure; NaN where no plane has
    contrast) and ``selectivity`` (float32, S in dB; NaN where undefined) have
    the image's axes, without the channel axis in RGB mode.
    """

    image: da.Array
    depth: da.Array
    selectivity: da.Array


# What fuse returns, as type checkers see it: the image alone, or with the maps
@overload
@public
def fuse(
    stack: Any,
    *,
    axes: str | None = ...,
    nhsize: int | str = ...,
    focus: Any = ...,
    alpha: float = ...,
    sth: float | str = ...,
    channels: Channels = ...,
    chunks: int | tuple[int, int] | None = ...,
    memory_per_task: int | str = ...,
    return_maps: Literal[False] = ...,
    device: str = ...,
) -> da.Array: ...


@overload
@public
def fuse(
    stack: Any,
    *,
    axes: str | None = ...,
    nhsize: int | str = ...,
    focus: Any = ...,
    alpha: float = ...,
    sth: float | str = ...,
    channels: Channels = ...,
    chunks: int | tuple[int, int] | None = ...,
    memory_per_task: int | str = ...,
    return_maps: Literal[True],
    device: str = ...,
) -> FusionResult: ...


@overload
@public
def fuse(
    stack: Any,
    *,
    axes: str | None = ...,
    nhsize: int | str = ...,
    focus: Any = ...,
    alpha: float = ...,
    sth: float | str = ...,
    channels: Channels = ...,
    chunks: int | tuple[int, int] | None = ...,
    memory_per_task: int | str = ...,
    return_maps: bool,
    device: str = ...,
) -> da.Array | FusionResult: ...


@public
def fuse(
    stack: Any,
    *,
    axes: str | None = None,
    nhsize: int | str = 9,
    focus: Any = None,
    alpha: float = 0.2,
    sth: float | str = 13,
    channels: Channels = "auto",
    chunks: int | tuple[int, int] | None = None,
    memory_per_task: int | str = DEFAULT_MEMORY_PER_TASK,
    return_maps: bool = False,
    device: str = "cpu",
) -> da.Array | FusionResult:
    """Lazy all-in-focus fusion of a focus stack of any size (Pertuz et al. 2013).

    Builds a Dask graph and computes nothing. Each y/x block is fused with a
    halo of :func:`overlap_depth` pixels that is cropped afterwards, so the
    result is bit-identical to :func:`focus_stack` on the whole image for any
    chunking and any scheduler.

    Parameters
    ----------
    stack : array_like or dask.array.Array
        The focus stack: a NumPy, Zarr or Dask array.
    axes : str, optional
        One letter per dimension of ``stack``: ``z`` (focus), ``y``, ``x``,
        optionally ``c`` (channels); any other letter is a batch axis fused
        index by index. ``"yxz"`` and ``"yxzc"`` are the reference's layouts.
        Default ``"zyx"``; for an xarray ``DataArray``, the axes its ``dims`` name
        (as :func:`fuse_zarr` reads them; an ``axes`` that contradicts them is refused).
    nhsize, focus, alpha, sth
        As in :func:`focus_stack`. ``"auto"`` for ``nhsize`` and/or ``sth`` chooses
        them from a fixed sample of the stack (:func:`auto_parameters_for`) before
        the graph is built, so the halo follows the chosen ``nhsize`` and the
        result is the same for any chunking; the choice is logged on the
        ``fstack_dask`` logger.
    channels : {"auto", "rgb", "independent"}, optional
        ``"rgb"``: one weight map from the luminance, shared by the three
        channels, as the reference does for colour images. ``"independent"``:
        each channel fused on its own focus measure (fluorescence).
        ``"auto"`` (default) picks ``"rgb"`` for a uint8 channel axis of
        length 3 and ``"independent"`` otherwise.
    chunks : int or (int, int), optional
        y/x block size. Default: the input's chunks for a Dask array, else a
        size that fits ``memory_per_task``. The output keeps these chunks;
        blocks smaller than the halo are merged for computing only.
    memory_per_task : int or str, optional
        Bytes one task may use, for choosing ``chunks`` (default 256 MiB), e.g. ``"1GiB"``.
    return_maps : bool, optional
        Also return the depth and selectivity maps (see :class:`FusionResult`).
    device : {"cpu", "cuda"}, optional
        Where the blocks are fused: ``"cuda"`` on a CUDA GPU (``pip install
        "fstack_dask[gpu]"``), checked when the graph is built, on the workers of the
        active distributed Client if there is one, else in this process: without it,
        a ``ValueError`` naming ``device``.

    Returns
    -------
    dask.array.Array or FusionResult
        The fused image, axes as ``axes`` without ``z``, in the input's dtype; with
        ``return_maps=True``, a :class:`FusionResult` of the image and its maps.

    Notes
    -----
    The graph's memory is what dask's scheduler holds while it runs it: input chunks that wait
    for their own block, about a row of them. The graph is built in tiles of blocks about 4096
    px wide and high, each reading its own copy of its input and the halo rows and columns
    around it (those chunks decoded once more), so neither the width nor the height counts: 21
    planes of uint16 written with ``to_zarr`` on 2 threads, 2048 rows, peak RSS about 500 MiB at
    2048 px wide and 620-650 at 16384 (870-930 before the bands); held by the scheduler, 2048 px
    wide, 137 MiB at 16384 and at 32768 rows (194 and 228 in bands as tall as the image,
    ``benchmarks/RESULTS.md``). :func:`fuse_zarr` holds memory bounded by its
    ``memory_per_task`` whatever the image.

    References
    ----------
    .. [1] S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of
       all-in-focus images by noise-robust selective fusion of limited
       depth-of-field images", IEEE Trans. Image Process. 22(3):1242-1251,
       2013. doi:10.1109/TIP.2012.2231087

    Examples
    --------
    >>> import numpy as np
    >>> from fstack_dask import focus_stack, fuse, synthetic_stack
    >>> stack = synthetic_stack((96, 80), 9, dtype="uint16", seed=3).stack  # (y, x, z)
    >>> lazy = fuse(stack, axes="yxz", chunks=32)
    >>> lazy.chunks
    ((32, 32, 32), (32, 32, 16))
    >>> bool((lazy.compute() == focus_stack(stack)).all())
    True
    """
    layers = fused_layers(
        stack,
        axes=axes,
        nhsize=nhsize,
        focus=focus,
        alpha=alpha,
        sth=sth,
        channels=channels,
        chunks=chunks,
        memory_per_task=memory_per_task,
        with_maps=return_maps,
        device=device,
    )
    fused = layers.array
    if fused.chunks[-2:] != layers.out_chunks:
        fused = fused.rechunk(fused.chunks[:-2] + layers.out_chunks)
    plan = layers.plan
    image = _to_user_order(
        _cast(layers.split(fused, "image"), layers.dtype), layers.image_axes, plan.out_axes
    )
    if not return_maps:
        return image
    user_map_axes = plan.out_axes.replace("c", "") if plan.rgb else plan.out_axes
    depth, sel = (
        _to_user_order(_cast(layers.split(fused, name), np.float32), layers.map_axes, user_map_axes)
        for name in ("depth", "selectivity")
    )
    return FusionResult(image, depth, sel)


@public
def auto_parameters_for(
    stack: Any,
    *,
    axes: str | None = None,
    channels: Channels = "auto",
    focus: Any = None,
    nhsize: int | str = "auto",
    sth: float | str = "auto",
) -> AutoParameters:
    """The ``nhsize`` / ``sth`` that ``"auto"`` chooses for a stack, with the evidence.

    What :func:`fuse` and :func:`focus_stack` use when given ``"auto"``: a fixed
    grid of at most 16 tiles of 128 x 128 px (all planes), independent of
    chunking, at most 64 MiB; the first index of any batch axis.

    Parameters
    ----------
    stack : array_like or dask.array.Array
        The focus stack (NumPy, Zarr or Dask).
    axes, channels, focus
        As in :func:`fuse`.
    nhsize, sth : int / float or "auto", optional
        A fixed value is kept and used in choosing the other.

    Returns
    -------
    AutoParameters
        ``nhsize``, ``sth`` and the measurements they come from.

    References
    ----------
    .. [1] S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of
       all-in-focus images by noise-robust selective fusion of limited
       depth-of-field images", IEEE Trans. Image Process. 22(3):1242-1251,
       2013. doi:10.1109/TIP.2012.2231087

    Examples
    --------
    >>> from fstack_dask import auto_parameters_for, synthetic_stack
    >>> stack = synthetic_stack((128, 128), 11, noise=0.05, seed=2).stack  # (y, x, z)
    >>> chosen = auto_parameters_for(stack, axes="yxz")
    >>> chosen.nhsize > 9
    True
    """
    stack, dtype, axes = checked_stack(stack, axes)
    nhsize = check_nhsize_or_auto(nhsize)
    sth = check_sth_or_auto(sth)
    focus = check_focus(focus, stack.shape[axes.index("z")])
    rgb = resolve_channels(channels, axes, stack.shape, dtype)
    plan = _plan(axes, stack.shape, rgb)
    x = stack.transpose(plan.order)
    return _auto_for_plan(x, plan, rgb, focus, nhsize, sth)


def _cast(arr: da.Array, dtype: DTypeLike) -> da.Array:
    """``arr.astype(dtype)``, in tasks that run in IEEE arithmetic (:func:`.cast_chunk`)."""
    dtype = np.dtype(dtype)
    return arr.map_blocks(cast_chunk, to=dtype, dtype=dtype, meta=np.empty((0,) * arr.ndim, dtype))


def _to_user_order(arr: da.Array, have: str, want: str) -> da.Array:
    if have == want:
        return arr
    return arr.transpose(tuple(have.index(a) for a in want))
