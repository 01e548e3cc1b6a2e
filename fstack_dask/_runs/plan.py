"""Planning a run: which blocks, how large, in which order, and how much memory that takes.

Everything here is arithmetic on shapes (no data, no dask, no stores), and every plan is
computed lazily: iterating over the blocks of a 10^6 x 10^6 image holds one block at a time.
Every search (block size, strip width, the smallest divisor of a unit) is a bisection, so
planning costs O(log) in the image size and the unit size.

**Blocks.** A block is a y/x rectangle of one image (one index of every batch axis, and of the
channel axis unless the channels are fused together as RGB). Its size is a whole multiple of
the source's read unit (chunk or shard) along y and x when one fits the memory budget (so
every unit is decoded about once and shared by the blocks that read it), else an even
divisor of the unit.

**Order.** Blocks run strip by strip (``strip`` blocks wide), row by row inside a strip:
a unit is read by the blocks of two consecutive rows of one strip, so the units that must be
kept are about two rows of a strip, whatever the image size.

**Memory.** One task holds its haloed block and the kernel's work arrays
(``task_bytes``); a process also holds its share of decoded units (``cache_bytes``). Both
are chosen so that ``workers x memory_per_task`` bounds a process, whatever the image.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

from .._layout import Layout
from .._sources.fetch import BlockRegion

__all__ = ["Plan", "make_plan"]

MIN_CACHE_FRACTION = 0.25  # of the budget kept for decoded units when blocks are large


def _groups(shape: tuple[int, ...], unit: tuple[int, ...]) -> Iterator[tuple[tuple[int, int], ...]]:
    """The unit-sized ranges of every lead axis, as ``itertools.product`` orders them.

    Generated, not listed: a batch axis of a billion time points must not be materialised
    before the first block runs.
    """
    if not shape:
        yield ()
        return
    n, size = shape[0], unit[0]
    for s in range(0, n, size):
        for rest in _groups(shape[1:], unit[1:]):
            yield ((s, min(s + size, n)), *rest)


@dataclass(frozen=True)
class Plan:
    """The blocks of a run and their order (see the module docstring)."""

    layout: Layout
    block: tuple[int, int]
    halo: int
    strip: int  # blocks per strip along x
    unit_lead: tuple[int, ...]  # the source's unit size along each lead axis

    @property
    def grid(self) -> tuple[int, int]:
        (ny, nx), (by, bx) = self.layout.shape_yx, self.block
        return math.ceil(ny / by), math.ceil(nx / bx)

    @property
    def n_images(self) -> int:
        return math.prod(self.layout.lead_shape)

    @property
    def n_blocks(self) -> int:
        return self.n_images * math.prod(self.grid)

    def blocks(self) -> Iterator[tuple[int, ...]]:
        """Every block, ``(lead indices..., j, i)``, in the order that reuses units.

        Lead indices that share a source unit (e.g. a chunk of 10 time points) are
        innermost, so their blocks read the unit while it is held.
        """
        ny, nx = self.grid
        for group in _groups(self.layout.lead_shape, self.unit_lead):
            for s0 in range(0, nx, self.strip):
                for j in range(ny):
                    for i in range(s0, min(s0 + self.strip, nx)):
                        for lead in itertools.product(*[range(a, b) for a, b in group]):
                            yield (*lead, j, i)

    def core(self, block: tuple[int, ...]) -> tuple[tuple[int, int], tuple[int, int]]:
        """The block's own y and x ranges (what it writes)."""
        j, i = block[-2:]
        (ny, nx), (by, bx) = self.layout.shape_yx, self.block
        return (j * by, min((j + 1) * by, ny)), (i * bx, min((i + 1) * bx, nx))

    def region(self, block: tuple[int, ...]) -> BlockRegion:
        """What the block reads: its core with the halo, clipped to the image."""
        (y0, y1), (x0, x1) = self.core(block)
        ny, nx = self.layout.shape_yx
        h = self.halo
        lead = tuple(zip(self.layout.lead_axes, (int(k) for k in block[:-2]), strict=True))
        return BlockRegion(
            lead,
            (max(0, y0 - h), min(ny, y1 + h)),
            (max(0, x0 - h), min(nx, x1 + h)),
            self.layout.rgb,
        )

    @staticmethod
    def name(block: tuple[int, ...]) -> str:
        """The block's marker name, e.g. ``"0_3_5"``."""
        return "_".join(str(int(k)) for k in block)

    def blocks_reading(self, y: tuple[int, int], x: tuple[int, int]) -> tuple[range, range]:
        """Block rows and columns whose haloed reads intersect the y/x ranges."""
        (by, bx), h = self.block, self.halo
        ny, nx = self.grid
        rows = range(max(0, (y[0] - h) // by), min(ny, (y[1] - 1 + h) // by + 1))
        cols = range(max(0, (x[0] - h) // bx), min(nx, (x[1] - 1 + h) // bx + 1))
        return rows, cols


# ---------------------------------------------------------------------------- choosing


def _largest(fits, hi: int) -> int:
    """Largest k in [1, hi] with fits(k) (fits is monotonic), or 0 if none."""
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _divided(n: int, unit: int, d: int) -> int:
    """A unit split into ``d`` even parts, clipped to the image: never grows with ``d``."""
    return min(n, -(-unit // d))


def _smallest(n: int, unit: int, halo: int) -> int:
    """The smallest block side :func:`_choose_block` tries along one axis.

    The last of the divisors ``d = 2, 3, ...`` of the unit whose part is still at least
    ``max(2 * halo, 16)`` px (the unit itself if none is), found by bisection: a unit can be
    as large as the image.
    """
    floor = max(2 * halo, 16)
    # k = d - 1 over [1, unit - 1]; parts shrink as d grows, so fits is true up to a point
    k = _largest(lambda k: _divided(n, unit, k + 1) >= floor, unit - 1)
    return _divided(n, unit, k + 1) if k else min(unit, n)


def _choose_block(ny, nx, uy, ux, halo, fits) -> tuple[int, int] | None:
    """The largest square-ish block of whole units that fits; else an even divisor of a unit.

    O(log) evaluations of ``fits``: planning a 10^6 x 10^6 image is instant.
    """
    ky_max, kx_max = math.ceil(ny / uy), math.ceil(nx / ux)
    k = _largest(lambda k: fits((min(k * uy, ny), min(k * ux, nx))), max(ky_max, kx_max))
    if k:
        # grow the other side alone where one side already spans the image
        by, bx = min(k * uy, ny), min(k * ux, nx)
        if by >= ny and kx_max > k:
            bx = min(nx, _largest(lambda m: fits((by, m * ux)), kx_max) * ux)
        elif bx >= nx and ky_max > k:
            by = min(ny, _largest(lambda m: fits((m * uy, bx)), ky_max) * uy)
        return by, bx

    # not even one unit fits: split units evenly (each unit is still decoded once and
    # shared by its blocks through the cache). The first divisor d = 2, 3, ... that fits,
    # by bisection: blocks shrink as d grows, so fits turns true once and stays true.
    def split(d: int) -> tuple[int, int]:
        return _divided(ny, uy, d), _divided(nx, ux, d)

    top = max(uy, ux)
    if top < 2 or not fits(split(top)):
        return None
    d = top - _largest(lambda k: fits(split(top - k + 1)), top - 1) + 1
    # A divisor that divides the unit exactly, if one is near (at most twice d): then halo
    # exchange runs by cells, each unit decoded once; a unit of 2048 split in 3 (683 px)
    # went through the unit cache, 5-7 x the stored bytes decoded (an adversarial run).
    exact = [e for e in range(d, min(2 * d, top) + 1) if uy % e == 0 and ux % e == 0]
    if exact and max(split(exact[0])) >= max(2 * halo, 16):
        d = exact[0]
    by, bx = split(d)
    # the divisors before d were all too large, so d is reached unless it is too small
    return (by, bx) if max(by, bx) >= max(2 * halo, 16) else None


def make_plan(
    layout: Layout,
    *,
    unit_shape: dict[str, int],
    halo: int,
    workers: int,
    memory_per_task: int,
    task_bytes,
    unit_bytes: int,
    block: tuple[int, int] | None = None,
    processes: int = 1,
) -> tuple[Plan, int]:
    """Choose the block size and strip width; return the plan and the cache's byte budget.

    Parameters
    ----------
    layout : Layout
    unit_shape : dict
        The source's read unit per axis letter.
    halo : int
        Pixels of context each block reads beyond its edges.
    workers : int
        Tasks that run at once in one process.
    memory_per_task : int
        Bytes per task; a process may use ``workers x memory_per_task``.
    task_bytes : callable
        ``task_bytes((by, bx))``: what a task computing a block of that size holds.
    unit_bytes : int
        Bytes of one decoded read unit (all planes).
    block : (int, int), optional
        A block size chosen by the user (it is also the output's chunk size).
    processes : int
        Processes that share the work without sharing a cache (worker processes, cluster
        workers): each gets strips of its own, so strips are at most 1/processes of the width.

    Raises
    ------
    ValueError
        If not even the smallest block fits ``memory_per_task``.
    """
    ny, nx = layout.shape_yx
    uy, ux = min(unit_shape["y"], ny), min(unit_shape["x"], nx)
    if block is None:
        budget = memory_per_task * (1 - MIN_CACHE_FRACTION)
        chosen = _choose_block(ny, nx, uy, ux, halo, lambda b: task_bytes(b) <= budget)
        if chosen is None:
            # The smallest block actually considered (an even divisor of the source's unit),
            # so that the size suggested below is one that works.
            smallest = (_smallest(ny, uy, halo), _smallest(nx, ux, halo))
            need = math.ceil(task_bytes(smallest) / (1 - MIN_CACHE_FRACTION))
            raise ValueError(
                f"memory_per_task={memory_per_task} bytes cannot hold the smallest block "
                f"({smallest[0]} x {smallest[1]} px with a {halo} px halo, "
                f"{layout.n_planes} planes); give at least {need} bytes"
            )
        block = _enough_blocks(layout, chosen, (uy, ux), workers)
    by, bx = block
    cache = max(0, workers * memory_per_task - workers * task_bytes(block))
    # A strip's units for two rows of blocks (plus the halo's neighbours) must fit the cache.
    unit_rows = 2 * math.ceil(by / uy) + 2
    # the widest strip (at most the image) whose units fit, else one block; bisection, as
    # a strip's units only grow with its width
    strip = max(
        1,
        _largest(
            lambda s: unit_rows * (math.ceil(s * bx / ux) + 2) * unit_bytes <= cache,
            max(1, math.ceil(nx / bx)),
        ),
    )
    if processes > 1:
        strip = min(strip, math.ceil(math.ceil(nx / bx) / processes))
    unit_lead = tuple(unit_shape.get(a, 1) for a in layout.lead_axes)
    return Plan(layout, (by, bx), halo, strip, unit_lead), cache


def _enough_blocks(
    layout: Layout, block: tuple[int, int], unit: tuple[int, int], workers: int
) -> tuple[int, int]:
    """Smaller blocks (still unit multiples) when there are too few to keep every worker busy."""
    ny, nx = layout.shape_yx
    by, bx = block
    images = math.prod(layout.lead_shape)
    while images * math.ceil(ny / by) * math.ceil(nx / bx) < 2 * workers:
        if by >= bx and by > unit[0]:
            by = max(unit[0], (by // unit[0] + 1) // 2 * unit[0]) if by > unit[0] else by
        elif bx > unit[1]:
            bx = max(unit[1], (bx // unit[1] + 1) // 2 * unit[1])
        else:
            break
    return by, bx
