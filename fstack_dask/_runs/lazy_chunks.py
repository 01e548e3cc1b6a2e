"""The blocks of the lazy graph (:mod:`.lazy`) and what each of its tasks runs on its
overlapped block. The blocks: the y/x size that fits ``memory_per_task``, and blocks narrower
than a halo merged into a neighbour. The tasks: the fusion, cropped to the block's own pixels,
the block's smallest ``S`` for the graph's first pass, and the layers' cast to the output's
dtypes. Plain NumPy in, NumPy out: no dask here. Each task runs in IEEE arithmetic
(:mod:`fstack_dask._fp_env`), whatever the worker's thread was left in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._algorithm.block import (
    BeyondFloat64,
    block_memory,
    fuse_block,
    haloed_shape,
    selectivity_stats,
    wide_int,
)
from .._fp_env import with_ieee_arithmetic
from .._params import DEFAULT_MEMORY_PER_TASK, overlap_depth

__all__ = ["cast_chunk", "chunk_stats", "fuse_chunk", "merge_small", "plan_chunks"]


def _crops(block: np.ndarray, halo: int, at: tuple, grid: tuple) -> list[tuple[int, int]]:
    """The y and x ranges of an overlapped block that are its own (sides that are not the
    image edge carry a halo); ``at``: its block index, ``grid``: the blocks along y and x. By
    ``block_id``, never dask's ``block_info``: a dict built per block at the graph's build and
    parsed per task before the first one runs."""
    crops = []
    for ax, loc, n in zip((block.ndim - 2, block.ndim - 1), at[-2:], grid, strict=True):
        lo = halo if loc > 0 else 0
        hi = halo if loc < n - 1 else 0
        crops.append((lo, block.shape[ax] - hi))
    return crops


def _skipped(at: tuple, skip: tuple[tuple[int, ...], tuple[int, ...]]) -> bool:
    """Whether a block is a halo chunk beside a tile (:mod:`.lazy_bands`; ``skip``: the rows
    and columns of those chunks), dropped unfused."""
    return at[-2] in skip[0] or at[-1] in skip[1]


def _fused(core: np.ndarray, auto: bool, **kernel: Any) -> Any:
    """``fuse_block``; ``auto``: nhsize was "auto", and values its sample did not hold are
    said so, with the nhsize that fits (they named an nhsize the user never gave)."""
    try:
        return fuse_block(core, **kernel)
    except BeyondFloat64 as exc:
        if not auto:
            raise
        from .._algorithm.auto import from_the_sample

        raise from_the_sample(exc) from None


@with_ieee_arithmetic
def chunk_stats(block, *, halo, nhsize, focus, alpha, sth, rgb, grid, engine=None,
                skip=((), ()), block_id=None, auto=False):  # fmt: skip
    """A block's smallest defined S and whether its output needs its image's smallest S
    (``selectivity_stats``), shaped ``(lead..., [1], 2, 1, 1)``; ``grid``: :func:`_crops`,
    ``skip``: :func:`_skipped`."""
    (y0, y1), (x0, x1) = _crops(block, halo, block_id, grid)
    lead = block.shape[: block.ndim - (4 if rgb else 3)]
    if _skipped(block_id, skip):
        return np.zeros(lead + ((1,) if rgb else ()) + (2, 1, 1))
    core = block.reshape(block.shape[len(lead) :])
    res = _fused(core, auto, nhsize=nhsize, focus=focus, alpha=alpha, sth=sth, rgb=rgb,
                 engine=engine, selectivity_only=True)  # fmt: skip
    s_min, undefined = selectivity_stats(res.s, (slice(y0, y1), slice(x0, x1)))
    return np.array([s_min, float(undefined)]).reshape(lead + ((1,) if rgb else ()) + (2, 1, 1))


@with_ieee_arithmetic
def fuse_chunk(block, fills=None, *, halo, nhsize, focus, alpha, sth, rgb, n_out, grid,
               engine=None, skip=((), ()), block_id=None, auto=False):  # fmt: skip
    """Fuse one overlapped block and crop its halo (sides that are not the image edge);
    ``fills``: its image's smallest S, one element (None: -inf); ``grid``: :func:`_crops`,
    ``skip``: :func:`_skipped`."""
    crops = _crops(block, halo, block_id, grid)
    lead = block.shape[: block.ndim - (4 if rgb else 3)]  # batch (and independent c) axes, all 1
    if _skipped(block_id, skip):
        (y0, y1), (x0, x1) = crops
        return np.zeros(lead + ((1,) if rgb else ()) + (n_out, y1 - y0, x1 - x0))
    core = block.reshape(block.shape[len(lead) :])
    fill = -np.inf
    if fills is not None:
        fill = float(fills.reshape(-1)[0])
    res = _fused(
        core,
        auto,
        nhsize=nhsize,
        focus=focus,
        alpha=alpha,
        sth=sth,
        rgb=rgb,
        with_depth=n_out > (3 if rgb else 1),
        with_selectivity=n_out > (3 if rgb else 1),
        engine=engine,
        s_fill=fill,
    )
    (y0, y1), (x0, x1) = crops
    image = res.image if rgb else res.image[None]
    layers = [image.astype(np.float64)]
    if res.depth is not None:
        layers += [res.depth[None].astype(np.float64), res.selectivity[None].astype(np.float64)]
    out = np.concatenate(layers)[:, y0:y1, x0:x1]
    # canonical output: (batch..., [c: 1], K, y, x)
    extra = (1,) if rgb else ()
    return out.reshape(lead + extra + out.shape)


@with_ieee_arithmetic
def cast_chunk(block: np.ndarray, *, to: np.dtype) -> np.ndarray:
    """A block of the fused float64 layers in the output's dtype (a float32 image's subnormal
    values kept, which a thread that flushes them would turn to 0)."""
    return block.astype(to)


def plan_chunks(
    shape_yx: tuple[int, int],
    *,
    n_planes: int,
    n_channels: int,
    itemsize: int,
    nhsize: int,
    rgb: bool,
    memory_per_task: int = DEFAULT_MEMORY_PER_TASK,
    align: tuple[int, int] = (1, 1),
    engine: str | None = None,
    dtype: Any = None,
) -> tuple[int, int]:
    """y/x block size whose task fits in ``memory_per_task`` bytes (``dtype``: the samples',
    where float16 is widened and 64-bit integers' focus measure pads each plane,
    :func:`.block.block_memory`).

    The largest square block (halo included) under the budget, then balanced
    so the last block is not a sliver, and rounded to a multiple of ``align``
    (the source's chunk grid, so that each source chunk is read by one task)
    where that keeps the block at least two halos wide.
    """
    halo = overlap_depth(nhsize)

    half = dtype is not None and np.dtype(dtype) == np.float16

    def need(shape: tuple[int, int]) -> int:  # the compiled engine's rows: nhsize's, not 9's
        return block_memory(shape, n_planes, n_channels, itemsize, rgb, nhsize=nhsize,
                            engine=engine, float16=half, wide_int=wide_int(dtype))  # fmt: skip

    def fits(side: int) -> bool:
        return need(haloed_shape((side, side), halo, shape_yx, engine)) <= memory_per_task

    lo, hi = 1, max(shape_yx)
    if fits(hi):
        lo = hi
    while lo < hi:  # largest side that fits (at least 1)
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    side = lo
    if side < halo and side < max(shape_yx):
        # Smaller blocks would be merged with a neighbour (they cannot carry a halo).
        raise ValueError(
            f"memory_per_task={memory_per_task} bytes cannot hold a block at least one halo "
            f"({halo} px) wide for {n_planes} planes; give at least "
            f"{need((3 * halo, 3 * halo))} bytes"
        )
    out = []
    for n, a in zip(shape_yx, align, strict=True):
        s = -(-n // -(-n // min(side, n)))  # balanced: ceil(n / ceil(n / side))
        if a > 1 and s < n and (s // a) * a >= 2 * halo:
            s = (s // a) * a
        out.append(s)
    return out[0], out[1]


def merge_small(chunks: tuple[int, ...], minimum: int) -> tuple[int, ...]:
    """Merge chunks smaller than ``minimum`` into a neighbour (keeps boundaries otherwise)."""
    if len(chunks) == 1:
        return chunks
    merged: list[int] = []
    for c in chunks:
        if merged and merged[-1] < minimum:
            merged[-1] += c
        else:
            merged.append(c)
    if len(merged) > 1 and merged[-1] < minimum:
        last = merged.pop()
        merged[-1] += last
    return tuple(merged)
