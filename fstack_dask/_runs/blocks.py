"""One block's work: read it with its halo, fuse it, write its regions durably, mark it done.

A :class:`FuseJob` holds everything a task needs and nothing it could share by accident: it
is pickled to worker processes and cluster workers as it is, and each process opens the
source and the output once (:func:`_opened`) and keeps one unit cache per run. Tasks never
exchange data: each reads from the source and writes to the output itself, so a lost worker
costs only its own blocks, and every write is idempotent (the same bytes to the same chunks).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._algorithm.block import (
    BeyondFloat64,
    block_buffer,
    engine_problem,
    fuse_block,
    selectivity_stats,
)
from .._algorithm.device import gpu_problem
from .._errors import SourceReadError, SourceValueError
from .._fp_env import with_ieee_arithmetic
from .._locations import Location
from .._outputs.fingerprint import input_digest
from .._outputs.lock import Lease
from .._outputs.state import OutputState
from .._outputs.write import make_durable, open_output, write_block
from .._sources.fetch import BlockRegion, block_shape, fetch_block, refused_opening, units_of
from .._sources.share import release_attached
from .._sources.source import Source
from .._sources.unit_cache import UnitCache, decoded_by_this_thread
from . import allocator, fence
from .cleanup import CLEANUP_SECONDS, run_on_workers
from .plan import Plan

__all__ = ["FuseJob", "Outcome", "close_on_workers"]

_opened_lock = threading.Lock()
_opened_by_token: dict[str, tuple[Source, dict[str, Any], UnitCache]] = {}
# Runs whose source this process opened itself (a worker's), closed when the run is forgotten
_opened_here: set[str] = set()


@dataclass(frozen=True)
class Outcome:
    """What one block's task reports back: with ``deferred``, a block that needs its image's
    smallest ``S`` (``s_min``: the block's own, per image ``lead``) and was not written."""

    name: str
    error: BaseException | None = None
    decoded: int = 0
    seconds: float = 0.0
    lead: tuple[int, ...] = ()
    s_min: float = float("nan")
    deferred: bool = False


@dataclass(frozen=True, eq=False)
class FuseJob:
    """Everything needed to fuse and write any block of one run.

    ``open_source`` rebuilds the :class:`Source` in a process that does not have it yet
    (a picklable callable); in the process that planned the run, ``source`` is used as is.
    """

    token: str
    open_source: Callable[..., Source]  # (data=None): data as in run()
    plan: Plan
    output: Location
    arrays: dict[str, str]  # output name ("0", "depth", ...) -> its level-0 array path
    kernel: dict[str, Any]
    dtype: np.dtype
    cache_bytes: int
    depth_affine: tuple[float, float] | None = None  # depth = offset + step * plane
    lease: Lease | None = None  # checked before each block's writes and its marker
    source: Source | None = field(default=None, compare=False)
    # halo exchange's grid where its cells are whole units holding several blocks each
    # (:func:`.exchange.cells`); None: the plan's blocks themselves
    cells: Plan | None = None
    # The smallest S of each image (by its lead indices) that fills undefined ones, as the
    # reference does. None: not known yet, and a block that needs it is deferred (its
    # Outcome says so; nothing is written). An output begun before this rule: {} (-inf).
    fills: dict[tuple[int, ...], float] | None = None
    nhsize_auto: bool = False  # chosen by nhsize="auto": a refusal of samples says what fits

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["source"] = None  # reopened in the worker
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def fence_key(self) -> str:
        """The run's key in :mod:`.fence` (a pass's own: a try after a lost scatter writes)."""
        return self.token

    # -- per process -------------------------------------------------------------------

    def opened(self, data: Any = None) -> tuple[Source, dict[str, Any], UnitCache]:
        """This run's source, output arrays and unit cache in this process (opened once);
        ``data``: the in-memory source's array, where the task brought it."""
        with _opened_lock:
            found = _opened_by_token.get(self.token)
            if found is None:
                fence.refuse_ended(self.token)  # a late task of a forgotten run: no source kept
                source = self.source
                if source is None:
                    try:
                        source = self.open_source(data)
                    except Exception as exc:  # (one the run can be sent back: fetch's)
                        told = refused_opening(exc)
                        if told is None:
                            raise
                        raise told from None
                    _opened_here.add(self.token)
                group = open_output(self.output, mode="r+")
                arrays = {name: group[path] for name, path in self.arrays.items()}
                found = (source, arrays, UnitCache(self.cache_bytes, self.plan.halo))
                _opened_by_token[self.token] = found
            return found

    def cache_peak(self) -> int:
        """The most bytes of decoded units this process's cache held for this run."""
        found = _opened_by_token.get(self.token)
        return found[2].peak_bytes if found is not None else 0

    def close(self) -> None:
        """Forget this run's opened source, output and cache in this process, and give its
        allocator back its own setting (:mod:`.allocator`)."""
        _close_run(self.token)

    def expect(self, blocks: Sequence[tuple[int, ...]]) -> None:
        """Announce the units these blocks will read (so the cache keeps them)."""
        source, _, cache = self.opened()
        cache.expect(
            r for b in blocks for r in units_of(source, self.plan.region(b), self.plan.halo)
        )

    def forget(self, blocks: Sequence[tuple[int, ...]]) -> None:
        source, _, cache = self.opened()
        cache.forget(
            r for b in blocks for r in units_of(source, self.plan.region(b), self.plan.halo)
        )

    # -- the work ----------------------------------------------------------------------

    def run(
        self,
        blocks: Sequence[tuple[int, ...]],
        data: Any = None,
        *,
        announce: bool = True,
        on_block: Callable[[], None] | None = None,
    ) -> list[Outcome]:
        """Fuse and write ``blocks`` in order, in this process.

        With ``announce`` (a task sent to another process), the blocks' reads are announced
        to this process's cache first, so consecutive blocks share their units. A block
        whose source cannot be read or holds NaN fails alone; any other error stops the run.
        ``data`` is the in-memory source's array where the task brings it (a cluster's
        scattered copy, :mod:`fstack_dask._sources.share`). ``on_block`` is called after
        each block, written or failed (a task of many blocks reports its progress so).
        """
        fence.refuse_ended(self.token)
        allocator.hold(self.token)
        if data is not None:
            self.opened(data)
        if announce:
            self.expect(blocks)
        out = []
        for k, block in enumerate(blocks):
            try:
                out.append(self.run_block(block))
            except (SourceReadError, SourceValueError) as exc:
                out.append(Outcome(self.plan.name(block), exc))
            except BaseException:
                if announce:
                    self.forget(blocks[k + 1 :])
                raise
            if on_block is not None:
                on_block()
        return out

    def run_block(self, block: tuple[int, ...]) -> Outcome:
        start = time.perf_counter()
        decoded = decoded_by_this_thread()
        source, _, cache = self.opened()
        region = self.plan.region(block)
        stack = fetch_block(source, region, cache, self.block_buffer(region))
        return self.fuse_and_write(block, stack, start=start, decoded=decoded)

    def block_buffer(self, region: BlockRegion) -> np.ndarray:
        """Where a block's haloed samples are assembled: where its engine wants them (the
        GPU: this thread's pinned buffer, sent without another copy), fused on this thread."""
        source = self.opened()[0]
        _require_engine_here(self.kernel.get("engine") or "")  # (the GPU's buffer: its check)
        return block_buffer(block_shape(source, region), source.dtype.newbyteorder("="),
                            engine=self.kernel.get("engine"))  # fmt: skip

    @with_ieee_arithmetic
    def fuse_and_write(
        self, block: tuple[int, ...], stack: np.ndarray, *, start: float, decoded: int
    ) -> Outcome:
        """Fuse a block's haloed samples and write its regions, durably, then its marker.

        ``start`` and ``decoded`` (this thread's decoded bytes when the block began) are
        for the block's statistics."""
        source, arrays, _ = self.opened()
        plan = self.plan
        region = plan.region(block)
        digest = input_digest(stack)  # what the marker vouches for (see _resume)
        lead_key = tuple(int(i) for i in block[:-2])
        fill = -np.inf if self.fills is None else self.fills.get(lead_key, -np.inf)
        _require_engine_here(self.kernel.get("engine") or "")  # not a refusal of samples
        try:
            result = fuse_block(stack, **self.kernel, s_fill=fill)
        except ValueError as exc:  # samples the kernel refuses: say where they are
            text = str(exc).replace("im_stack has", "has")
            if isinstance(exc, BeyondFloat64) and self.nhsize_auto:  # not the user's nhsize
                from .._algorithm.auto import beyond_the_sample

                text = beyond_the_sample(exc, start_again=True)
            raise SourceValueError(
                f"block {plan.name(block)} (y {region.y}, x {region.x}) of "
                f"{source.description} {text}"
            ) from exc
        del stack
        (y0, y1), (x0, x1) = plan.core(block)
        crop = (
            slice(y0 - region.y[0], y1 - region.y[0]),
            slice(x0 - region.x[0], x1 - region.x[0]),
        )
        s_min, undefined = selectivity_stats(result.s, crop)
        if undefined and self.fills is None:  # fused again once its image's smallest S is known
            return Outcome(plan.name(block), None, decoded_by_this_thread() - decoded,
                           time.perf_counter() - start, lead_key, s_min, deferred=True)  # fmt: skip
        data: dict[str, Any] = {"0": result.image[(Ellipsis, *crop)]}
        if "depth" in arrays:
            depth = result.depth[crop]
            if self.depth_affine is not None:
                offset, step = self.depth_affine
                depth = (offset + step * depth.astype(np.float64)).astype(np.float32)
            data["depth"] = depth
        if "selectivity" in arrays:
            data["selectivity"] = result.selectivity[crop]
        regions, shaped = {}, {}
        lead = dict(region.lead)
        for name, values in data.items():
            array = arrays[name]
            axes = "".join(array.metadata.dimension_names)
            sel, shape = [], []
            for letter in axes:
                if letter == "y":
                    sel.append(slice(y0, y1))
                    shape.append(y1 - y0)
                elif letter == "x":
                    sel.append(slice(x0, x1))
                    shape.append(x1 - x0)
                elif letter in lead:
                    sel.append(slice(lead[letter], lead[letter] + 1))
                    shape.append(1)
                else:  # the colour channels of an RGB image
                    sel.append(slice(0, array.shape[axes.index(letter)]))
                    shape.append(array.shape[axes.index(letter)])
            regions[name] = tuple(sel)
            shaped[name] = np.ascontiguousarray(values).reshape(shape)
        with fence.writing(self.fence_key):  # none once a stopped run ended here
            if self.lease is not None:
                self.lease.check()  # a run whose lock was taken over writes nothing more
            keys = write_block(arrays, regions, shaped)
            sizes: list[int] = []
            stored = make_durable(self.output, keys, sizes)  # the data first ...
            if self.lease is not None:
                self.lease.check()
            marker = OutputState(self.output)  # ... then the marker
            marker.mark_done(plan.name(block), digest, stored, s_min, filled=undefined,
                             sizes=sizes)  # fmt: skip
        return Outcome(
            plan.name(block),
            None,
            decoded_by_this_thread() - decoded,
            time.perf_counter() - start,
            lead_key,
            s_min,
        )


#: The engines this process was found able to run (:func:`_require_engine_here`).
_RUNNABLE_HERE: set[str] = set()


def _require_engine_here(engine: str) -> None:
    """Refuse (``ValueError``, one line naming the worker), in a block's task, a process that
    cannot run ``engine``: a worker that joined after the run asked its workers
    (``device.require_engine_on_workers``; ``cluster.adapt()``, a batch job starting late).
    Its blocks failed one by one as the source's ("block 0.1 of ... engine='compiled' needs
    numba") while the others' were written; now the run stops before it writes one, the
    blocks written kept for a resume. ``device="cuda"``'s GPU too (a late worker without one
    failed at its first block in one line naming no worker). Asked once a process if it can."""
    if engine in _RUNNABLE_HERE:
        return
    if engine == "cuda":  # (a bad FSTACK_DASK_CUDA_PINNED here: warned of, and pinned)
        problem = gpu_problem()
        problem = None if problem is None else f"device='cuda' {problem}"
    else:
        problem = engine_problem(engine)
    if problem is None:
        _RUNNABLE_HERE.add(engine)
        return
    try:
        from distributed import get_worker

        where = f"worker {get_worker().address}, which joined the run after its check"
    except (ImportError, ValueError):  # (not a distributed worker: a process of ours)
        where = "a worker process"
    raise ValueError(f"{problem} (on {where})")


def _close_run(token: str) -> None:
    fence.end(token)  # a late task of the run keeps nothing here any more
    with _opened_lock:
        found = _opened_by_token.pop(token, None)
        ours = token in _opened_here
        _opened_here.discard(token)
    if found is not None and ours:
        # Closed, not left to the garbage collector: a worker kept a TIFF source's file
        # open after the run (a ResourceWarning per run; a cluster's worker held it on)
        with contextlib.suppress(Exception):
            found[0].close()
    allocator.release(token)


async def _close_run_soon(token: str) -> None:
    _close_run(token)


def close_on_workers(job: FuseJob, scheduler: Any, *, wait: bool = True) -> None:
    """Make the worker processes forget ``job``'s opened source, output and cache.

    A cluster's workers live on, and so do our own worker processes, kept for the next run
    (:mod:`.pool`): they would keep each run's source (an in-memory array's copy, say) for
    good.
    """
    if scheduler.kind == "processes":
        with contextlib.suppress(Exception):  # best effort: the run's outcome stands
            pool = scheduler.client
            ends = [pool.submit_to(slot, _end_run_in_process, job.token) for slot in pool.slots]
            if wait:
                cf.wait(ends, timeout=60)
        return
    if scheduler.kind != "distributed" or getattr(scheduler.client, "status", None) != "running":
        return  # a lost scheduler: nothing to tell, and no waiting for it
    with contextlib.suppress(Exception):  # best effort: the run's outcome stands either way
        # distributed runs only a coroutine function without waiting: the plain one was
        # refused on every worker, so a failed or interrupted run was never forgotten there
        # (850 MiB after three failed runs: a helper's run, 2026-12-05)
        # (a failed or stopped run's, bounded: a worker that cannot answer held a Ctrl-C for
        # ever; it forgets the run once it answers)
        run_on_workers(scheduler.client, _close_run if wait else _close_run_soon, job.token,
                       wait=wait, seconds=None if wait else CLEANUP_SECONDS)  # fmt: skip


def _end_run_in_process(token: str) -> None:
    """In a worker process of ours, at a run's end: forget the run, unmap its in-memory
    source's shared copy, and give the freed heap back (the process may wait, idle, for
    the next run)."""
    _close_run(token)
    release_attached()
    allocator.trim()
