"""How a run reads a sharded source: by whole shards, or by the chunks inside them.

Zarr reads and decodes a shard's chunks alone, so a block smaller than a shard needs only its
own chunks. Read by shards, halo exchange holds whole decoded shards (107 MB for 1024^2 x 51
uint16), which leaves room for waves a few shards wide, and each wave decodes the column
beside it again: 1.75 x the 4096^2 benchmark stack on 2 threads at the default memory,
against 1.12 x read by its chunks (RESULTS "Shards read by their chunks"). Blocks of whole
shards read each shard once, in fewer requests; so do blocks for which reading by chunks
would not decode less (blocks hardly wider than the halo, whose bands then take the memory).

Only reads change: the blocks, the output and its bits are the same either way, so a run
decides for its own workers (:func:`read_by`), and a resume may decide otherwise.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .plan import make_plan
from .waves import decoding

Fusion = Any  # a .fusion.Fusion (which imports this module)

__all__ = ["auto_block", "read_by", "reading"]


def auto_block(fusion: Fusion, workers: int) -> tuple[int, int]:
    """The block for the fusion's memory: whole shards where one fits a task, else whole
    chunks of a shard where one fits (else their even divisors); see ``make_plan``."""
    if fusion.source.inner_shape is not None:
        try:
            block = _planned_block(fusion, workers)
        except ValueError:  # not even a shard's even divisor fits: its chunks may
            block = None
        if block is not None and _whole_shards(fusion, block):
            return block
        fusion = reading(fusion, by_inner_chunks=True)
    return _planned_block(fusion, workers)


def read_by(fusion: Fusion, workers: int, processes: int = 1) -> Fusion:
    """The fusion reading a sharded source by its chunks where halo exchange would decode
    less that way on ``workers`` tasks in each of ``processes`` processes, else by shards."""
    if fusion.source.inner_shape is None or _whole_shards(fusion, fusion.block):
        return reading(fusion, by_inner_chunks=False)
    shards, chunks = (
        _decoded(reading(fusion, by_inner_chunks=b), workers, processes) for b in (False, True)
    )
    if chunks is None or shards is None:  # what halo exchange can run, else smaller units
        return reading(fusion, by_inner_chunks=shards is None)
    return reading(fusion, by_inner_chunks=chunks < shards)


def reading(fusion: Fusion, *, by_inner_chunks: bool) -> Fusion:
    """The fusion reading its source by shards, or by their chunks (its ``unit``)."""
    source = replace(fusion.source, by_inner_chunks=by_inner_chunks)
    unit = dict(zip(source.axes, source.read_shape, strict=True))
    lay = fusion.layout
    unit_bytes = source.dtype.itemsize * lay.n_channels * lay.n_planes * unit["y"] * unit["x"]
    return replace(fusion, source=source, unit=unit, unit_bytes=unit_bytes)


def _planned_block(fusion: Fusion, workers: int) -> tuple[int, int]:
    plan, _ = make_plan(
        fusion.layout, unit_shape=fusion.unit, halo=fusion.halo, workers=workers,
        memory_per_task=fusion.memory_per_task, task_bytes=fusion.task_bytes,
        unit_bytes=fusion.unit_bytes,
    )  # fmt: skip
    return plan.block


def _whole_shards(fusion: Fusion, block: tuple[int, int]) -> bool:
    shard = dict(zip(fusion.source.axes, fusion.source.unit_shape, strict=True))
    yx = zip("yx", block, fusion.layout.shape_yx, strict=True)
    return all(b % shard[a] == 0 or b >= n for a, b, n in yx)


def _decoded(fusion: Fusion, workers: int, processes: int) -> float | None:
    """About how many times halo exchange would decode the stored bytes (None where it does
    not apply): its waves share every process's cache, as the run's do."""
    plan, cache = fusion.plan(workers, processes)
    unit = (fusion.unit["y"], fusion.unit["x"])
    found = decoding(plan, unit, cache * processes, fusion.source.dtype.itemsize)
    return None if found is None else found.ratio
