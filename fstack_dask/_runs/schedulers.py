"""Getting the blocks of a run computed, on any scheduler, with every worker busy and memory
bounded.

Tasks are independent (each reads its own block and halo from the source and writes its own
output chunks), so there is no barrier anywhere: a bounded window of tasks is kept in flight
and a new one is submitted as soon as one finishes. The driver walks the plan lazily, so it
holds O(tasks in flight), whatever the image size.

* ``synchronous``: one block after the other in this thread.
* ``threads`` (default): a thread pool in this process. The kernel and the codecs release the
  GIL; all threads share one cache of decoded units, and the driver announces the reads of
  the next blocks (a strip's row ahead) so units stay until their last reader has them.
* ``processes``: worker processes (spawned; they exit with their parent), each given runs of
  consecutive blocks of one strip, so consecutive blocks share that process's cache.
* a ``distributed.Client``: the same runs as tasks on the cluster. No data moves between
  workers: each task reads from the store and writes to it. What a cluster pays instead is
  decoding the units on the border between two workers' runs twice.

A task of many blocks reports each block as it finishes (worker processes through a queue,
cluster workers as events on a topic of their scheduler), so progress moves block by block
on every scheduler, and an interrupted run's last count is what is on disk.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .._errors import (
    SourceReadError,
    SourceValueError,
    finish_despite_interrupts,
    raise_if_stopped,
    stop_waiting,
)
from . import exchange
from . import reports as reports_
from .blocks import FuseJob, Outcome
from .cleanup import CLEANUP_SECONDS
from .progress import Progress
from .pyramid import PyramidJob
from .scheduler_choice import Scheduler
from .waiting import (
    POLL,
    cluster_waiter,
    fetched,
    first_done,
    killed_error,
    local_waiter,
    lost_error,
)

__all__ = ["RunReport", "execute"]

log = logging.getLogger(__name__)

FAILED_BLOCKS_LIMIT = 64  # blocks spoilt by unreadable source data before a run stops
LOCAL_SCHEDULERS = ("synchronous", "sync", "single-threaded", "threads", "processes")

_run_ids = itertools.count()  # one per task of many blocks, unique in this process
Job = FuseJob | PyramidJob  # what a pass runs: the fusion's blocks, or a pyramid level's


@dataclass
class RunReport:
    """What :func:`execute` did."""

    done: int = 0
    failures: list[BaseException] = field(default_factory=list)
    decoded_bytes: int = 0
    block_seconds: float = 0.0
    wall_seconds: float = 0.0
    workers: int = 1
    scheduler: str = "threads"
    cache_peak_bytes: int = 0
    # per image (its lead indices): the smallest S of the blocks written or deferred
    s_min: dict[tuple[int, ...], float] = field(default_factory=dict)
    deferred: int = 0  # blocks that need their image's smallest S, not written yet

    @property
    def busy_fraction(self) -> float:
        """Share of the wall time during which the workers were computing blocks."""
        if self.wall_seconds <= 0 or self.workers <= 0:
            return 0.0
        return self.block_seconds / (self.wall_seconds * self.workers)


# ---------------------------------------------------------------------------- running


def execute(
    job: Any,
    blocks: Iterator[tuple[int, ...]],
    *,
    n_blocks: int,
    scheduler: Scheduler,
    progress: bool,
    stall_timeout: float = 600.0,
    label: str = "fusing",
    task_args: tuple[Any, ...] = (),
    done_before: int = 0,
    exchange_with: tuple[set[str], int] | None = None,
    since: tuple[int, float] | None = None,
) -> RunReport:
    """Compute and write every block of ``blocks`` (lazily iterated); see the module docstring.

    ``n_blocks`` blocks are to do; ``done_before`` were done before (a resumed run's), so
    progress counts from there (``since``: a later try's, as :class:`~.progress.Progress`).

    A block whose source cannot be read or holds NaN spoils only itself: the others are
    still written (so that a resume after repairing the source computes only the spoilt
    ones), and a :class:`SourceReadError` or :class:`SourceValueError` naming the first
    problem is raised at the end, or once ``FAILED_BLOCKS_LIMIT`` blocks failed. Any other
    error stops the run. Either way, the tasks already running are waited for before this
    returns, so that no write lands after the caller has released the lock.

    ``task_args`` follow the blocks in each task sent to a cluster (``job.run(blocks,
    *task_args)``): Futures there, which dask resolves on the worker.

    ``exchange_with`` (the blocks already done, and the bytes of the workers' memory left for
    decoded cores) runs a :class:`~.blocks.FuseJob` by halo exchange (:mod:`.exchange`), each
    source unit decoded once on any scheduler; ``blocks`` is then not read.
    """
    report = RunReport(workers=scheduler.workers * scheduler.processes, scheduler=scheduler.kind)
    start = time.perf_counter()
    bar = Progress(n_blocks + done_before, done=done_before, enabled=progress, label=label,
                   since=since)  # fmt: skip
    try:
        if exchange_with is not None:
            _run_exchange(job, exchange_with, report, bar, scheduler, stall_timeout, task_args)
        elif scheduler.kind == "synchronous":
            _run_synchronous(job, blocks, report, bar)
        elif scheduler.kind == "threads":
            _run_threads(job, blocks, report, bar, scheduler.workers)
        else:
            _run_runs(job, blocks, report, bar, scheduler, stall_timeout, task_args)
    finally:
        bar.close()
        report.wall_seconds = time.perf_counter() - start
        if scheduler.kind in ("synchronous", "threads"):
            report.cache_peak_bytes = max(report.cache_peak_bytes, job.cache_peak())
        # Every scheduler: the driver opens the run too (halo exchange's planning), and a
        # kernel or service that lives on kept each run's source (a helper's run found an
        # in-memory stack per call kept with worker processes and on a cluster).
        job.close()
    log.debug(
        "%s: %d blocks in %.2f s on %d %s worker(s), %.0f%% busy, %.2f GB decoded",
        label, report.done, report.wall_seconds, report.workers, report.scheduler,
        100 * report.busy_fraction, report.decoded_bytes / 1e9,
        extra={"fstack_report": report},
    )  # fmt: skip
    if report.failures:
        _raise_failures(report.failures)
    return report


def _raise_failures(failures: list[BaseException]) -> None:
    unique = list(dict.fromkeys(str(e) for e in failures))
    more = f" (and {len(unique) - 1} more)" if len(unique) > 1 else ""
    cls = SourceValueError if isinstance(failures[0], SourceValueError) else SourceReadError
    raise cls(f"{unique[0]}{more}; {len(failures)} block(s) could not be computed") from failures[0]


def _account(report: RunReport, outcomes: list[Outcome], bar: Progress, shown: int = 0) -> bool:
    """Add outcomes to the report (``shown`` of them already counted by the bar, as their
    blocks finished); False once too many blocks failed."""
    for outcome in outcomes:
        report.decoded_bytes += outcome.decoded
        report.block_seconds += outcome.seconds
        if outcome.error is None:
            report.done += 1
            if outcome.s_min == outcome.s_min:  # not NaN: some S of the block is defined
                known = report.s_min.get(outcome.lead, math.inf)
                report.s_min[outcome.lead] = min(known, outcome.s_min)
            report.deferred += outcome.deferred
        else:
            report.failures.append(outcome.error)
    if len(outcomes) > shown:
        with contextlib.suppress(Exception):  # a broken display must not fail the run
            bar.advance(len(outcomes) - shown)
    return len(report.failures) < FAILED_BLOCKS_LIMIT


def _run_exchange(job, exchange_with, report, bar, scheduler, stall_timeout, task_args) -> None:
    """Run ``job`` by halo exchange (:mod:`.exchange`) on ``scheduler``."""
    from .runners import runner_for

    done, budget = exchange_with
    ticks = reports_.Ticks(bar)
    with contextlib.ExitStack() as stack:
        waiter, reports, topic = None, list, ""
        if scheduler.kind == "processes":
            reports = reports_.queue_reports(scheduler.ticks)
            waiter = local_waiter(reports, ticks)
        elif scheduler.kind == "distributed":
            topic = f"fstack-dask-progress-{uuid.uuid4().hex}"
            reports = stack.enter_context(reports_.topic_reports(scheduler.client, topic))
            waiter = cluster_waiter(scheduler.client, stall_timeout, reports, ticks)
        runner = runner_for(scheduler, bar, waiter, ticks, reports, topic, job)
        bound: float | None = CLEANUP_SECONDS  # a stop's or a failure's clean-up: bounded
        try:
            exchange.run_exchange(
                job, runner, done=done, budget=budget, task_args=task_args,
                on_outcomes=lambda outcomes, shown: _account(report, outcomes, bar, shown),
            )  # fmt: skip
            bound = None
        except BaseException as exc:
            _raise_if_lost(scheduler, exc)
            raise
        finally:
            with contextlib.suppress(Exception):
                for nbytes, seconds, peak in runner.counts(job.token, bound):
                    report.decoded_bytes += nbytes
                    report.block_seconds += seconds
                    report.cache_peak_bytes = max(report.cache_peak_bytes, peak)


def _run_synchronous(job: Job, blocks, report: RunReport, bar: Progress) -> None:
    # The next blocks' reads are announced ahead, as for threads: a block announcing only
    # its own reads would find the units it shares with its neighbours already dropped.
    announced: deque[tuple[int, ...]] = deque()
    ahead = _lookahead(job, 1)
    it = iter(blocks)
    try:
        while True:
            while len(announced) < ahead and (block := next(it, None)) is not None:
                job.expect([block])
                announced.append(block)
            if not announced:
                return
            raise_if_stopped()
            if not _account(report, job.run([announced.popleft()], announce=False), bar):
                return
    finally:
        job.forget(list(announced))


def _lookahead(job: Job, workers: int) -> int:
    """Blocks announced ahead of the running ones: one row of a strip, and the workers'."""
    return job.plan.strip + 2 * workers + 1


def _run_threads(job: Job, blocks, report: RunReport, bar: Progress, workers: int) -> None:
    announced: deque[tuple[int, ...]] = deque()
    ahead = _lookahead(job, workers)
    it = iter(blocks)

    def refill() -> None:
        while len(announced) < ahead:
            block = next(it, None)
            if block is None:
                return
            job.expect([block])
            announced.append(block)

    pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="fstack-dask")
    running: set[cf.Future] = set()
    try:
        refill()
        while announced or running:
            while announced and len(running) < 2 * workers:
                block = announced.popleft()
                running.add(pool.submit(job.run, [block], announce=False))
                refill()
            done, running = first_done(running)
            for future in done:
                if not _account(report, future.result(), bar):
                    return
    finally:
        for future in running:
            future.cancel()
        job.forget(list(announced))
        # no write lands after we return, even through a second Ctrl-C
        finish_despite_interrupts(pool.shutdown, wait=True, cancel_futures=True)


def _runs(job: Job, blocks, n_tasks_hint: int) -> Iterator[list[tuple[int, ...]]]:
    """Consecutive blocks of one strip row-band, grouped into runs for one task each."""
    size = max(1, n_tasks_hint)
    run: list[tuple[int, ...]] = []
    for block in blocks:
        if run and (len(run) >= size or _strip_of(job, block) != _strip_of(job, run[-1])):
            yield run
            run = []
        run.append(block)
    if run:
        yield run


def _strip_of(job: Job, block: tuple[int, ...]) -> tuple[int, ...]:
    return (*block[:-2], block[-1] // job.plan.strip)


def _run_length(job: Any, processes: int) -> int:
    """Blocks per task: a whole strip (top to bottom, so units are reused down it), split
    when there are fewer strips than processes."""
    plan = job.plan
    ny, nx = plan.grid
    n_strips = -(-nx // plan.strip) * plan.n_images
    per_strip = plan.strip * ny
    segments = max(1, -(-processes // n_strips))
    return max(1, -(-per_strip // segments))


def _run_runs(
    job, blocks, report, bar, scheduler: Scheduler, stall_timeout: float, task_args=()
) -> None:
    length = _run_length(job, scheduler.processes)
    window = 2 * scheduler.processes * scheduler.workers
    runs = _runs(job, blocks, length)
    ticks = reports_.Ticks(bar)
    with contextlib.ExitStack() as stack:
        if scheduler.kind == "processes":
            pool = scheduler.client
            submit = lambda run, rid: pool.submit(reports_.run_in_process, job, run, rid)  # noqa: E731
            reports = reports_.queue_reports(scheduler.ticks)
            wait = local_waiter(reports, ticks)
        else:
            client = scheduler.client
            topic = f"fstack-dask-progress-{uuid.uuid4().hex}"
            reports = stack.enter_context(reports_.topic_reports(client, topic))
            submit = lambda run, rid: client.submit(  # noqa: E731
                reports_.run_on_worker, job, run, topic, rid, *task_args, pure=False
            )
            wait = cluster_waiter(client, stall_timeout, reports, ticks)
        _submit_and_wait(runs, submit, wait, ticks, window, report, bar, scheduler, reports, job)


def _submit_and_wait(runs, submit, wait, ticks, window, report, bar, scheduler, reports,
                     job) -> None:  # fmt: skip
    """Keep ``window`` tasks in flight until every run is done (see ``_run_runs``)."""
    running: set[Any] = set()

    def count() -> None:
        for run_id in reports():
            ticks.tick(run_id)

    def collect(done: set[Any]) -> bool:
        count()  # the blocks reported before their tasks' results: one by one
        for future in done:
            # (a cluster's: fetched with the stall checks, also where its worker died since)
            cluster = scheduler.kind == "distributed"
            outcomes = fetched(scheduler.client, future, wait) if cluster else future.result()
            if not _account(report, outcomes, bar, shown=ticks.finished(future)):
                return False
        return True

    try:
        for run in runs:
            run_id = next(_run_ids)
            future = submit(run, run_id)
            ticks.started(future, run_id, len(run))
            running.add(future)
            if len(running) < window:
                continue
            done, running = wait(running)
            if not collect(done):
                break
        else:
            while running:
                done, running = wait(running)
                if not collect(done):
                    break
        if running:  # too many blocks failed: no task may still write once this returns
            _drain(running, scheduler, count, job)
    except BaseException as exc:
        finish_despite_interrupts(_drain, running, scheduler, count, job)
        with contextlib.suppress(Exception):  # what the stopped tasks finished, on disk
            count()
        _raise_if_lost(scheduler, exc)
        raise


def _raise_if_lost(scheduler: Scheduler, exc: BaseException) -> None:
    """A cluster run's failure because its scheduler went away, said as such."""
    if scheduler.kind == "distributed":
        error = lost_error(scheduler.client, scheduler.address, exc) or killed_error(exc)
        if error is not None:
            raise error from exc


def _drain(running: set[Any], scheduler: Scheduler, count: Callable[[], None], job: Job) -> None:
    """After an error: cancel what has not started and wait for what is running, counting
    the blocks it reports (``count``: our worker processes would block on a full queue); on
    a cluster, end ``job``'s run on the workers (:func:`.runners.stop_run_on_workers`)."""
    if scheduler.kind == "processes":
        pool = scheduler.client
        pool.cancel(running)  # (not a dead process's: see ProcessPool.cancel)
        end = time.monotonic() + 600
        with contextlib.suppress(Exception):
            while running and time.monotonic() < end and not stop_waiting():
                count()
                _, running = cf.wait(running, timeout=POLL)
                running = pool.live(running)  # a dead process's may stay pending for ever
        return
    client = scheduler.client
    if client.status != "running":
        return  # the scheduler is gone: each call would wait out dask's connect timeout
    from .runners import stop_run_on_workers

    with contextlib.suppress(Exception):
        client.cancel(list(running))
    # (a wait for the cancelled tasks returned at once: a cancel stops none that runs)
    stop_run_on_workers(client, job)
