"""What each task of the lazy graph (:mod:`.lazy`) runs on its overlapped block: the fusion,
cropped to the block's own pixels, the block's smallest ``S`` for the graph's first pass, and
the layers' cast to the output's dtypes. Plain NumPy in, NumPy out: no dask here. Each runs in
IEEE arithmetic (:mod:`fstack_dask._fp_env`), whatever the worker's thread was left in.
"""

from __future__ import annotations

import numpy as np

from .._algorithm.block import fuse_block, selectivity_stats
from .._fp_env import with_ieee_arithmetic

__all__ = ["cast_chunk", "chunk_stats", "fuse_chunk"]


def _crops(block: np.ndarray, halo: int, info: dict) -> list[tuple[int, int]]:
    """The y and x ranges of an overlapped block that are its own (sides that are not the
    image edge carry a halo)."""
    loc, nchunks = info["chunk-location"], info["num-chunks"]
    crops = []
    for ax in (block.ndim - 2, block.ndim - 1):
        lo = halo if loc[ax] > 0 else 0
        hi = halo if loc[ax] < nchunks[ax] - 1 else 0
        crops.append((lo, block.shape[ax] - hi))
    return crops


@with_ieee_arithmetic
def chunk_stats(block, *, halo, nhsize, focus, alpha, sth, rgb, engine=None,
                 block_info=None):  # fmt: skip
    """A block's smallest defined S and whether its output needs its image's smallest S
    (``selectivity_stats``), shaped ``(lead..., [1], 2, 1, 1)``."""
    (y0, y1), (x0, x1) = _crops(block, halo, block_info[0])
    lead = block.shape[: block.ndim - (4 if rgb else 3)]
    core = block.reshape(block.shape[len(lead) :])
    res = fuse_block(core, nhsize=nhsize, focus=focus, alpha=alpha, sth=sth, rgb=rgb,
                     engine=engine, selectivity_only=True)  # fmt: skip
    s_min, undefined = selectivity_stats(res.s, (slice(y0, y1), slice(x0, x1)))
    return np.array([s_min, float(undefined)]).reshape(lead + ((1,) if rgb else ()) + (2, 1, 1))


@with_ieee_arithmetic
def fuse_chunk(block, *, halo, nhsize, focus, alpha, sth, rgb, n_out, engine=None,
                fills=None, block_info=None):  # fmt: skip
    """Fuse one overlapped block and crop its halo (sides that are not the image edge);
    ``fills``: each image's smallest S, by its lead chunk indices (None: -inf)."""
    info = block_info[0]
    crops = _crops(block, halo, info)
    lead = block.shape[: block.ndim - (4 if rgb else 3)]  # batch (and independent c) axes, all 1
    core = block.reshape(block.shape[len(lead) :])
    fill = -np.inf
    if fills is not None:
        fill = float(fills[tuple(info["chunk-location"][: fills.ndim])])
    res = fuse_block(
        core,
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
