"""Halo exchange: each block's own units decoded once; its neighbours get only edge bands.

A block's halo reaches ``halo`` pixels into its eight neighbours, but a stored chunk can only
be decoded whole: read from the store, every block would decode its neighbours' chunks again
(up to nine decodes of each). When blocks are whole multiples of the source's read unit, a
run instead goes in two kinds of tasks, one row of one strip (a few adjacent columns) each.
Where a block is an even divisor of the unit (large chunks, shards, many float planes), the
same goes by *cells* of one unit (:func:`cells`): a cell's core is decoded once and its blocks
are fused from it, one fuse per row of its blocks (so that several threads share a cell).

* **decode**: read each block's *core* (its own units, decoded once), keep it in the worker
  process's registry with its four edge bands (``halo`` pixels wide), and return the bands
  that blocks on other workers will need;
* **fuse**: assemble each block's haloed samples from its core and its neighbours' bands
  (from the registry, or handed over from other workers), then fuse, write and mark it done
  as :meth:`~.blocks.FuseJob.fuse_and_write` does. The samples are those a direct read gives,
  so the output's bits are the same.

**Order and memory.** Columns go in *waves*, as wide as two rows of cores fit in the
workers' memory (an image much wider than tall goes across, in waves of rows where that
decodes less: :func:`.waves.oriented`); in a wave every strip goes down its rows, fusing row
``j`` once it and its neighbour strips have decoded row ``j + 1``, so each strip holds about
two rows of cores. A wave also decodes the column on each side of it for their bands only
(decoded again by the next wave): waves as wide as memory allows keep that at
``2 / wave width``. A wave waits while the waves running hold the memory it needs, and halo
exchange runs only where its smallest wave fits (else the unit cache reads the blocks,
within its memory). A wave whose columns do not share out evenly over the task slots (196
columns on 64 or 256 workers, 8 columns on 16) goes in *row segments* where memory holds two
rows of each, each with its own part of the slots, so that every slot is about equally busy.
A segment's border row is decoded once, by its own segment, which hands its bands to the
segment across the border; segments go alternately up and down
their rows (segment 0 up, 1 down, 2 up... :mod:`.waves`), so two segments reach their shared
border together, both first or both last, and neither waits for the other. Strips stay on
one worker (their registry), so only the bands on a border between two workers travel, each
one a tenth of a 512-pixel block for the default halo. A worker that is lost costs only
decodes again: a fuse that misses something in its registry reads it from the store.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable
from typing import Any

from .._env import HALO_EXCHANGE, switch
from .._errors import finish_despite_interrupts
from .blocks import FuseJob, Outcome
from .exchange_strips import _fused, _prune, _Strip, _submit_ready, _WaveState
from .halo import fuse_rows
from .plan import Plan
from .waiting import first_done
from .waves import (
    Across,
    Wave,
    cells,
    cells_done,
    core_size,
    decoding,
    exchange_grid,
    grid_of,
    oriented,
    row_bytes,
    segments,
    segments_in_memory,
    wave_width,
    waves,
)
from .waves import depth as rows_ahead

__all__ = [
    "Runner",
    "applies",
    "cells",
    "core_bytes",
    "core_size",
    "decoding",
    "enabled",
    "run_exchange",
    "segments",
    "wave_width",
    "waves",
]


def enabled() -> bool:
    """Halo exchange where it applies (``FSTACK_DASK_HALO_EXCHANGE=0``: every block reads its
    halo from the store through the unit cache, as before; the same bits either way). Read
    at each run, so that a change between runs of one process counts (another value than 0
    or 1 is refused where the run is planned, ``_env.check``)."""
    return switch(HALO_EXCHANGE, True)


# ---------------------------------------------------------------------------- planning


def applies(plan: Plan, unit_yx: tuple[int, int], budget: float, itemsize: int) -> bool:
    """Whether halo exchange can run this plan with ``budget`` bytes of the workers' memory
    beside their tasks (:func:`.waves.exchange_grid`)."""
    return exchange_grid(plan, unit_yx, budget, itemsize) is not None


# ------------------------------------------------------------------------------ driver


class Runner(abc.ABC):
    """Where the tasks run. :meth:`submit` puts ``fn(*args)`` on ``slot`` (one of
    ``slots``, each running ``threads`` tasks at once); :meth:`wait` returns the finished
    handles; :meth:`result` a finished task's result, raising what it raised (:meth:`check`
    only raises); :meth:`handed` what a task on another slot is given of a finished decode
    (its result; on a cluster its future, which dask moves between workers itself)."""

    slots: list[Any] = [None]
    threads: int = 1

    @abc.abstractmethod
    def submit(self, slot: Any, fn: Callable, *args: Any) -> Any:
        """Run ``fn(*args)`` on ``slot``; returns a handle (a future)."""

    def wait(self, handles: set[Any]) -> tuple[set[Any], set[Any]]:
        return first_done(handles)

    def result(self, handle: Any) -> Any:
        return handle.result()

    def check(self, handle: Any) -> None:
        handle.result()

    def handed(self, handle: Any) -> Any:
        return handle.result()

    def refresh(self) -> None:  # noqa: B027 - most runners' slots never change
        """Look again at which slots there are (a cluster's workers come and go)."""

    def submit_fuse(self, slot: Any, job: Any, blocks: list, remote: list, task_args: tuple):
        """Submit a fuse (:func:`.halo.fuse_rows`), its blocks reported as they end."""
        return self.submit(slot, fuse_rows, job, blocks, remote, *task_args)

    def shown(self, handle: Any) -> int:
        """How many of a finished fuse's blocks were reported (and counted) already."""
        return 0

    @abc.abstractmethod
    def close(self, running: set[Any]) -> None:
        """Cancel what has not started and wait for what runs (also at a normal end)."""

    @abc.abstractmethod
    def counts(self, token: str, seconds: float | None = None) -> list[tuple[int, float, int]]:
        """:func:`forget_run` of every process: each one's bytes decoded, seconds and peak
        bytes held for the run (which it then forgets); with ``seconds``, only the answers
        given within that time (a stopped run's: :mod:`.cleanup`)."""


def run_exchange(
    job: FuseJob,
    runner: Runner,
    *,
    done: set[str],
    budget: int,
    on_outcomes: Callable[[list[Outcome], int], bool],
    task_args: tuple[Any, ...] = (),
) -> None:
    """Run every block of ``job.plan`` not in ``done`` by halo exchange (see the module
    docstring). ``on_outcomes`` gets each fuse's outcomes (and how many of them progress has
    shown already) and returns False to stop.
    Returns once nothing runs any more (the caller collects the decodes' counts from the
    workers with :func:`forget_run`)."""
    grid = grid_of(job)  # the plan's blocks, or the cells that hold several of them
    blocks_done = done
    if grid is not job.plan:
        done = cells_done(job, done)
    core = core_bytes(job)
    plan = oriented(grid, budget, core)  # waves down its columns, or across
    width, depth = wave_width(plan, budget, core), rows_ahead(plan, budget, core)
    capacity = max(1, len(runner.slots) * runner.threads)
    pending = waves(plan, done, width, lambda: segments_in_memory(plan, width, capacity, depth))
    active: list[_WaveState] = []
    running: dict[Any, tuple[str, _Strip, int]] = {}
    carry: dict[tuple, Any] = {}  # (lead, column, row) -> decode of a wave's last column
    lent: dict[tuple, list] = {}  # (lead, wave columns, row, side) -> [(columns, decode)]
    per_row = tuple(row_bytes(plan, core, fused=f) for f in (True, False))
    exhausted, upcoming = False, None
    try:
        while True:
            # an image's row segments go together (each may wait for its neighbours' borders)
            while not exhausted and (
                not active or _admissible(active, width, capacity) or _more_segments(active)
            ):
                runner.refresh()  # workers that joined (an adaptive cluster) take part
                capacity = max(1, len(runner.slots) * runner.threads)
                upcoming = upcoming or next(pending, None)
                if upcoming is None:
                    exhausted = True
                    break
                state = _wave_state(upcoming, plan, runner, capacity, depth)
                # a wave waits while the memory the waves running hold leaves no room for it
                if (
                    active
                    and not _more_segments(active)
                    and (sum(_held(s, *per_row) for s in active) + _held(state, *per_row) > budget)
                ):
                    break
                active.append(state)
                upcoming = None
            if not active and not running:
                return
            while any([_submit_ready(job, runner, s, (done, blocks_done), running, carry, lent,
                                     task_args) for s in active]):  # fmt: skip
                pass  # a row with nothing to do moves a strip on: look again
            active = _unfinished(active, carry, lent)
            if not running:
                if active:
                    raise AssertionError("halo exchange: no task can run")  # a planning bug
                continue
            finished, _ = runner.wait(set(running))
            for handle in finished:
                kind, strip, row = running.pop(handle)  # a fuse's: its position
                if kind == "decode":
                    runner.check(handle)  # raises what the task raised
                    strip.decoded[row] = handle
                    if strip.last_column is not None:  # the next wave's left neighbours
                        carry[(strip.lead, strip.last_column, row)] = handle
                    for side in strip.lends.get(row, ()):  # the next segment's border row
                        key = (strip.lead, strip.wave, row, side)
                        lent.setdefault(key, []).append((strip.cols, handle))
                else:
                    strip.parts[row] -= 1
                    if not strip.parts[row]:  # a row of cells goes in one fuse per block row
                        del strip.parts[row]
                        _fused(strip, row)
                    if not on_outcomes(runner.result(handle), runner.shown(handle)):
                        return
            for state in active:
                _prune(state)
            active = _unfinished(active, carry, lent)
    finally:
        # cancelled or waited for, even through a second Ctrl-C: no write lands after we return
        finish_despite_interrupts(runner.close, set(running))
        # stopped early: count what got done. Only what ended: a task of a worker process
        # that died may stay pending for ever, and a wait for it swallowed the second SIGTERM
        for handle, (kind, _, _) in running.items():
            if kind == "fuse" and handle.done():
                with contextlib.suppress(Exception):
                    on_outcomes(runner.result(handle), runner.shown(handle))


def _unfinished(
    active: list[_WaveState], carry: dict[tuple, Any], lent: dict[tuple, list]
) -> list[_WaveState]:
    """The waves still running; a finished one lets go of the bands it was handed."""
    for state in active:
        if not state.finished():
            continue
        wave = state.wave
        # the bands handed over from the wave before serve all the row segments of this one
        siblings = any(not other.finished() and other.wave.lead == wave.lead
                       and other.wave.cols == wave.cols for other in active)  # fmt: skip
        if wave.carried and not siblings:
            left = wave.cols[0] - 1
            for key in [k for k in carry if k[0] == wave.lead and k[1] == left]:
                del carry[key]
        for row in state.order:
            if wave.borrowed(row):
                lent.pop((wave.lead, wave.cols, row, wave.lender(row)), None)
    return [state for state in active if not state.finished()]


def _held(state: _WaveState, row: float, side: float) -> float:
    """The most bytes a wave (or row segment) holds: for each of the rows it decodes ahead
    and the one being fused, a row of cores and bands in each of its columns (``row``) and
    of bands in the columns decoded beside it (``side``; :func:`.waves.row_bytes`)."""
    d0, d1 = state.wave.decode_cols
    c0, c1 = state.wave.cols
    columns = (c1 - c0) * row + (d1 - d0 - (c1 - c0)) * side
    return columns * min(state.depth + 1, len(state.order))


def _admissible(active: list[_WaveState], width: int, capacity: int) -> bool:
    strips = sum(len(s.strips) for s in active)
    # a row segment holds its share of its columns' memory (its depth is shared out)
    cols = sum((s.wave.cols[1] - s.wave.cols[0]) / s.wave.segment[1] for s in active)
    return cols < width and strips < 2 * capacity


def _more_segments(active: list[_WaveState]) -> bool:
    """Whether the last wave admitted is a row segment whose image has more."""
    index, count = active[-1].wave.segment
    return index + 1 < count


def _wave_state(
    wave: Wave, grid: Plan | Across, runner: Runner, capacity: int, depth: int = 1
) -> _WaveState:
    """The wave's decoded columns in strips, at most one per task slot, spread over the
    slots in contiguous groups (neighbouring strips share their bands on one worker); a row
    segment gets its part of the slots, of the task slots and of the rows decoded ahead."""
    d0, d1 = wave.decode_cols
    n = d1 - d0
    part, parts = wave.segment
    n_slots = len(runner.slots)
    lo = n_slots * part // parts
    # fewer slots than segments (slots of several threads): segments share a slot, in turn
    slots = runner.slots[lo : n_slots * (part + 1) // parts] or [runner.slots[lo]]
    depth = max(1, (depth + 1) // parts - 1)
    count = max(1, min(n, capacity // parts))
    bounds = [d0 + (n * k) // count for k in range(count + 1)]
    strips, strip_of = [], {}
    # its last column's decodes go to the next wave (none after an image's last column)
    last = wave.cols[1] - 1 if wave.cols[1] < grid.grid[1] else None
    for k in range(count):
        slot = slots[(k * len(slots)) // count]
        has_last = last is not None and bounds[k] <= last < bounds[k + 1]
        strips.append(_Strip((bounds[k], bounds[k + 1]), slot, wave.lead, wave.cols,
                             last if has_last else None, lends=wave.lent()))  # fmt: skip
        strip_of.update({i: k for i in range(bounds[k], bounds[k + 1])})
    return _WaveState(wave, grid, strips, strip_of, depth)


def core_bytes(job: Any) -> int:
    """Bytes of one block's (or cell's) decoded core (a job's ``itemsize``, else its
    source's)."""
    itemsize = getattr(job, "itemsize", None)
    if itemsize is None:
        itemsize = job.opened()[0].dtype.itemsize
    return core_size(grid_of(job), itemsize)
