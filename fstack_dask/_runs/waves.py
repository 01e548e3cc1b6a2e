"""Halo exchange's plan (:mod:`.exchange`): its grid (the blocks, or cells of one unit), which
way its waves go over the image, the waves of columns an image is fused in, its row segments,
and how far ahead a strip decodes; from the plan and the workers' memory alone, nothing read.

The driver and the functions here speak of columns and rows of a grid. Where waves across the
image decode less (:func:`oriented`), that grid is the plan's seen across (:class:`Across`):
its "columns" are the image's rows, and :func:`placed` turns its blocks back into the plan's.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from .plan import Plan

Block = tuple[int, ...]

__all__ = [
    "Across",
    "Decoding",
    "Wave",
    "block_ranges",
    "blocks_of",
    "cell_of",
    "cells",
    "cells_done",
    "core_size",
    "decoding",
    "depth",
    "exchange_grid",
    "grid_of",
    "handed_band",
    "least_memory",
    "oriented",
    "placed",
    "row_bytes",
    "segments",
    "segments_in_memory",
    "wave_width",
    "waves",
]


@dataclass
class Wave:
    """Columns ``cols`` and rows ``fuse_rows`` of one image fused together, decoded with a
    column and a row on each side (``decode_cols``, ``rows``)."""

    lead: tuple[int, ...]
    cols: tuple[int, int]
    decode_cols: tuple[int, int]
    rows: tuple[int, int]
    carried: bool = False  # the wave before it hands over its last column's right bands
    fuse_rows: tuple[int, int] | None = None  # None: all of ``rows``
    segment: tuple[int, int] = (0, 1)  # (index, count) of its image's row segments
    span: tuple[int, int] | None = None  # the rows all its image's segments fuse

    def __post_init__(self) -> None:
        if self.fuse_rows is None:
            self.fuse_rows = self.rows
        if self.span is None:
            self.span = self.fuse_rows

    @property
    def upward(self) -> bool:
        """Whether its strips go up its rows (even segments of several; see the module
        docstring)."""
        return self.segment[1] > 1 and self.segment[0] % 2 == 0

    def order(self) -> list[int]:
        """Its rows in the order its strips decode and fuse them."""
        rows = list(range(*self.rows))
        return rows[::-1] if self.upward else rows

    def borrowed(self, row: int) -> bool:
        """Whether ``row`` is decoded by the next segment, which lends its bands."""
        return not self.fuse_rows[0] <= row < self.fuse_rows[1] and (
            self.span[0] <= row < self.span[1]
        )

    def lent(self) -> dict[int, list[str]]:
        """Its rows whose bands it lends, each with the side (``"up"``, ``"down"``) of the
        segment that borrows it (a segment of one row lends it to both)."""
        (f0, f1), (s0, s1) = self.fuse_rows, self.span
        found: dict[int, list[str]] = {}
        for row, other, side in ((f0, f0 - 1, "up"), (f1 - 1, f1, "down")):
            if s0 <= other < s1:
                found.setdefault(row, []).append(side)
        return found

    def lender(self, row: int) -> str:
        """The side its border row ``row`` was lent to it from (see :meth:`lent`)."""
        return "up" if row >= self.fuse_rows[1] else "down"


def waves(
    plan: Plan | Across, done: set[str], width: int, segments: Callable[[], int] = lambda: 1
) -> Iterator[Wave]:
    """The waves of a run, lazily: per image (lead indices), columns in groups of
    ``width``, each with the rows that hold a block left to fuse (and one row around); each
    wave goes in ``segments()`` row segments (asked image by image: the workers may
    change), which share the bands the wave before handed over."""
    ny, nx = plan.grid
    width = max(1, min(width, nx))
    for lead in itertools.product(*[range(n) for n in plan.layout.lead_shape]):
        previous = None  # where the last wave's columns end
        for c0 in range(0, nx, width):
            c1 = min(nx, c0 + width)
            todo = [
                j for j in range(ny)
                if any(plan.name((*lead, j, i)) not in done for i in range(c0, c1))
            ]  # fmt: skip
            if not todo:
                continue
            r0, r1 = todo[0], todo[-1] + 1
            need = range(max(0, r0 - 1), min(ny, r1 + 1))
            # the wave before hands over its last column where it decoded every row needed:
            # rows it fused there (a block done before, with no neighbour to fuse in that
            # wave, is not decoded)
            carried = previous == c0 and all(
                plan.name((*lead, j, c0 - 1)) not in done for j in need
            )
            decode = (c0 if carried else max(0, c0 - 1), min(nx, c1 + 1))
            count = max(1, min(segments(), r1 - r0))
            for k in range(count):
                s0, s1 = r0 + (r1 - r0) * k // count, r0 + (r1 - r0) * (k + 1) // count
                rows = (max(0, s0 - 1), min(ny, s1 + 1))
                yield Wave(tuple(lead), (c0, c1), decode, rows, carried, fuse_rows=(s0, s1),
                           segment=(k, count), span=(r0, r1))  # fmt: skip
            previous = c1


def segments(plan: Plan | Across, width: int, capacity: int) -> int:
    """Row segments for a wave of ``width`` columns (or the whole image). A wave's strips go
    down its rows together, so its longest strip (in blocks) paces it: the fewest segments
    whose longest strip is within 3 % of the shortest possible (segments lend each other
    their border rows, so no row is decoded twice)."""
    ny, nx = plan.grid
    cols = min(width, nx)  # a wave's (narrower than the image where memory is short)
    # each segment needs a task slot of its own: more segments than slots run one after
    # another
    most = max(1, min(ny, capacity))

    def longest(k: int) -> int:
        strips = max(1, min(cols, capacity // k))
        return -(-cols // strips) * -(-ny // k)

    best = min(longest(k) for k in range(1, most + 1))
    return next(k for k in range(1, most + 1) if longest(k) <= 1.03 * best)


def segments_in_memory(plan: Plan | Across, width: int, capacity: int, depth: int) -> int:
    """:func:`segments`, no more than the memory holds: a segment holds two rows of its
    columns at least, where the wave's memory holds ``depth + 1`` (:func:`depth`)."""
    return min(max(1, (depth + 1) // 2), segments(plan, width, capacity))


def wave_width(plan: Plan | Across, budget: int, core_bytes: int) -> int:
    """Columns per wave: what two rows of cores and a row of bands take fits ``budget``
    bytes (the workers' memory left once their tasks are counted), at least one."""
    bands = _bands(plan, core_bytes)
    # a column holds the core being fused, the core below it, and the bands of the one above
    # (a held core's bands are views of it)
    per_column = 2 * core_bytes + bands
    # kept free: a core decoded for its bands only (the column beside the wave), and the
    # bands of a column (that one's, and those the wave before handed over)
    room = budget - core_bytes - 2 * bands
    return max(1, int(room // max(1, per_column)))


def core_size(plan: Plan, itemsize: int) -> int:
    """Bytes of one block's decoded core (all planes and channels) of ``plan``'s grid."""
    lay, (by, bx) = plan.layout, plan.block
    return lay.n_channels * lay.n_planes * by * bx * int(itemsize)


def depth(plan: Plan | Across, budget: int, core: int) -> int:
    """Rows a strip may decode ahead: as many as the wave's columns' cores fit, so that
    several of a strip's rows are fused at once where memory allows (many threads on a
    narrow image); at least one. A column holds its rows from the one being fused to the
    last decoded ahead (``depth + 1``, :func:`row_bytes` each)."""
    cols = min(plan.grid[1], wave_width(plan, budget, core) + 2)
    rows = int(budget / cols // max(1.0, row_bytes(plan, core))) - 1
    return max(1, min(rows, plan.grid[0]))


def row_bytes(plan: Plan | Across, core: int, *, fused: bool = True) -> float:
    """What a strip's column holds for each row it decodes ahead (:func:`depth`): the row's
    core and bands, and the bands of a row that its neighbour strips, up to ``depth`` rows
    behind, have still to read; a column decoded for its bands only (beside a wave) holds
    only bands."""
    return (core if fused else 0) + 2 * _bands(plan, core)


def least_memory(plan: Plan | Across, core: int) -> float:
    """The fewest bytes halo exchange runs in: a wave of one column, two rows of it, and of
    the column decoded on each side for its bands (:func:`row_bytes`)."""
    return 2 * (row_bytes(plan, core) + 2 * row_bytes(plan, core, fused=False))


def _bands(plan: Plan | Across, core: int) -> float:
    """Bytes of a core's four edge bands (``halo`` pixels wide)."""
    (by, bx), h = plan.block, plan.halo
    return core * 2 * (min(h, by) / by + min(h, bx) / bx)


# ------------------------------------------------------------------------------ cells


def cells(plan: Plan, unit_yx: tuple[int, int]) -> Plan | None:
    """The grid halo exchange decodes and fuses by: ``plan`` itself where its blocks are
    whole multiples of the source's read unit; where a block is an even divisor of the unit
    (large chunks, shards, many float planes), *cells* of one unit, each fused as the blocks
    that tile it, so that a unit is still decoded once, by one task; else None (the unit
    cache reads such blocks)."""
    (by, bx), (ny, nx) = plan.block, plan.layout.shape_yx
    uy, ux = min(unit_yx[0], ny), min(unit_yx[1], nx)

    def side(b: int, u: int, n: int) -> int | None:
        if b % u == 0 or b >= n:
            return b
        return u if u % b == 0 else None

    cy, cx = side(by, uy, ny), side(bx, ux, nx)
    if cy is None or cx is None:
        return None
    return plan if (cy, cx) == (by, bx) else dataclasses.replace(plan, block=(cy, cx))


def exchange_grid(
    plan: Plan, unit_yx: tuple[int, int], budget: float | None = None, itemsize: int = 1
) -> Plan | None:
    """:func:`cells`, where halo exchange can run the plan: its blocks whole multiples or
    even divisors of the read unit (so a core decodes only its own units), its cells at
    least a halo wide (so a halo ends in the neighbours' bands) and, where ``budget`` (bytes
    of the workers' memory beside their tasks) is given, room for its smallest wave
    (:func:`least_memory`); else None (the unit cache reads the blocks)."""
    grid = cells(plan, unit_yx)
    if grid is None or min(*grid.block, *plan.layout.shape_yx) < plan.halo:
        return None
    if budget is not None and budget < least_memory(grid, core_size(grid, itemsize)):
        return None
    return grid


class Decoding(NamedTuple):
    """How halo exchange would decode a plan (:func:`decoding`)."""

    grid: Plan  # the blocks, or cells of one unit (not seen across)
    width: int  # the waves' width, in columns (rows where ``across``)
    ratio: float  # about how many times the stored bytes are decoded
    across: bool  # waves go over the image's rows (:class:`Across`)


def decoding(plan: Plan, unit_yx: tuple[int, int], budget: int, itemsize: int) -> Decoding | None:
    """How halo exchange would run ``plan`` with ``budget`` bytes beside the tasks: its grid,
    which way and how wide its waves go (:func:`oriented`), and about how many times it
    decodes the stored bytes (each wave decodes the column beside it again:
    ``1 + (waves - 1) / columns``); None where exchange does not apply
    (:func:`exchange_grid`)."""
    grid = exchange_grid(plan, unit_yx, budget, itemsize)
    if grid is None:
        return None
    view = oriented(grid, budget, core_size(grid, itemsize))
    width, ratio = _times(view, budget, core_size(grid, itemsize))
    return Decoding(grid, width, ratio, isinstance(view, Across))


# ------------------------------------------------------------------------ which way


@dataclass(frozen=True)
class Across:
    """``plan``'s grid seen across: its rows are this view's columns, so that halo exchange's
    waves take groups of the image's rows and its strips go along them. Only what the driver
    asks of a grid; blocks are in this view's order (:func:`placed` gives the plan's)."""

    plan: Plan

    @property
    def grid(self) -> tuple[int, int]:
        ny, nx = self.plan.grid
        return nx, ny

    @property
    def block(self) -> tuple[int, int]:
        by, bx = self.plan.block
        return bx, by

    @property
    def halo(self) -> int:
        return self.plan.halo

    @property
    def layout(self) -> Any:
        return self.plan.layout

    def name(self, block: Block) -> str:
        return Plan.name(placed(self, block))


def placed(grid: Plan | Across, block: Block) -> Block:
    """A block of the driver's ``grid`` as the plan's (or its cells') block: the same, or
    with its row and column swapped where the grid is seen :class:`Across` (and back)."""
    if isinstance(grid, Across):
        *lead, a, b = block
        return (*lead, b, a)
    return block


def handed_band(grid: Plan | Across) -> str:
    """The band of its last column's blocks a wave hands to the next (which lies beside
    that column): their right band, or their bottom band across."""
    return "bottom" if isinstance(grid, Across) else "right"


def oriented(grid: Plan, budget: int, core: int) -> Plan | Across:
    """``grid`` as halo exchange's waves go over it: groups of its columns, each strip going
    down the rows; or, where that decodes less, :class:`Across`: groups of its rows, each strip
    going along them. Each wave decodes the column beside it again, so an image much wider than
    tall, with memory for waves narrower than it, decodes less across (32 x 8 blocks in waves
    of 4: 1 + 7 / 32 = 1.22 x the stored bytes down, 1 + 1 / 8 = 1.125 across). Ties go down
    the columns. ``core``: bytes of one decoded core."""
    across = Across(grid)
    return across if _times(across, budget, core)[1] < _times(grid, budget, core)[1] else grid


def _times(grid: Plan | Across, budget: int, core: int) -> tuple[int, float]:
    """Waves' width (in ``grid``'s columns) and about how many times they decode the image."""
    n = grid.grid[1]
    width = min(n, wave_width(grid, budget, core))
    return width, 1 + (-(-n // width) - 1) / n


def grid_of(job: Any) -> Plan:
    """The grid the cores are decoded by: the job's cells (whole units of several blocks
    each), else its plan's blocks."""
    return getattr(job, "cells", None) or job.plan


def blocks_of(job: Any, cell: Block) -> list[Block]:
    """The plan's blocks that tile a cell of :func:`grid_of` (the cell itself where the grid
    is the plan's)."""
    if grid_of(job) is job.plan:
        return [cell]
    rows, cols = block_ranges(job, cell)
    return [(*cell[:-2], j, i) for j in rows for i in cols]


def block_ranges(job: Any, cell: Block) -> tuple[range, range]:
    """The rows and columns of the plan's blocks in a cell of :func:`grid_of`."""
    (y0, y1), (x0, x1) = grid_of(job).core(cell)
    (by, bx), (ny, nx) = job.plan.block, job.plan.grid
    return range(y0 // by, min(ny, -(-y1 // by))), range(x0 // bx, min(nx, -(-x1 // bx)))


def cells_done(job: Any, done: set[str]) -> set[str]:
    """The names of the cells of :func:`grid_of` whose every block is in ``done``, counted
    from ``done``: listing every cell's blocks took hours before the first block of a run in
    blocks of 1 px (10^10 of them), on a fresh run too."""
    grid, plan = grid_of(job), job.plan
    bounds = (*plan.layout.lead_shape, *plan.grid)
    counts: dict[Block, int] = {}
    for name in done:
        parts = name.split("_")
        if len(parts) != len(bounds) or not all(p.isdigit() for p in parts):
            continue  # not one of this plan's blocks
        block = tuple(int(p) for p in parts)
        if plan.name(block) == name and all(k < n for k, n in zip(block, bounds, strict=True)):
            cell = cell_of(job, block)
            counts[cell] = counts.get(cell, 0) + 1
    return {
        grid.name(cell)
        for cell, n in counts.items()
        if n == math.prod(map(len, block_ranges(job, cell)))
    }


def cell_of(job: Any, block: Block) -> Block:
    grid, plan = grid_of(job), job.plan
    if grid is plan:
        return block
    (by, bx), (cy, cx) = plan.block, grid.block
    *lead, j, i = block
    return (*lead, j * by // cy, i * bx // cx)
