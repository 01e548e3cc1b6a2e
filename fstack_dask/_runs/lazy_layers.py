"""The graph of the lazy ``fuse``: a stack validated and planned (its axes in canonical
order, the chunks it is computed in, the halo the chosen ``nhsize`` needs, ``"auto"``
resolved first), then the ``map_overlap`` (built in tiles of blocks, ``lazy_bands``) whose
blocks stack every fused layer (image, depth, selectivity) along a K axis where z was, after a
first pass for each image's smallest S (5 planes or more).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import dask.array as da
import numpy as np

from .._algorithm.auto import (
    AUTO,
    AutoParameters,
    auto_parameters,
    check_nhsize_or_auto,
    check_sth_or_auto,
    sample_tiles,
)
from .._algorithm.device import check_device
from .._params import (
    Channels,
    check_alpha,
    check_chunks,
    check_dtype,
    check_flag,
    check_focus,
    check_memory,
    check_plain_array,
    overlap_depth,
    parse_axes,
    resolve_channels,
)
from .._sources.arrays import is_xarray, xarray_letters
from .device import require_device_for_graph, run_engine
from .lazy_bands import banded_map
from .lazy_chunks import chunk_stats, fuse_chunk, merge_small, plan_chunks

__all__ = ["Layers", "fused_layers"]


class _Plan(NamedTuple):
    order: tuple[int, ...]  # transpose into canonical (batch..., [c], z, y, x)
    canon_axes: str
    out_axes: str  # image axes in the user's order, z removed
    rgb: bool
    n_channels: int | None


def _plan(axes: str, shape: tuple[int, ...], rgb: bool) -> _Plan:
    batch = [a for a in axes if a not in "czyx"]
    canon = "".join(batch) + ("c" if "c" in axes else "") + "zyx"
    order = tuple(axes.index(a) for a in canon)
    out_axes = axes.replace("z", "")
    n_channels = shape[axes.index("c")] if "c" in axes else None
    return _Plan(order, canon, out_axes, rgb, n_channels)


class Layers(NamedTuple):
    """The fused layers of every block, stacked along a K axis where z was.

    ``array`` is float64 with canonical axes ``(batch..., [c], K, y, x)`` in the
    computing chunks; K holds the image channel(s), then depth and selectivity
    when asked for. ``out_chunks`` are the y/x chunks the caller asked for.
    """

    array: da.Array
    plan: _Plan
    dtype: np.dtype
    n_img: int
    out_chunks: tuple[tuple[int, ...], tuple[int, ...]]
    image_axes: str  # canonical axes of the image, e.g. "tcyx"
    map_axes: str  # canonical axes of depth/selectivity

    def split(self, arr: da.Array, name: str) -> da.Array:
        """Select one output from a K-stacked array (or block) with canonical axes."""
        k_ax = arr.ndim - 3
        k = {"image": slice(0, self.n_img), "depth": self.n_img, "selectivity": self.n_img + 1}
        if self.plan.rgb:  # (batch..., c=1, K, y, x): the colour channels are K[0:3]
            return arr[(slice(None),) * (k_ax - 1) + (0, k[name])]
        if name == "image":
            return arr[(slice(None),) * k_ax + (0,)]
        return arr[(slice(None),) * k_ax + (k[name],)]


def _as_dask(stack: Any) -> da.Array:
    from .._sources.zarr import refuse_array_inside_unfinished

    check_plain_array(stack, "stack")
    refuse_array_inside_unfinished(stack, "stack")
    if is_xarray(stack):  # its data (its blocks had been DataArrays, which np.transpose
        stack = stack.data  # called with dims it does not have: a ValueError at compute)
    if isinstance(stack, da.Array):
        return stack
    arr = stack if hasattr(stack, "shape") and hasattr(stack, "dtype") else np.asarray(stack)
    return da.from_array(arr, chunks=arr.shape if isinstance(arr, np.ndarray) else "auto")


def _auto_for_plan(x, plan: _Plan, rgb: bool, focus, nhsize, sth) -> AutoParameters:
    n_batch = x.ndim - 3 - (1 if "c" in plan.canon_axes else 0)
    sub = x[(0,) * n_batch]  # ([c], z, y, x)
    n_planes, ny, nx = sub.shape[-3:]
    n_channels = sub.shape[0] if sub.ndim == 4 else 1
    tiles = sample_tiles(
        (ny, nx), n_planes=n_planes, n_channels=n_channels, itemsize=x.dtype.itemsize
    )
    # One compute for all tiles: chunks shared by several tiles are read once.
    blocks = da.compute(*[sub[..., y0:y1, x0:x1] for y0, y1, x0, x1 in tiles])
    cache = dict(zip(tiles, blocks, strict=True))
    return auto_parameters(
        lambda y0, y1, x0, x1: cache[(y0, y1, x0, x1)],
        shape_yx=(ny, nx),
        n_planes=n_planes,
        dtype=x.dtype,
        rgb=rgb,
        n_channels=n_channels,
        focus=focus,
        nhsize=nhsize,
        sth=sth,
    )


def _unnamed(stack: Any) -> bool:
    """Whether a DataArray's dims are xarray's own (``dim_0``, ...: none given): read as any
    array's, ``"zyx"`` by default (refused from f46fe34, "axes is required", where ``fuse`` of
    such a dask-backed DataArray had fused; a review)."""
    return all(str(d) == f"dim_{i}" for i, d in enumerate(stack.dims))


def checked_stack(stack: Any, axes: str | None) -> tuple[da.Array, np.dtype, str]:
    """``stack`` as a dask array, its dtype and its axes, checked as ``fuse`` and
    ``auto_parameters_for`` take them (no empty axis). A DataArray's ``dims`` name its axes,
    as ``fuse_zarr`` reads them (``fuse`` took ``"zyx"`` whatever they said: dims ``y, x, z``
    fused along y, exit 0); else ``axes`` or ``"zyx"``."""
    if is_xarray(stack) and not (axes is None and _unnamed(stack)):
        axes = xarray_letters(stack, axes)
    elif axes is None:
        axes = "zyx"
    stack = _as_dask(stack)
    dtype = check_dtype(stack.dtype, "stack")
    axes = parse_axes(axes, stack.ndim)
    if 0 in stack.shape:
        raise ValueError(f"stack must not have an empty axis, got shape {stack.shape}")
    return stack, dtype, axes


def fused_layers(
    stack: Any,
    *,
    axes: str | None,
    nhsize: int | str,
    focus: Any,
    alpha: float,
    sth: float | str,
    channels: Channels,
    chunks: int | tuple[int, int] | None,
    memory_per_task: int | str,
    with_maps: bool,
    device: str = "cpu",
) -> Layers:
    """Validate, plan and build the one ``map_overlap`` of the fusion."""
    if isinstance(stack, (str, os.PathLike)):
        raise TypeError(
            f"fuse takes an array (NumPy, Zarr or dask), got the path {os.fspath(stack)!r}; to "
            "fuse a stored stack into a stored image, use fuse_zarr(src, dst)"
        )
    # the same rules as fuse_zarr's (chunks=0 was a ZeroDivisionError, chunks=True 1-px
    # tasks, memory_per_task="1GiB" a comparison error: a helper's run, 2026-12-05)
    chunks = check_chunks(chunks)
    memory_per_task = check_memory(memory_per_task)
    with_maps = check_flag(with_maps, "return_maps")
    stack, dtype, axes = checked_stack(stack, axes)
    nhsize = check_nhsize_or_auto(nhsize)
    n_planes = stack.shape[axes.index("z")]
    focus = check_focus(focus, n_planes)
    alpha = check_alpha(alpha)
    sth = check_sth_or_auto(sth)
    rgb = resolve_channels(channels, axes, stack.shape, dtype)
    device = check_device(device)
    require_device_for_graph(device)
    engine = run_engine(device)
    plan = _plan(axes, stack.shape, rgb)

    x = stack.transpose(plan.order)
    auto = nhsize == AUTO  # values beyond its sample are said so by the blocks
    if AUTO in (nhsize, sth):
        # Resolved before the graph exists: the halo follows the chosen nhsize.
        chosen = _auto_for_plan(x, plan, rgb, focus, nhsize, sth)
        nhsize, sth = chosen.nhsize, chosen.sth
    halo = overlap_depth(nhsize)
    ny, nx = x.shape[-2:]
    if chunks is None:
        if len(x.chunks[-1]) > 1 or len(x.chunks[-2]) > 1:
            out_chunks = (x.chunks[-2], x.chunks[-1])
        else:
            n_c = plan.n_channels if rgb else 1
            side = plan_chunks(
                (ny, nx),
                n_planes=n_planes,
                n_channels=n_c,
                itemsize=dtype.itemsize,
                nhsize=nhsize,
                rgb=rgb,
                memory_per_task=memory_per_task,
                engine=engine,
                dtype=dtype,
            )
            out_chunks = da.core.normalize_chunks(side, (ny, nx))
    else:
        cy, cx = (chunks, chunks) if np.ndim(chunks) == 0 else chunks
        out_chunks = da.core.normalize_chunks((int(cy), int(cx)), (ny, nx))

    n_lead = x.ndim - 3 - (1 if "c" in plan.canon_axes else 0)
    lead_chunks: tuple[Any, ...] = (1,) * n_lead
    if "c" in plan.canon_axes:
        lead_chunks += (-1,) if rgb else (1,)
    compute_chunks = tuple(merge_small(c, halo) for c in out_chunks)
    unit = max(x.chunks[-2])  # the input's own chunks' height: lazy_bands' tiles take it whole
    x = x.rechunk(lead_chunks + (-1,) + compute_chunks)

    n_img = 3 if rgb else 1
    n_out = n_img + (2 if with_maps else 0)
    out_chunks_canon = x.chunks[:n_lead]
    if "c" in plan.canon_axes:
        out_chunks_canon += ((1,),) if rgb else (x.chunks[n_lead],)
    out_chunks_canon += ((n_out,),) + compute_chunks

    # an axis in one chunk needs no halo (and dask refuses one deeper than the chunk)
    depth = {ax: (halo if len(x.chunks[ax]) > 1 else 0) for ax in (x.ndim - 2, x.ndim - 1)}
    kernel = {"halo": halo, "nhsize": nhsize, "focus": focus, "alpha": alpha, "sth": sth,
              "rgb": rgb, "engine": engine, "auto": auto}  # fmt: skip
    fills = _image_minimums(x, depth, kernel, out_chunks_canon, n_planes, unit)
    # The minimums go in as an array argument, one element per image broadcast over its
    # blocks (as a keyword, dask materialised and optimised the first pass per block: 50 KB
    # and 10-20 ms a block). The fusion reads its own copy of the input, read only once the
    # minimums are known (reads shared with the first pass were held until then): the very
    # argument the blocks take, else a band's reads ran before its reshape (lazy_bands)
    fills = None if fills is None else fills.reshape(fills.shape + (1, 1, 1))
    fused = banded_map(
        fuse_chunk, x, depth, [] if fills is None else [fills], after=fills,
        chunks=out_chunks_canon, unit=unit, dtype=np.float64,
        meta=np.empty((0,) * x.ndim, dtype=np.float64), n_out=n_out, **kernel,
    )  # fmt: skip
    return Layers(
        fused,
        plan,
        dtype.newbyteorder("="),
        n_img,
        tuple(out_chunks),
        plan.canon_axes.replace("z", ""),
        plan.canon_axes.replace("z", "").replace("c", "")
        if rgb
        else plan.canon_axes.replace("z", ""),
    )


def _image_minimums(x, depth, kernel, out_chunks, n_planes, unit) -> da.Array | None:
    """Each image's smallest S (lead chunk indices; -inf where none is defined), to fill
    undefined S as the reference does: a first map_overlap over the same blocks, whose result
    the fusion's reads wait for. None with fewer than 5 planes (S is +inf, never undefined)."""
    if n_planes < 5:
        return None
    k_ax = len(out_chunks) - 3  # the layers' axis
    stats_chunks = out_chunks[:k_ax] + ((2,),) + tuple((1,) * len(c) for c in out_chunks[-2:])
    stats = banded_map(
        chunk_stats, x, depth, [], chunks=stats_chunks, unit=unit,
        dtype=np.float64, meta=np.empty((0,) * x.ndim, np.float64), **kernel,
    )  # fmt: skip
    s_min = stats[(slice(None),) * k_ax + (0,)]
    defined = ~da.isnan(s_min)
    smallest = da.where(defined, s_min, np.inf).min(axis=(-2, -1))
    return da.where(defined.any(axis=(-2, -1)), smallest, -np.inf)
