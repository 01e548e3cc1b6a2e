"""Where halo exchange's tasks run (:class:`~.exchange.Runner`), for each scheduler.

* synchronous: each task runs as it is submitted, in this thread;
* threads: a thread pool; one registry (this process's) for every task, so no band travels;
* processes: our worker processes (:mod:`.pool`), a task sent to the process of its strip;
* a distributed cluster: a task pinned to its strip's worker (another one only if that one
  is gone); a fuse is given the futures of its neighbours' decodes on other workers, and
  dask moves their bands between workers itself, never through this process.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from typing import Any

from .exchange import Runner
from .halo import forget_run

__all__ = ["runner_for"]


class _Synchronous(Runner):
    def submit(self, slot: Any, fn: Callable, *args: Any) -> cf.Future:
        future: cf.Future = cf.Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed over as a task's error is
            future.set_exception(exc)
        return future

    def counts(self, token: str) -> list[tuple[int, float, int]]:
        return [forget_run(token)]

    def close(self, running: set[Any]) -> None:
        return None


class _Threads(Runner):
    def __init__(self, workers: int):
        self.threads = max(1, workers)
        self.pool = cf.ThreadPoolExecutor(self.threads, thread_name_prefix="fstack-dask")

    def submit(self, slot: Any, fn: Callable, *args: Any) -> cf.Future:
        return self.pool.submit(fn, *args)

    def counts(self, token: str) -> list[tuple[int, float, int]]:
        return [forget_run(token)]

    def close(self, running: set[Any]) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)  # no write lands after we return


class _Processes(Runner):
    def __init__(self, pool: Any):
        self.pool = pool
        self.slots = pool.slots

    def submit(self, slot: Any, fn: Callable, *args: Any) -> cf.Future:
        return self.pool.submit_to(slot, fn, *args)

    def counts(self, token: str) -> list[tuple[int, float, int]]:
        return [f.result() for f in [self.pool.submit_to(k, forget_run, token) for k in self.slots]]

    def close(self, running: set[Any]) -> None:
        for future in running:
            future.cancel()
        cf.wait(running, timeout=600)


class _Cluster(Runner):
    def __init__(self, client: Any, waiter: Callable, threads: int):
        self.client, self.waiter = client, waiter
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
        self.slots = sorted(workers) or [None]
        self.threads = max(1, threads)

    def submit(self, slot: Any, fn: Callable, *args: Any) -> Any:
        pinned = {"workers": [slot], "allow_other_workers": True} if slot is not None else {}
        return self.client.submit(fn, *args, pure=False, **pinned)

    def wait(self, handles: set[Any]) -> tuple[set[Any], set[Any]]:
        return self.waiter(handles)

    def check(self, handle: Any) -> None:
        if handle.status != "finished":  # an error: raise it (a result would fetch bands)
            handle.result()

    def handed(self, handle: Any) -> Any:
        return handle  # dask resolves it on the worker, moving only what that worker lacks

    def counts(self, token: str) -> list[tuple[int, float, int]]:
        return list(self.client.run(forget_run, token).values())

    def close(self, running: set[Any]) -> None:
        import contextlib

        from distributed import wait

        # Best effort: the run's own error (an interrupt, a stall, a lost scheduler) is what
        # is reported, not the cancellation of the tasks it leaves.
        with contextlib.suppress(Exception):
            self.client.cancel(list(running))
            with self.client.as_current():
                wait(list(running), timeout=60)


def runner_for(scheduler: Any, waiter: Callable | None = None) -> Runner:
    """The runner of a :class:`~.schedulers.Scheduler`."""
    if scheduler.kind == "synchronous":
        return _Synchronous()
    if scheduler.kind == "threads":
        return _Threads(scheduler.workers)
    if scheduler.kind == "processes":
        return _Processes(scheduler.client)
    return _Cluster(scheduler.client, waiter, scheduler.workers)
