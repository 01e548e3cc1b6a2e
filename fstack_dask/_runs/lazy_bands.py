"""The lazy graph (:mod:`.lazy_layers`) in bands of block columns, each band a subgraph of its own.

One overlap over the whole image held about a row of input chunks: dask's order goes row by
row, and a chunk read for the halo of the block above it waits, held, for its own block, so
the scheduler's memory grew with the image's width (21 x 8192^2 uint16: 1116 MiB peak against
495 at 2048^2). In bands of a few block columns, each band reads its own copy of its columns
and of the halo columns beside them (a neighbouring chunk column decoded once more), so no
chunk is shared between bands and a chunk waits at most for a row of its own band. The blocks
are the same pixels, cropped the same way: the same bits.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.core import flatten
from dask.graph_manipulation import bind
from dask.highlevelgraph import HighLevelGraph

from .lazy_overlap import overlap

try:  # dask's task spec (2024.12 to 2026.8 at least): without it, one overlap, as before
    from dask._task_spec import Task, TaskRef, convert_legacy_graph
except ImportError:  # pragma: no cover - a dask that moved them
    convert_legacy_graph = None
# Whether this dask lets a graph go in bands (an older one gets one overlap, as before)
BANDS = convert_legacy_graph is not None

__all__ = ["BAND_WIDTH", "banded_map"]

# Pixels a band spans, at least two block columns: 21 x 2048 x 16384 uint16 in 512-px blocks,
# to_zarr on 2 threads, peaked at 557-578 MiB in bands of 2048 px, 618-652 in bands of 4096 and
# 873-932 in one graph (482-524 at 2048 wide), decoding each chunk 1.44, 1.19 and 1.0 times a
# pass (benchmarks/RESULTS.md): within 1.3x of the narrow image at a fifth more decodes
BAND_WIDTH = 4096


def _renamed(key, suffix: str):
    return (f"{key[0]}-{suffix}", *key[1:]) if isinstance(key, tuple) else f"{key}-{suffix}"


def _after(value, *_):
    return value


def _own_copies(x: da.Array, bounds: list[tuple[int, int]], after, seed: str):
    """``x[..., a:b]`` for each of ``bounds``, each computed by tasks of its own (renamed), so
    that no band holds a chunk for another, their roots run only after ``after`` (the image
    minimums: the fusion's reads wait for them, never held for them). None where the copies
    would together recompute more than the input's graph twice over (columns that depend on
    the whole image, say a global normalisation: one graph, as before, rather than a
    recomputation per band)."""
    parts = [x[..., a:b] for a, b in bounds]
    waits = () if after is None else tuple(TaskRef(k) for k in flatten(after.__dask_keys__()))
    deps = [] if after is None else [after]
    hlg = HighLevelGraph.merge(*(part.__dask_graph__() for part in parts))
    graph = convert_legacy_graph(dict(hlg))  # the walk below culls (hlg.cull lost keys)
    copies, total = [], 0
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
        # one task per band waits for the minimums, its reads for it: a read waiting for each
        # image's minimum was an edge per read per image, quadratic in a batch axis's length
        gate = f"minimums-{suffix}"
        layer = {gate: Task(gate, _after, None, *waits)} if waits else {}
        for key, node in sub.items():
            node = node.substitute(names, key=names[key])
            if waits and not node.dependencies:
                node = Task(names[key], _after, node, TaskRef(gate))
            layer[names[key]] = node
        name = _renamed(part.name, suffix)
        band_graph = HighLevelGraph.from_collections(name, layer, dependencies=deps)
        copies.append(da.Array(band_graph, name, part.chunks, meta=part._meta))
    if total > 2 * len(graph) + 2 * len(parts):
        return None
    return copies


def banded_map(func, x: da.Array, depth: dict[int, int], args: list, *, chunks: tuple,
               after: da.Array | None = None, **kwargs: Any) -> da.Array:  # fmt: skip
    """``map_blocks(func, overlap(bind(x, after), depth), *args, chunks=chunks, ...)``, built
    in bands of block columns about :data:`BAND_WIDTH` px wide, each reading its own copy of
    its columns and the halo beside them. ``func`` takes ``context``: whether its band's left
    and right sides carry a halo beyond its columns (cropped as a neighbour's is)."""
    ax = x.ndim - 1
    cols = x.chunks[-1]
    halo = depth[ax]
    band_columns = max(2, round(BAND_WIDTH * len(cols) / max(sum(cols), 1)))
    copies = None
    if len(cols) > band_columns and halo and BANDS:
        edges = np.cumsum((0, *cols)).tolist()
        starts = list(range(0, len(cols), band_columns))
        bounds = [(max(edges[b] - halo, 0), min(edges[min(b + band_columns, len(cols))] + halo,
                   edges[-1])) for b in starts]  # fmt: skip
        copies = _own_copies(
            x, bounds, after, tokenize(x, depth, band_columns, getattr(after, "name", None))
        )
    if copies is None:
        # Seeded by the minimums' name: bind's own seed is random, and fuse() of the same
        # input twice was two graphs (computed twice in one dask.compute)
        bound = x if after is None else bind(x, after, seed=after.name)
        return da.map_blocks(func, overlap(bound, depth), *args, chunks=chunks, **kwargs)
    bands = []
    for b0, band in zip(starts, copies, strict=True):
        b1 = min(b0 + band_columns, len(cols))
        left, right = int(b0 > 0), int(b1 < len(cols))
        # the halo columns' outputs, dropped: as wide as the halo (the layers), or one
        # element (the first pass's statistics)
        pad = halo if sum(chunks[-1]) == sum(cols) else 1
        own = (pad,) * left + chunks[-1][b0:b1] + (pad,) * right
        fused = da.map_blocks(
            func,
            overlap(band, depth),  # chunks: (halo, the band's columns..., halo)
            *args,
            chunks=chunks[:-1] + (own,),
            skip=(bool(left), bool(right)),
            **kwargs,
        )
        bands.append(fused[..., left * pad : fused.shape[-1] - right * pad])
    return da.concatenate(bands, axis=-1)
