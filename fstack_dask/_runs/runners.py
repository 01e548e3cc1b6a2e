"""Where halo exchange's tasks run (:class:`~.exchange.Runner`), for each scheduler.

* synchronous: each task runs as it is submitted, in this thread;
* threads: a thread pool; one registry (this process's) for every task, so no band travels;
* processes: our worker processes (:mod:`.pool`), a task sent to the process of its strip;
* a distributed cluster: a task pinned to its strip's worker (another one only if that one
  is gone); a fuse is given the futures of its neighbours' decodes on other workers, and
  dask moves their bands between workers itself, never through this process. Our tasks
  are kept out of dask's work stealing (:func:`_unstealable`): an idle worker that stole a
  decode would hold the core in its own registry, and the strip's fuse would decode it again.

Each fuse reports its blocks as they end (:mod:`.reports`), so progress moves block by block.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from . import fence, reports
from .cleanup import CLEANUP_SECONDS, run_on_workers
from .exchange import Runner
from .halo import forget_run, fuse_rows
from .waiting import fetched, settled

__all__ = ["runner_for", "stop_run_on_workers"]

log = logging.getLogger(__name__)
_fuse_ids = itertools.count()
#: The key prefix of our tasks on a cluster (``TASK_PREFIX-<function>-<hex>``), which the
#: scheduler's work stealing is told to leave alone.
TASK_PREFIX = "fstack-dask"
_PREFIXES = tuple(f"{TASK_PREFIX}-{name}" for name in ("decode", "fuse", "task"))


def _never_steal(prefixes: tuple[str, ...], dask_scheduler: Any = None) -> bool:
    """On the scheduler: work stealing skips tasks whose prefix is among its "fast tasks"
    (tasks too short to be worth moving); ours are added there."""
    from distributed import stealing

    stealing.fast_tasks.update(prefixes)
    return True


def _unstealable(client: Any) -> bool:
    """Keep our tasks where they are pinned (loosely, so a lost worker's go elsewhere).

    dask has no per-task switch for this: strict restrictions (``allow_other_workers=False``)
    would leave a lost worker's tasks waiting forever. So the scheduler's set of tasks that
    work stealing never moves (``distributed.stealing.fast_tasks``) gets our key prefixes.
    Best effort: a scheduler that refuses to run functions (or a future dask without that
    set) still runs everything, at the cost of decodes repeated where tasks were stolen.
    """
    try:
        return bool(client.run_on_scheduler(_never_steal, _PREFIXES))
    except Exception:
        return False


class _InProcess(Runner):
    """Synchronous and threads: tasks in this process, blocks counted as they end."""

    def __init__(self, bar: Any, workers: int):
        self.bar, self.threads = bar, max(1, workers)
        self.pool = cf.ThreadPoolExecutor(self.threads, thread_name_prefix="fstack-dask")
        self._shown: dict[Any, list[int]] = {}
        self._lock = threading.Lock()

    def submit(self, slot: Any, fn: Callable, *args: Any) -> cf.Future:
        return self.pool.submit(fn, *args)

    def submit_fuse(self, slot: Any, job: Any, blocks: list, remote: list, task_args: tuple):
        counted = [0]

        def on_block() -> None:
            with self._lock, contextlib.suppress(Exception):  # never fails the block
                counted[0] += 1
                self.bar.advance(1)

        future = self.pool.submit(fuse_rows, job, blocks, remote, *task_args, on_block=on_block)
        self._shown[future] = counted
        return future

    def shown(self, handle: Any) -> int:
        with self._lock:
            return self._shown.pop(handle, [0])[0]

    def counts(self, token: str, seconds: float | None = None) -> list[tuple[int, float, int]]:
        return [forget_run(token)]

    def close(self, running: set[Any]) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)  # no write lands after we return


class _Reported(Runner):
    """Processes and clusters: blocks reported by the workers, counted by ``ticks``."""

    waiter: Callable
    ticks: reports.Ticks
    reports: Callable[[], list[Any]]

    def wait(self, handles: set[Any]) -> tuple[set[Any], set[Any]]:
        return self.waiter(handles)

    def shown(self, handle: Any) -> int:
        for run_id in self.reports():  # the blocks reported before the task's result
            self.ticks.tick(run_id)
        return self.ticks.finished(handle)


class _Synchronous(_InProcess):
    """Each task runs as it is submitted, in this thread (as dask's synchronous scheduler:
    a debugger, a signal, a profiler see the work where it happens)."""

    def __init__(self, bar: Any):
        super().__init__(bar, 1)
        self.pool.shutdown()

    def submit(self, slot: Any, fn: Callable, *args: Any, **kwargs: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        future.set_result(fn(*args, **kwargs))  # a failure stops the run here and now
        return future

    def submit_fuse(self, slot: Any, job: Any, blocks: list, remote: list, task_args: tuple):
        counted = [0]

        def on_block() -> None:
            with contextlib.suppress(Exception):  # never fails the block
                counted[0] += 1
                self.bar.advance(1)

        future = self.submit(slot, fuse_rows, job, blocks, remote, *task_args, on_block=on_block)
        self._shown[future] = counted
        return future

    def close(self, running: set[Any]) -> None:
        return None


class _Processes(_Reported):
    def __init__(self, pool: Any, waiter: Callable, ticks: reports.Ticks, reported: Callable):
        self.pool, self.waiter, self.ticks, self.reports = pool, waiter, ticks, reported
        self.slots = pool.slots

    def submit(self, slot: Any, fn: Callable, *args: Any) -> cf.Future:
        return self.pool.submit_to(slot, fn, *args)

    def submit_fuse(self, slot: Any, job: Any, blocks: list, remote: list, task_args: tuple):
        run_id = next(_fuse_ids)
        future = self.pool.submit_to(slot, reports.fuse_rows_in_process, job, blocks, remote,
                                     run_id, *task_args)  # fmt: skip
        self.ticks.started(future, run_id, len(blocks))
        return future

    def counts(self, token: str, seconds: float | None = None) -> list[tuple[int, float, int]]:
        return self.pool.ask_each(forget_run, token)

    def close(self, running: set[Any]) -> None:
        self.pool.cancel(running)
        self.pool.wait(running)


class _Cluster(_Reported):
    def __init__(self, client: Any, waiter: Callable, ticks: reports.Ticks, reported: Callable,
                 topic: str, threads: int, job: Any = None):  # fmt: skip
        self.client, self.waiter, self.ticks, self.topic = client, waiter, ticks, topic
        self.job = job
        self.reports = reported
        self.threads = max(1, threads)
        if not _unstealable(client):
            log.info("this cluster's scheduler did not let us keep our tasks out of work "
                     "stealing: a stolen task's units may be decoded twice")  # fmt: skip
        self.refresh()

    def refresh(self) -> None:
        with contextlib.suppress(Exception):  # keep the workers known before
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
            self.slots = sorted(workers) or [None]
            threads = [int(w.get("nthreads", 1)) for w in workers.values()]
            self.threads = max([self.threads, *threads])
        if not getattr(self, "slots", None):
            self.slots = [None]

    def submit(self, slot: Any, fn: Callable, *args: Any) -> Any:
        pinned = {"workers": [slot], "allow_other_workers": True} if slot is not None else {}
        kind = "decode" if "decode" in fn.__name__ else "fuse" if "fuse" in fn.__name__ else "task"
        key = f"{TASK_PREFIX}-{kind}-{uuid.uuid4().hex}"
        return self.client.submit(fn, *args, key=key, pure=False, **pinned)

    def submit_fuse(self, slot: Any, job: Any, blocks: list, remote: list, task_args: tuple):
        run_id = next(_fuse_ids)
        future = self.submit(slot, reports.fuse_rows_on_worker, job, blocks, remote,
                             self.topic, run_id, *task_args)  # fmt: skip
        self.ticks.started(future, run_id, len(blocks))
        return future

    def check(self, handle: Any) -> None:
        settled(handle, self.waiter)  # (a task lost with its worker: computed again first)
        if handle.status != "finished":  # an error: raise it (a result would fetch bands)
            handle.result()

    def result(self, handle: Any) -> Any:
        return fetched(self.client, handle, self.waiter)

    def handed(self, handle: Any) -> Any:
        return handle  # dask resolves it on the worker, moving only what that worker lacks

    def counts(self, token: str, seconds: float | None = None) -> list[tuple[int, float, int]]:
        if self.client.status != "running":
            return []  # the scheduler is gone: the call would wait out the connect timeout
        # (a stopped run's is bounded: a worker that cannot answer held a Ctrl-C for ever)
        return list(run_on_workers(self.client, forget_run, token, seconds=seconds).values())

    def close(self, running: set[Any]) -> None:
        # Best effort: the run's own error (an interrupt, a stall, a lost scheduler) is what
        # is reported, not the cancellation of the tasks it leaves.
        if self.client.status != "running":
            return  # the scheduler is gone: each call would wait out dask's connect timeout
        with contextlib.suppress(Exception):
            self.client.cancel(list(running))
        if running and self.job is not None:
            # a cancel stops no task that runs (a wait for them returned at once, cancelled):
            # the run ends on each worker, or keeps its lock (:mod:`.fence`)
            stop_run_on_workers(self.client, self.job)


def stop_run_on_workers(client: Any, job: Any) -> None:
    """End ``job``'s run on every worker of ``client`` (its late tasks write nothing), waiting
    for its writes in flight there; where a worker does not confirm, the run keeps its lock."""
    key = job.fence_key
    if key is None:
        return
    why = fence.stop_on_workers(client, key, CLEANUP_SECONDS)
    if why is not None and job.lease is not None:
        log.debug("the stopped run keeps its lock: %s", why)  # (its error is the one line)
        job.lease.keep_for_writers(why)


def runner_for(scheduler: Any, bar: Any, waiter: Callable | None = None,
               ticks: reports.Ticks | None = None, reported: Callable = list,
               topic: str = "", job: Any = None) -> Runner:  # fmt: skip
    """The runner of a :class:`~.scheduler_choice.Scheduler` (``waiter``, ``ticks``,
    ``reported``, ``topic``: how the processes and a cluster wait and count their blocks'
    reports; ``job``: the run a cluster's stop ends on its workers)."""
    if scheduler.kind == "synchronous":
        return _Synchronous(bar)
    if scheduler.kind == "threads":
        return _InProcess(bar, scheduler.workers)
    if scheduler.kind == "processes":
        return _Processes(scheduler.client, waiter, ticks, reported)
    return _Cluster(scheduler.client, waiter, ticks, reported, topic, scheduler.workers, job)
