"""The lazy graph (:mod:`.lazy_layers`) in tiles of blocks (bands of block columns cut into
rows of bands), each tile a subgraph of its own.

One overlap over the whole image held about a row of input chunks: dask's order goes row by
row, and a chunk read for the halo of the block above it waits, held, for its own block, so
the scheduler's memory grew with the image's width (21 x 8192^2 uint16: 1116 MiB peak against
495 at 2048^2). In bands of a few block columns, each band reads its own copy of its columns
and of the halo columns beside them (a neighbouring chunk column decoded once more), so no
chunk is shared between bands and a chunk waits at most for a row of its own band. The blocks
are the same pixels, cropped the same way: the same bits. Bands as tall as the image still
held more as it grew taller (a chunk read for the halo of the block below it waited while dask's
order went elsewhere, for the smallest-S pass's reduction tree: 21 x 32768 x 2048 uint16, 228
MiB held against 124 at 2048 rows): the bands are cut across the height too, into tiles about
as high as wide, the halo rows beside each tile read once more.
"""

from __future__ import annotations

import itertools
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.core import flatten
from dask.graph_manipulation import bind
from dask.highlevelgraph import HighLevelGraph

from .lazy_overlap import overlap

try:  # dask's task spec (2024.12 to 2026.8 at least): without it, one overlap, as before
    from dask._task_spec import Alias, Task, TaskRef, convert_legacy_graph
except ImportError:  # pragma: no cover - a dask that moved them
    convert_legacy_graph = None
# Whether this dask lets a graph go in bands (an older one gets one overlap, as before)
BANDS = convert_legacy_graph is not None

__all__ = ["BAND_WIDTH", "banded_map"]

# Pixels a tile spans, across and down, at least two blocks. Of bands as tall as the image:
# 21 x 2048 x 16384 uint16 in 512-px blocks, to_zarr on 2 threads, peaked at 557-578 MiB in
# bands of 2048 px, 618-652 in bands of 4096 and 873-932 in one graph (482-524 at 2048 wide),
# decoding each chunk 1.44, 1.19 and 1.0 times a pass (benchmarks/RESULTS.md): within 1.3x of
# the narrow image at a fifth more decodes; the same side down (the tiles): as much again.
# Tiles of 8192 px: 1.13 decodes a chunk a pass at 21 x 16384^2 rather than 1.41, for 624 MiB
# held by the scheduler rather than 278 (kernel-less): not taken
BAND_WIDTH = 4096


def _renamed(key, suffix: str):
    return (f"{key[0]}-{suffix}", *key[1:]) if isinstance(key, tuple) else f"{key}-{suffix}"


def _after(value, *_):
    return value


def _tiles(x: da.Array, rows: list, cols: list, after, seed: str):
    """Every tile's own copy of ``x[..., y0:y1, x0:x1]`` (``rows`` x ``cols`` of ``(y0, y1)`` and
    ``(x0, x1)``), laid side by side as one array in one graph layer: each copy computed by
    tasks of its own (renamed), so that no tile holds a chunk for another, their roots run
    only after ``after`` (the image minimums: the fusion's reads wait for them, never held for
    them). One layer for all tiles: a layer a tile made dask's per-layer work grow with the
    square of the tiles (a layer copies its collection's layers; 21 x 100000^2 in 512-px
    blocks, 625 tiles: 5078 layers, benchmarks/RESULTS.md). None where the copies would
    together recompute more than the input's graph twice over (pixels that depend on the
    whole image, say a global normalisation: one graph, as before, rather than a
    recomputation per tile)."""
    parts = [x[..., y0:y1, x0:x1] for y0, y1 in rows for x0, x1 in cols]
    waits = () if after is None else tuple(TaskRef(k) for k in flatten(after.__dask_keys__()))
    hlg = HighLevelGraph.merge(*(part.__dask_graph__() for part in parts))
    graph = convert_legacy_graph(hlg.to_dict())  # the walk below culls (hlg.cull lost keys)
    name = f"tiles-{tokenize(seed)}"
    row_chunks = [parts[r * len(cols)].chunks[-2] for r in range(len(rows))]
    col_chunks = [parts[c].chunks[-1] for c in range(len(cols))]
    row_at = np.cumsum([0] + [len(c) for c in row_chunks]).tolist()
    col_at = np.cumsum([0] + [len(c) for c in col_chunks]).tolist()
    layer: dict = {}
    total = 0
    for i, part in enumerate(parts):
        sub: dict = {}
        todo = list(flatten(part.__dask_keys__()))
        while todo:
            key = todo.pop()
            if key not in graph:  # a distributed Future's (persisted): not ours to rename
                return None
            if key not in sub:
                sub[key] = graph[key]
                todo.extend(graph[key].dependencies)
        total += len(sub)
        suffix = tokenize(seed, i)
        names = {key: _renamed(key, suffix) for key in sub}
        r, c = divmod(i, len(cols))
        for key in flatten(part.__dask_keys__()):  # the tile's blocks, at their place
            names[key] = (name, *key[1:-2], key[-2] + row_at[r], key[-1] + col_at[c])
        # one task per tile waits for the minimums, its reads for it: a read waiting for each
        # image's minimum was an edge per read per image, quadratic in a batch axis's length
        gate = f"minimums-{suffix}"
        if waits:
            layer[gate] = Task(gate, _after, None, *waits)
        for key, node in sub.items():
            node = node.substitute(names, key=names[key])
            if waits and not node.dependencies:
                node = Task(names[key], _after, node, TaskRef(gate))
            layer[names[key]] = node
    if total > 2 * len(graph) + 2 * len(parts):
        return None
    deps = [] if after is None else [after]
    chunks = (*x.chunks[:-2], sum(row_chunks, ()), sum(col_chunks, ()))
    return da.Array(HighLevelGraph.from_collections(name, layer, deps), name, chunks, meta=x._meta)


def _placed(starts: list[int], n: int) -> tuple[list[int], tuple[int, ...]]:
    """Along one axis of the tiles side by side (:func:`_tiles`): where each of the ``n``
    blocks is, and where the halo chunks beside each tile are (``starts``: :func:`_spans`)."""
    at: list[int] = []
    halo: list[int] = []
    for s0, s1 in itertools.pairwise(starts):
        if s0 > 0:
            halo.append(len(at) + len(halo))
        at.extend(range(len(at) + len(halo), len(at) + len(halo) + s1 - s0))
        if s1 < n:
            halo.append(len(at) + len(halo))
    return at, tuple(halo)


def _picked(mapped: da.Array, rows: list[int], cols: list[int], chunks: tuple) -> da.Array:
    """The blocks of ``mapped`` at ``rows`` x ``cols`` (its last two axes), in one layer."""
    name = f"picked-{tokenize(mapped.name, rows, cols)}"
    layer = {}
    for lead in itertools.product(*map(range, mapped.numblocks[:-2])):
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                layer[(name, *lead, i, j)] = Alias((name, *lead, i, j), (mapped.name, *lead, r, c))
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[mapped])
    return da.Array(graph, name, chunks, meta=mapped._meta)


def _spans(chunks: tuple[int, ...], halo: int, side: int) -> tuple[list[int], list]:
    """The first chunk of each of a tile's sides along one axis (about ``side`` px, at least
    two chunks; one where the axis has no more or no halo), the number of chunks
    last, and each side's pixels, the halo beside it included."""
    per = max(2, round(side * len(chunks) / max(sum(chunks), 1)))
    if len(chunks) <= per or not halo:
        per = len(chunks)
    edges = np.cumsum((0, *chunks)).tolist()
    starts = list(range(0, len(chunks), per))
    bounds = [(max(edges[b] - halo, 0), min(edges[min(b + per, len(chunks))] + halo, edges[-1]))
              for b in starts]  # fmt: skip
    return [*starts, len(chunks)], bounds


def banded_map(func, x: da.Array, depth: dict[int, int], args: list, *, chunks: tuple,
               after: da.Array | None = None, unit: int = 1,
               **kwargs: Any) -> da.Array:  # fmt: skip
    """``map_blocks(func, overlap(bind(x, after), depth), *args, chunks=chunks, ...)``, built
    in tiles of blocks about :data:`BAND_WIDTH` px wide and high, each reading its own copy of
    its blocks and the halo around them; never less high than ``unit``, the input's own chunks'
    height (a chunk taller than a tile, say one chunk of a whole NumPy image, read once a band
    as before, not once a tile). The tiles lie side by side in one array, each with its halo
    chunks: ``func`` takes ``block_id``, ``grid`` (the blocks along y and x) and ``skip``, the
    rows and columns of those halo chunks (fused as nothing, cropped as a neighbour's halo is,
    and dropped)."""
    ys, xs = x.ndim - 2, x.ndim - 1
    row_starts, row_bounds = _spans(x.chunks[ys], depth[ys], max(BAND_WIDTH, unit))
    col_starts, col_bounds = _spans(x.chunks[xs], depth[xs], BAND_WIDTH)
    tiles = None
    if (len(row_bounds) > 1 or len(col_bounds) > 1) and BANDS:
        seed = tokenize(x, depth, row_starts, col_starts, getattr(after, "name", None))
        tiles = _tiles(x, row_bounds, col_bounds, after, seed)
    if tiles is None:
        # Seeded by the minimums' name: bind's own seed is random, and fuse() of the same
        # input twice was two graphs (computed twice in one dask.compute)
        bound = overlap(x if after is None else bind(x, after, seed=after.name), depth)
        return da.map_blocks(func, bound, *args, chunks=chunks, grid=bound.numblocks[-2:],
                             **kwargs)  # fmt: skip
    rows, halo_rows = _placed(row_starts, len(x.chunks[ys]))
    cols, halo_cols = _placed(col_starts, len(x.chunks[xs]))
    # the halo rows' and columns' outputs: as deep as the halo (the layers), or one element
    # (the first pass's statistics)
    pads = [depth[ax] if sum(chunks[ax]) == x.shape[ax] else 1 for ax in (ys, xs)]
    own = []
    for ax, at, pad in ((ys, rows, pads[0]), (xs, cols, pads[1])):
        sides = [pad] * (len(at) + len(halo_rows if ax == ys else halo_cols))
        for k, t in enumerate(at):
            sides[t] = chunks[ax][k]
        own.append(tuple(sides))
    mapped = da.map_blocks(func, overlap(tiles, depth), *args, chunks=(*chunks[:-2], *own),
                           grid=tiles.numblocks[-2:], skip=(halo_rows, halo_cols),
                           **kwargs)  # fmt: skip
    return _picked(mapped, rows, cols, chunks)
