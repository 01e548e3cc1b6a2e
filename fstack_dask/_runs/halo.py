"""What a worker does in halo exchange (:mod:`.exchange`): decode cores, fuse blocks.

Where the grid is of cells (:func:`.exchange.cells`: units of several blocks), "block" below is
a cell for decoding, and a fuse fuses the blocks of its cells from the cells' cores.

**decode** (:func:`decode_rows`) reads each block's *core*, its own units, each decoded once,
and keeps it in this process's registry with its four edge bands (``halo`` pixels wide; views
of the core while it is held), returning the bands that blocks on other workers will need.
**fuse** (:func:`fuse_rows`) assembles each block's haloed samples from its core and its
neighbours' bands (the registry's, or those handed over), then fuses, writes and marks it
as :meth:`~.blocks.FuseJob.fuse_and_write` does. The samples are those a direct read of the
haloed region gives, so the output's bits are the same. What the registry lacks (a lost
worker's cores) is read from the store: only time is lost.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import SourceReadError, SourceValueError
from .._sources.fetch import BlockRegion, block_shape, fetch_block
from .._sources.unit_cache import count_decoded, decoded_by_this_thread
from . import allocator, fence
from .blocks import FuseJob, Outcome
from .plan import Plan
from .waves import cell_of, grid_of

__all__ = ["Bands", "decode_rows", "forget_run", "fuse_rows", "neighbours"]

Block = tuple[int, ...]


# --------------------------------------------------------------------- bands of a core


@dataclass(frozen=True)
class Bands:
    """The four edge bands of one block's core (``halo`` pixels wide, or the whole core
    where it is narrower), with the core's extent in the image; or why it could not be read."""

    y: tuple[int, int]
    x: tuple[int, int]
    top: np.ndarray | None = None
    bottom: np.ndarray | None = None
    left: np.ndarray | None = None
    right: np.ndarray | None = None
    error: BaseException | None = None

    @classmethod
    def of(
        cls, core: np.ndarray, y: tuple[int, int], x: tuple[int, int], halo: int, copy: bool
    ) -> Bands:
        """The bands of ``core``: views while the core is held anyway, else copies."""
        hy, hx = min(halo, y[1] - y[0]), min(halo, x[1] - x[0])
        bands = (core[..., :hy, :], core[..., -hy:, :], core[..., :, :hx], core[..., :, -hx:])
        return cls(y, x, *(np.array(b) if copy else b for b in bands))

    def copied(self) -> Bands:
        """The same bands, no longer views of the core (which is being let go)."""
        if self.error is not None or self.top is None:
            return self
        return Bands(self.y, self.x, *(np.array(b) for b in (self.top, self.bottom,
                                                              self.left, self.right)))  # fmt: skip

    def only(self, side: str) -> Bands:
        """Only the band on ``side`` (``"right"``, ``"bottom"``...), copied: all a block in
        the next wave needs of its neighbour in the wave before."""
        if self.error is not None:
            return self
        return Bands(self.y, self.x, **{side: np.array(getattr(self, side))})

    def pieces(self) -> Iterator[tuple[np.ndarray, tuple[int, int], tuple[int, int]]]:
        """Each band it has with the image rows and columns it holds."""
        (y0, y1), (x0, x1) = self.y, self.x
        extents = {
            "top": lambda p: ((y0, y0 + p.shape[-2]), (x0, x1)),
            "bottom": lambda p: ((y1 - p.shape[-2], y1), (x0, x1)),
            "left": lambda p: ((y0, y1), (x0, x0 + p.shape[-1])),
            "right": lambda p: ((y0, y1), (x1 - p.shape[-1], x1)),
        }
        for side, extent in extents.items():
            part = getattr(self, side)
            if part is not None:
                yield part, *extent(part)


def _paste(out: np.ndarray, region: BlockRegion, part: np.ndarray, y, x) -> tuple[int, int]:
    """Copy what of ``part`` (holding image rows ``y`` and columns ``x``) lies in the haloed
    ``region`` into ``out``; returns the pasted rows and columns (0, 0 if none)."""
    ys, ye = max(y[0], region.y[0]), min(y[1], region.y[1])
    xs, xe = max(x[0], region.x[0]), min(x[1], region.x[1])
    if ys >= ye or xs >= xe:
        return 0, 0
    out[..., ys - region.y[0] : ye - region.y[0], xs - region.x[0] : xe - region.x[0]] = part[
        ..., ys - y[0] : ye - y[0], xs - x[0] : xe - x[0]
    ]
    return ye - ys, xe - xs


def _paste_bands(out: np.ndarray, region: BlockRegion, bands: Bands) -> None:
    """Paste the part of a neighbour's core that the haloed region needs, from the one band
    that holds it all (a block's halo never reaches past its neighbours' bands)."""
    ys, ye = max(bands.y[0], region.y[0]), min(bands.y[1], region.y[1])
    xs, xe = max(bands.x[0], region.x[0]), min(bands.x[1], region.x[1])
    for part, y, x in bands.pieces():
        if y[0] <= ys and ye <= y[1] and x[0] <= xs and xe <= x[1]:
            _paste(out, region, part, y, x)
            return
    raise AssertionError(f"no band of {bands.y, bands.x} holds rows {ys, ye}, cols {xs, xe}")


# ------------------------------------------------------------- a worker's registry

_lock = threading.Lock()


@dataclass
class _Held:
    core: np.ndarray | None
    bands: Bands
    uses: int  # fuses on this worker still to read the bands (the block's own not counted)
    core_uses: int = 1  # fuses still to read the core (a cell's blocks go in several)

    def nbytes(self) -> int:
        if self.core is not None:
            return self.core.nbytes  # the bands are views of it
        return sum(p.nbytes for p, _, _ in self.bands.pieces()) if self.bands.error is None else 0


@dataclass
class _Counts:
    """One run's figures in this process: bytes decoded and seconds decoding, bytes held
    (cores and bands) now and at most."""

    decoded: int = 0
    seconds: float = 0.0
    held: int = 0
    peak: int = 0


_registry: dict[tuple[str, Block], _Held] = {}
_counts: dict[str, _Counts] = {}


def _keep(token: str, block: Block, held: _Held) -> None:
    with _lock:
        if fence.ended(token):  # a late decode of a forgotten run: kept for ever otherwise
            return
        counts = _counts.setdefault(token, _Counts())
        old = _registry.get((token, block))
        counts.held += held.nbytes() - (old.nbytes() if old is not None else 0)
        counts.peak = max(counts.peak, counts.held)
        _registry[(token, block)] = held


def _drop(token: str, block: Block, held: _Held, before: int) -> None:
    """Account for ``held`` having shrunk from ``before`` bytes; remove it once unused."""
    counts = _counts.setdefault(token, _Counts())
    if held.uses <= 0 and held.core is None:
        del _registry[(token, block)]
        counts.held -= before
    else:
        counts.held -= before - held.nbytes()


def _take_core(token: str, block: Block) -> np.ndarray | None:
    with _lock:
        held = _registry.get((token, block))
        if held is None:
            return None
        core = held.core
        held.core_uses -= 1
        if held.core_uses <= 0:  # its last fuse: let it go
            before = held.nbytes()
            held.core = None
            if held.uses > 0:  # neighbours still read the bands: they outlive the core
                held.bands = held.bands.copied()
            _drop(token, block, held, before)
        return core


def _take_bands(token: str, block: Block) -> Bands | None:
    with _lock:
        held = _registry.get((token, block))
        if held is None:
            return None
        before = held.nbytes()
        held.uses -= 1
        _drop(token, block, held, before)
        return held.bands


def forget_run(token: str) -> tuple[int, float, int]:
    """Drop what this process holds for a run (at its end); returns the bytes its decodes
    decoded, their seconds, and the most bytes of cores and bands it held at once."""
    fence.end(token)  # a late task of the run registers nothing more here
    with _lock:
        for key in [k for k in _registry if k[0] == token]:
            del _registry[key]
        counts = _counts.pop(token, _Counts())
    allocator.forget(token)
    return counts.decoded, counts.seconds, counts.peak


# ------------------------------------------------------------------- the two tasks


def _core_region(plan: Plan, block: Block) -> BlockRegion:
    (y0, y1), (x0, x1) = plan.core(block)
    lead = tuple(zip(plan.layout.lead_axes, (int(k) for k in block[:-2]), strict=True))
    return BlockRegion(lead, (y0, y1), (x0, x1), plan.layout.rgb)


def _read_core(job: FuseJob, block: Block, *, kept: bool = False) -> np.ndarray:
    """The block's core; one ``kept`` for later fuses in a mapping of its own, off the heap
    its thread's temporaries come from (:func:`.allocator.outside_heap`)."""
    source, _, _ = job.opened()
    region = _core_region(grid_of(job), block)
    out = None
    if kept and not source.in_memory:
        shape, dtype = block_shape(source, region), source.dtype.newbyteorder("=")
        out = allocator.outside_heap(shape, dtype, job.token)
    core = fetch_block(source, region, None, out=out)
    if not source.in_memory:
        count_decoded(core.nbytes)
    return core


def decode_rows(
    job: FuseJob,
    blocks: list[Block],
    keep_core: list[int],  # (True counts as 1)
    uses: list[int],
    export: list[bool | str],
    data: Any = None,
) -> dict[Block, Bands]:
    """Decode the cores of ``blocks`` (one strip's row); keep each core that this worker will
    fuse (``keep_core``: a count of the fuses that read it, or True for one) and each block's
    bands for ``uses`` fuses here; return the bands of the
    blocks that fuses on other workers read (``export``: True, or the one band the next wave
    reads, ``"right"`` or ``"bottom"``). A core that cannot be read is kept
    as its error, which every block that needs it reports. The bytes decoded and the seconds
    are counted in this process (:func:`forget_run` returns them)."""
    start, decoded = time.perf_counter(), decoded_by_this_thread()
    fence.refuse_ended(job.token)  # a late task of a stopped run: nothing decoded nor kept
    allocator.hold(job.token)
    if data is not None:
        job.opened(data)
    out, grid = {}, grid_of(job)
    for block, keep, n, exported in zip(blocks, keep_core, uses, export, strict=True):
        try:
            core = _read_core(job, block, kept=bool(keep))
            bands = Bands.of(core, *grid.core(block), grid.halo, copy=not keep)
        except (SourceReadError, SourceValueError) as exc:
            core, bands = None, Bands(*grid.core(block), error=exc)
        if keep or n > 0:
            _keep(job.token, block, _Held(core if keep else None, bands, n, int(keep)))
        if exported:
            out[block] = bands.only(exported) if isinstance(exported, str) else bands.copied()
    with _lock:
        if fence.ended(job.token):  # forgotten meanwhile: its counts are not kept again
            return out
        counts = _counts.setdefault(job.token, _Counts())
        counts.decoded += decoded_by_this_thread() - decoded
        counts.seconds += time.perf_counter() - start
    return out


def fuse_rows(
    job: FuseJob,
    blocks: list[Block],
    remote: list[dict[Block, Bands]],
    data: Any = None,
    *,
    on_block: Any = None,
) -> list[Outcome]:
    """Fuse and write ``blocks`` (one strip's row; where the grid is of cells, the blocks
    left to fuse of a row of cells, cell by cell) from their cores and their neighbours'
    bands: this worker's registry, or ``remote`` (handed over from other workers). What is
    missing (a lost worker's) is read from the store. ``on_block()`` is called after each
    block (progress)."""
    fence.refuse_ended(job.token)  # a late task of a stopped run: nothing read nor written
    allocator.hold(job.token)
    if data is not None:
        job.opened(data)
    handed = {}
    for found in remote:
        handed.update(found)
    outcomes: list[Outcome] = []
    for cell, group in itertools.groupby(blocks, key=lambda b: cell_of(job, b)):
        _fuse_cell(job, cell, list(group), handed, outcomes, on_block)
    return outcomes


def _fuse_cell(job: FuseJob, cell: Block, blocks: list[Block], handed: dict[Block, Bands],
               outcomes: list[Outcome], on_block: Any) -> None:  # fmt: skip
    """Fuse ``blocks``, all in ``cell``, from the cell's core and its neighbours' bands, each
    taken once; a block whose samples cannot be read fails alone."""
    start, decoded = time.perf_counter(), decoded_by_this_thread()
    plan, grid = job.plan, grid_of(job)
    core, failed = _take_core(job.token, cell), None
    if core is None:  # not decoded on this worker (it was lost, or the task moved)
        try:
            core = _read_core(job, cell)
        except (SourceReadError, SourceValueError) as exc:
            failed = exc
    # the bands are taken even when the core failed: each was kept for this fuse
    around = []
    for other in neighbours(grid, cell):
        bands = handed.get(other) or _take_bands(job.token, other)
        if bands is None:
            try:
                other_core = _read_core(job, other)
                bands = Bands.of(other_core, *grid.core(other), grid.halo, copy=True)
            except (SourceReadError, SourceValueError) as exc:
                bands = Bands(*grid.core(other), error=exc)
        around.append(bands)
    for k, block in enumerate(blocks):
        try:
            if failed is not None:
                raise failed
            region = plan.region(block)
            out = job.block_buffer(region)
            _paste(out, region, core, *grid.core(cell))
            for bands in around:
                if _overlaps(bands, region):
                    if bands.error is not None:
                        raise bands.error
                    _paste_bands(out, region, bands)
            if k == len(blocks) - 1:  # the kernel runs without them (the task's memory)
                core, around = None, []
            outcomes.append(job.fuse_and_write(block, out, start=start, decoded=decoded))
        except (SourceReadError, SourceValueError) as exc:
            outcomes.append(Outcome(plan.name(block), exc))
        if on_block is not None:
            on_block()
        start, decoded = time.perf_counter(), decoded_by_this_thread()


def _overlaps(bands: Bands, region: BlockRegion) -> bool:
    """Whether a neighbour's core (whose bands these are) meets the haloed region."""
    return max(bands.y[0], region.y[0]) < min(bands.y[1], region.y[1]) and max(
        bands.x[0], region.x[0]
    ) < min(bands.x[1], region.x[1])


def neighbours(plan: Plan, block: Block) -> list[Block]:
    """The (up to) eight blocks around ``block`` in its image."""
    ny, nx = plan.grid
    *lead, j, i = block
    return [
        (*lead, j + dj, i + di)
        for dj, di in itertools.product((-1, 0, 1), repeat=2)
        if (dj or di) and 0 <= j + dj < ny and 0 <= i + di < nx
    ]
