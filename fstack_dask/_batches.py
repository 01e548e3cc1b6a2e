"""Spatial batches of blocks, so that memory does not grow with the image.

A haloed block needs its eight neighbours' source chunks. Whatever order a
scheduler picks over one graph of the whole image, some chunks must be read
long before their own block is computed (about two rows of chunks with a
row-major order), so the memory held grows with the image's width. Computing
the blocks in k x k batches, one batch after the other, holds at most
``(k + 2)^2`` source chunks: memory is bounded by the batch, whatever the image
size. The price is that a batch's ring of neighbour chunks is read again by
the next batch; a stack whose chunks all fit the budget is one batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

__all__ = ["plan_batches"]


def _split(n: int, k: int) -> list[range]:
    """``n`` blocks in ``ceil(n / k)`` runs as equal as possible."""
    parts = math.ceil(n / k)
    size = math.ceil(n / parts)
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def _most_reads(runs: list[range], n: int) -> int:
    """Most source chunks one run reads: itself plus one neighbour each side."""
    return max(min(r.stop + 1, n) - max(r.start - 1, 0) for r in runs)


def plan_batches(
    numblocks: tuple[int, int], block_bytes: int, budget: int
) -> list[tuple[range, range]]:
    """Split a ``numblocks`` grid into square-ish batches whose reads fit ``budget``.

    Parameters
    ----------
    numblocks : (int, int)
        Number of blocks along y and x.
    block_bytes : int
        Bytes of the source data one block reads (its own chunk(s)).
    budget : int
        Bytes of source data one batch may hold.

    Returns
    -------
    list of (range, range)
        Block-index ranges along y and x, covering the grid once, row-major.

    Examples
    --------
    >>> plan_batches((4, 4), 10, 1000)  # everything fits: one batch
    [(range(0, 4), range(0, 4))]
    >>> [(r.start, c.start) for r, c in plan_batches((4, 4), 10, 100)]
    [(0, 0), (0, 2), (2, 0), (2, 2)]
    """
    ny, nx = numblocks
    allowed = max(1, budget // max(1, block_bytes))
    for k in range(max(ny, nx), 0, -1):
        rows, cols = _split(ny, min(k, ny)), _split(nx, min(k, nx))
        if _most_reads(rows, ny) * _most_reads(cols, nx) <= allowed:
            break
    return [(r, c) for r in rows for c in cols]


def batch_of(index_yx: tuple[int, int], batches: list[tuple[range, range]]) -> int:
    """Index of the batch holding block ``index_yx``."""
    for i, (rows, cols) in enumerate(batches):
        if index_yx[0] in rows and index_yx[1] in cols:
            return i
    raise ValueError(f"block {index_yx} is in no batch")


def iter_batches(batches: list[tuple[range, range]]) -> Iterator[list[tuple[int, int]]]:
    """The blocks of each batch, row-major."""
    for rows, cols in batches:
        yield [(y, x) for y in rows for x in cols]
