"""The lazy graph's halo: dask's own overlap (``dask.array.overlap``, ``boundary="none"``),
but with its halo strips cut as copies.

Dask cuts each chunk's strips for its neighbours' blocks as ``getitem`` views, and a view
of 13 rows keeps its whole chunk (11 MiB for 21 x 512^2 uint16) alive until the neighbour's
block runs: in dask's order about three rows of chunks wait at once, so the scheduler held
memory that grew with the image's width (152 MiB at 21 x 4096^2 uint8, 512-px blocks). A copied
strip lets the chunk go once its own block and its strips are taken. The same pieces, the
same concatenation: the same bits.
"""

from __future__ import annotations

import operator

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

try:  # dask's private layer (2024.1 to 2026.8 at least): without it, dask's own overlap
    from dask.array.overlap import _overlap_internal_chunks
    from dask.layers import ArrayOverlapLayer
except ImportError:  # pragma: no cover - a dask that moved them: views, as before
    ArrayOverlapLayer = None

__all__ = ["copied_strip", "overlap"]


def copied_strip(chunk: np.ndarray, index: tuple) -> np.ndarray:
    """``chunk[index]`` as an array of its own (never a view that keeps ``chunk`` alive)."""
    return np.array(chunk[index], copy=True)


class _CopyingOverlapLayer(ArrayOverlapLayer or object):  # type: ignore[misc]
    """Dask's overlap layer (built lazily, as dask's is), its ``getitem`` strips copied."""

    def _construct_graph(self, deserializing=False):
        dsk = super()._construct_graph(deserializing)
        return {
            key: (copied_strip, *task[1:])
            if type(task) is tuple and task and task[0] is operator.getitem
            else task
            for key, task in dsk.items()
        }


def overlap(x: da.Array, depth: dict[int, int]) -> da.Array:
    """``dask.array.overlap.overlap(x, depth, boundary="none", allow_rechunk=False)`` with
    copied strips; ``x``'s chunks must be at least ``depth`` deep (``merge_small``)."""
    axes = {ax: d for ax, d in depth.items() if d}
    if not axes:
        return x
    if ArrayOverlapLayer is None:
        return da.overlap.overlap(x, depth=axes, boundary="none", allow_rechunk=False)
    token = tokenize(x, axes, "copied strips")
    name = f"overlap-{token}"
    layer = _CopyingOverlapLayer(
        name=x.name, axes=axes, chunks=x.chunks, numblocks=x.numblocks, token=token
    )
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[x])
    return da.Array(graph, name, _overlap_internal_chunks(x.chunks, axes), meta=x)
