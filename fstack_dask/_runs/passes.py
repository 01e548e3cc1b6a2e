"""The passes of a run: level 0's blocks, then each level of the pyramid from the one below.

Each pass hands its blocks, lazily and in the plan's order, to the runner
(:func:`~.schedulers.execute`), which keeps a bounded window of tasks in flight on any
scheduler; blocks with a done-marker (a resumed run's) are skipped.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import uuid

from .._outputs.destination import Target
from .._sources.open import Reopen
from .._sources.share import ScatterLostError, shared_recipe
from . import exchange, schedulers, waiting
from .blocks import FuseJob, close_on_workers
from .fusion import Fusion
from .plan import Plan
from .pyramid import PyramidJob, level_plan
from .scheduler_choice import Scheduler

__all__ = ["fuse_blocks", "image_minimums", "pyramid_levels"]

log = logging.getLogger(__name__)

# tries in a row, none finishing a block, before a run whose cluster keeps losing the scattered
# copy of its in-memory source gives up (a worker the OOM killer kills at each try)
RESCATTERS = 3


def fuse_blocks(
    fusion: Fusion,
    plan: Plan,
    target: Target,
    sched: Scheduler,
    *,
    cache_bytes: int,
    progress: bool,
    stall_timeout: float,
    resuming: bool,
    fills: dict[tuple[int, ...], float] | None = None,
    label: str = "fusing",
) -> tuple[set[str], schedulers.RunReport]:
    """Fuse and write every level-0 block without a done-marker; returns the markers found
    before (a resumed run's, pyramid levels' included) and the run's report. With ``fills``
    None, a block that needs its image's smallest S is not written (``report.deferred``).

    A cluster that lost the scattered copy of an in-memory source (its worker killed by the
    OOM killer, restarted, retired) is given the array again and the blocks left are fused
    as a resume would (the markers found before are then those of the last try); after
    ``RESCATTERS`` tries in a row that finished no block, the :class:`ScatterLostError`."""
    first_pass = fills is None or fills == fusion.fills
    if first_pass:  # (a second pass is announced by its caller)
        for note in fusion.source.notes:  # the files read, in the run's log
            log.info("%s: %s", fusion.source.description, note)
        if resuming:
            log.info("resuming %s: %d of %d blocks left", target.dst.spec,
                     plan.n_blocks - target.state.n_done(), plan.n_blocks)  # fmt: skip
    fruitless, since = 0, (target.state.n_done(), time.monotonic())
    while True:
        before = target.state.n_done()
        try:
            return _fuse_pass(fusion, plan, target, sched, cache_bytes=cache_bytes,
                              progress=progress, stall_timeout=stall_timeout, fills=fills,
                              label=label, first_pass=first_pass, since=since)  # fmt: skip
        except ScatterLostError as exc:
            fruitless = 0 if target.state.n_done() > before else fruitless + 1
            if fruitless >= RESCATTERS:
                raise _lost_again(exc, fruitless) from exc.__cause__
            log.warning(
                "the cluster lost its copy of the in-memory source with a worker: it is sent "
                "again, and the %d block(s) left are fused",
                plan.n_blocks - target.state.n_done(),
            )


def _lost_again(exc: ScatterLostError, fruitless: int) -> ScatterLostError:
    """The error of a run that lost its scattered copy ``fruitless`` times in a row, no block
    finished in between: a block that kills its worker (more memory than it has) does so at
    each try; "lost its copy" alone blamed the cluster, and sent the user to a resume that
    loops the same way."""
    if fruitless < 2:
        return exc
    return ScatterLostError(
        f"{exc}, {fruitless} times in a row with no block finished in between (a block that "
        "needs more memory than a worker has? smaller chunks need less)"
    )


def _fuse_pass(fusion: Fusion, plan: Plan, target: Target, sched: Scheduler, *,
               cache_bytes: int, progress: bool, stall_timeout: float,
               fills: dict[tuple[int, ...], float] | None, label: str, first_pass: bool,
               since: tuple[int, float]) -> tuple[set[str], schedulers.RunReport]:  # fmt: skip
    """One try of :func:`fuse_blocks`: the blocks without a done-marker now."""
    done = target.state.done()
    todo = (b for b in plan.blocks() if plan.name(b) not in done)
    n_todo = plan.n_blocks - target.state.n_done()
    unit = (fusion.unit["y"], fusion.unit["x"])
    cells = None
    budget, itemsize = cache_bytes * sched.processes, fusion.source.dtype.itemsize
    if exchange.enabled() and exchange.applies(plan, unit, budget, itemsize):
        cells = exchange.cells(plan, unit)
    halo_exchange = cells is not None
    a_worker = functools.partial(waiting.a_worker, sched.client, stall_timeout)
    with shared_recipe(fusion.recipe, sched.kind, sched.client, a_worker) as (recipe, task_args):
        job = FuseJob(
            token=uuid.uuid4().hex,
            open_source=Reopen(
                *recipe,
                by_inner_chunks=fusion.source.by_inner_chunks,
                expected=fusion.source.identity(),
            ),
            plan=plan,
            output=target.output,
            lease=target.lease,
            arrays={"0": "0", **{m: f"{m}/0" for m in fusion.maps}},
            kernel=fusion.kernel,
            dtype=fusion.spec.array("0").dtype,
            cache_bytes=cache_bytes,
            depth_affine=fusion.depth_affine,
            source=fusion.source,
            cells=cells if cells is not plan else None,
            fills=fills,
            nhsize_auto=fusion.nhsize_auto,
        )
        try:
            report = schedulers.execute(
                job, todo, n_blocks=n_todo, scheduler=sched, progress=progress,
                stall_timeout=stall_timeout, task_args=task_args,
                # a second pass counts its own blocks: "4/4 blocks, 1 done before this run"
                # said of a fresh run's block that needed no second pass
                done_before=plan.n_blocks - n_todo if first_pass else 0, label=label,
                exchange_with=(done, budget) if halo_exchange else None,
                since=since if first_pass else None,
            )  # fmt: skip
        except BaseException:
            close_on_workers(job, sched, wait=False)  # no waiting on a failed cluster
            raise
        close_on_workers(job, sched)
    return done, report


def image_minimums(
    plan: Plan, target: Target, done: set[str], report: schedulers.RunReport
) -> dict[tuple[int, ...], float]:
    """Each image's smallest S (by its lead indices): over the blocks this run fused
    (``report``) and those done before it (``done``, from their markers); -inf for an
    image with no S defined anywhere (the reference's fill would be NaN there)."""
    smallest = dict(report.s_min)
    state = target.state
    for block in plan.blocks():
        name = plan.name(block)
        if name not in done:
            continue
        value = state.marker_s_min(name)
        if value is not None and value == value:
            lead = tuple(int(i) for i in block[:-2])
            smallest[lead] = min(smallest.get(lead, math.inf), value)
    leads = {tuple(int(i) for i in b[:-2]) for b in plan.blocks()}
    return {lead: smallest.get(lead, -math.inf) for lead in leads}


def pyramid_levels(
    fusion: Fusion,
    target: Target,
    sched: Scheduler,
    *,
    done: set[str],
    progress: bool,
    stall_timeout: float,
) -> None:
    """Levels 1..N, each from the one below once that is complete (``_outputs.pyramid``)."""
    for level in range(1, fusion.spec.levels + 1):
        plan = level_plan(fusion.layout, fusion.block, level)
        job = PyramidJob(target.output, level, ("", *fusion.maps), plan, lease=target.lease)
        todo = [b for b in plan.blocks() if job.marker(b) not in done]
        schedulers.execute(job, iter(todo), n_blocks=len(todo), scheduler=sched, progress=progress,
                stall_timeout=stall_timeout, label=f"level {level}",
                done_before=plan.n_blocks - len(todo))  # fmt: skip
