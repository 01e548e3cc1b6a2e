"""How tasks of many blocks report each block as it finishes, so that progress moves block
by block on every scheduler (``schedulers`` runs the tasks).

Our worker processes put their run id on a queue the pool hands them when they start
(written whole and in order, so a task's reports are there before its result); cluster
workers log an event on a topic of their scheduler, which the driver subscribes to. The
driver counts each report once (:class:`Ticks`); a report that arrives after its task's
result, or a rerun's after a worker was lost, is ignored, and whatever a task's reports left
uncounted is counted with its result.
"""

from __future__ import annotations

import contextlib
import queue
from collections.abc import Callable, Iterator
from typing import Any

from .blocks import Outcome
from .progress import Progress

__all__ = ["Ticks", "queue_reports", "run_in_process", "run_on_worker", "topic_reports"]

worker_ticks: Any = None  # in a worker process of ours: the queue it reports blocks on


def set_worker_ticks(ticks: Any) -> None:
    """Where this worker process reports finished blocks (called when it starts)."""
    global worker_ticks
    worker_ticks = ticks


class Ticks:
    """Progress of tasks of many blocks, block by block: each task reports its finished
    blocks under its run id; the bar counts each report once, up to the task's size, and
    the rest when the task's result comes (reports that arrive after it, or a rerun's after
    a worker was lost, are ignored)."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.runs: dict[Any, int] = {}  # future -> run id
        self.counted: dict[int, int] = {}
        self.sizes: dict[int, int] = {}

    def started(self, future: Any, run_id: int, size: int) -> None:
        self.runs[future], self.counted[run_id], self.sizes[run_id] = run_id, 0, size

    def tick(self, run_id: Any) -> None:
        n = self.counted.get(run_id)
        if n is None or n >= self.sizes[run_id]:
            return
        self.counted[run_id] = n + 1
        with contextlib.suppress(Exception):  # a broken display must not fail the run
            self.bar.advance(1)

    def finished(self, future: Any) -> int:
        """Blocks of ``future``'s task the bar has counted already."""
        run_id = self.runs.pop(future, None)
        self.sizes.pop(run_id, None)
        return self.counted.pop(run_id, 0)


def queue_reports(ticks: Any) -> Callable[[], list[Any]]:
    """What our worker processes reported since the last call (run ids, one per block)."""

    def reports() -> list[Any]:
        out = []
        while ticks is not None and not ticks.empty():
            out.append(ticks.get())
        return out

    return reports


@contextlib.contextmanager
def topic_reports(client: Any, topic: str) -> Iterator[Callable[[], list[Any]]]:
    """What cluster workers reported on ``topic`` (events through their scheduler)."""
    inbox: queue.SimpleQueue = queue.SimpleQueue()

    def reports() -> list[Any]:
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(inbox.get_nowait())
        return out

    try:
        client.subscribe_topic(topic, lambda event: inbox.put(event[1]))
    except Exception:  # an old scheduler without events: counted per task instead
        yield reports
        return
    try:
        yield reports
    finally:
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(topic)


def _quietly(report: Callable[[], None] | None) -> Callable[[], None] | None:
    """``report``, never failing the block it reports."""
    if report is None:
        return None

    def call() -> None:
        with contextlib.suppress(Exception):
            report()

    return call


def run_in_process(job: Any, run: list[tuple[int, ...]], run_id: int) -> list[Outcome]:
    """A task in one of our worker processes: ``run``'s blocks, each reported as it ends."""
    ticks = worker_ticks
    return job.run(run, on_block=_quietly(None if ticks is None else lambda: ticks.put(run_id)))


def fuse_rows_in_process(job: Any, blocks: list, remote: list, run_id: int, *task_args: Any):
    """Halo exchange's fuse (``halo.fuse_rows``) in one of our worker processes, each block
    reported as it ends."""
    from .halo import fuse_rows

    ticks = worker_ticks
    report = _quietly(None if ticks is None else lambda: ticks.put(run_id))
    return fuse_rows(job, blocks, remote, *task_args, on_block=report)


def fuse_rows_on_worker(job: Any, blocks: list, remote: list, topic: str, run_id: int,
                        *task_args: Any):  # fmt: skip
    """Halo exchange's fuse on a cluster worker, each block reported as an event."""
    from .halo import fuse_rows

    return fuse_rows(job, blocks, remote, *task_args, on_block=_quietly(_event(topic, run_id)))


def _event(topic: str, run_id: int) -> Callable[[], None] | None:
    try:
        from distributed import get_worker

        worker = get_worker()
    except Exception:  # not in a worker: nobody to report to
        return None
    return lambda: worker.log_event(topic, run_id)


def run_on_worker(job: Any, run: list, topic: str, run_id: int, *task_args: Any) -> list:
    """A task on a cluster worker: ``run``'s blocks, each reported as an event on ``topic``."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except Exception:  # not in a worker: nobody to report to
        worker = None
    report = None if worker is None else lambda: worker.log_event(topic, run_id)
    return job.run(run, *task_args, on_block=_quietly(report))
