"""Which runs may still write from this process: a stopped run's late tasks write nothing.

A cluster's task runs on after its run cancels it (a cancel stops only a task that has not
started), and the stopped run released dst's lock at once: a later run into dst (an
``--overwrite`` with other parameters) took it, and the late task's block landed in that
output, which then ended "complete" with an old block in it. The lease check before each
write (:class:`~fstack_dask._outputs.lock.Lease`) refuses a write only until the check has
passed; a task paused between its check and its write (a frozen or swapping worker, a slow
file server) wrote whenever it went on.

So each block's writes, from its lease check to its done-marker, are one *write* here
(:func:`writing`), counted while it runs and refused once its run has *ended* in this
process (:func:`end`). A stopped run ends itself on every worker and waits there, bounded,
for the writes in flight (:func:`stop_writes`, run by :func:`stop_on_workers`): where every
worker confirms that none is left, no write of the run can land any more and its lock is
released as before; where one does not (it did not answer, or a write is still running),
the run keeps its lock (:meth:`~fstack_dask._outputs.lock.DestinationLock.keep_for_writers`).

The runs ended here are remembered (the last ``REMEMBERED``, a bounded memory for a worker
that lives for months): a late task of a forgotten run (``halo.forget_run``,
``blocks.close_on_workers``) registers nothing either, no core, no opened source.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .._errors import LeaseLostError

__all__ = ["REMEMBERED", "RunEndedError", "end", "ended", "refuse_ended", "stop_on_workers",
           "stop_writes", "writing"]  # fmt: skip

#: Runs ended in this process that are remembered (their keys: a few dozen bytes each).
REMEMBERED = 4096

_lock = threading.Lock()
_writing: dict[str, int] = {}
_ended: OrderedDict[str, None] = OrderedDict()


class RunEndedError(LeaseLostError):
    """A task of a run that has ended in this process (stopped, failed or finished): it did
    nothing (its run's driver no longer waits for it)."""


def _remember(key: str) -> None:
    _ended[key] = None
    _ended.move_to_end(key)
    while len(_ended) > REMEMBERED:
        _ended.popitem(last=False)


def end(key: str) -> None:
    """The run ``key`` has ended in this process: no task of it writes or registers more."""
    with _lock:
        _remember(key)


def ended(key: str) -> bool:
    with _lock:
        return key in _ended


def refuse_ended(key: str) -> None:
    """Raise :class:`RunEndedError` where the run ``key`` has ended in this process."""
    if ended(key):
        raise RunEndedError(f"run {key} has ended: this late task of it did nothing")


@contextlib.contextmanager
def writing(key: str) -> Iterator[None]:
    """One block's writes for the run ``key`` (its lease check to its marker): refused once
    the run has ended here, counted while they run."""
    with _lock:
        if key in _ended:
            raise RunEndedError(f"run {key} has ended: this late task of it wrote nothing")
        _writing[key] = _writing.get(key, 0) + 1
    try:
        yield
    finally:
        with _lock:
            left = _writing[key] - 1
            if left:
                _writing[key] = left
            else:
                del _writing[key]


async def stop_writes(key: str, seconds: float) -> int:
    """On a worker: end the run ``key`` here, then wait up to ``seconds`` for its writes in
    flight; returns how many are still running (0: none of its writes can land any more).
    A coroutine: the worker's event loop goes on meanwhile (its tasks' reports, heartbeats)."""
    deadline = time.monotonic() + seconds
    with _lock:
        _remember(key)
        left = _writing.get(key, 0)
    while left and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        with _lock:
            left = _writing.get(key, 0)
    return left


def stop_on_workers(client: Any, key: str, seconds: float) -> str | None:
    """End the run ``key`` on every worker of ``client``'s cluster and wait up to ``seconds``
    for its writes there; None once every worker confirmed that none is left, else why not
    (said where the run keeps its lock)."""
    try:
        # (Client.run hands what it does not take to Client.sync, whose limit this is)
        answers = dict(client.run(stop_writes, key, seconds, callback_timeout=seconds + 2))
    except TimeoutError:
        return f"a worker of the cluster did not answer within {seconds + 2:g} s"
    except Exception as exc:
        why = " ".join(str(exc).split()) or type(exc).__name__
        return f"its workers could not be asked ({why})"
    busy = {worker: n for worker, n in answers.items() if n}
    if busy:
        return (f"{sum(busy.values())} block write(s) still ran on {', '.join(sorted(busy))} "
                f"after {seconds:g} s")  # fmt: skip
    return None
