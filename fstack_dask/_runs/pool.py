"""Worker processes for ``scheduler="processes"``: spawned once per run, each addressable,
ending with their parent even when it is SIGKILLed.

Each process is a one-worker executor of its own, so that a task can be sent to the process
that holds what it needs (halo exchange keeps a block's decoded core in the process that
decoded it, for the task that fuses it); :meth:`ProcessPool.submit` without a process picks
the least busy one.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["ProcessPool", "process_pool"]


class ProcessPool:
    """``processes`` single-worker process executors (see the module docstring)."""

    def __init__(self, processes: int):
        context = multiprocessing.get_context("spawn")  # no forked copies of our lock's thread
        # where the workers report finished blocks (written whole and in order by each put,
        # so a task's reports are there before its result)
        self.ticks = context.SimpleQueue()
        self.executors = [
            cf.ProcessPoolExecutor(
                1,
                mp_context=context,
                initializer=_die_with_parent,
                initargs=(os.getpid(), self.ticks),
            )  # fmt: skip
            for _ in range(max(1, int(processes)))
        ]
        self._busy = [0] * len(self.executors)

    @property
    def slots(self) -> list[int]:
        return list(range(len(self.executors)))

    def submit(self, fn: Callable, *args: Any) -> cf.Future:
        """Run ``fn(*args)`` in the least busy process."""
        slot = min(self.slots, key=self._busy.__getitem__)
        return self.submit_to(slot, fn, *args)

    def submit_to(self, slot: int, fn: Callable, *args: Any) -> cf.Future:
        """Run ``fn(*args)`` in process ``slot``."""
        future = self.executors[slot].submit(fn, *args)
        self._busy[slot] += 1
        future.add_done_callback(lambda _f, k=slot: self._done(k))
        return future

    def _done(self, slot: int) -> None:
        self._busy[slot] -= 1

    def shutdown(self) -> None:
        for executor in self.executors:
            executor.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            self.ticks.close()


@contextlib.contextmanager
def process_pool(processes: int) -> Iterator[ProcessPool]:
    pool = ProcessPool(processes)
    try:
        yield pool
    finally:
        pool.shutdown()


def _die_with_parent(parent: int, ticks: Any = None) -> None:
    """Worker processes end with their parent, even when it is SIGKILLed (Linux); they
    report finished blocks on ``ticks``."""
    from . import reports

    reports.set_worker_ticks(ticks)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
