"""Worker processes for ``scheduler="processes"``: spawned once, kept for the next run,
ending with their parent even when it is SIGKILLed.

Each process is a one-worker executor of its own, so that a task can be sent to the process
that holds what it needs (halo exchange keeps a block's decoded core in the process that
decoded it, for the task that fuses it); :meth:`ProcessPool.submit` without a process picks
the least busy one.

Starting the processes costs more than a small run's work (each imports NumPy, zarr, dask and
numba and loads the compiled kernel: 2-3 s of a 2-core machine, ``benchmarks/RESULTS.md``), so
a run that ends cleanly keeps its pool for the next one, as joblib's loky keeps its executor:
idle for up to ``FSTACK_DASK_PROCESS_POOL_IDLE`` seconds (300; 0 ends the processes with each
run). Only a pool whose tasks all ended is kept, only in the main thread (a process dies with
the thread that started it), and not in a multiprocessing child (whose exit would wait for the
kept processes forever). A run takes it only when nothing the processes inherited at their
start has changed since (the working folder, ``sys.path``, the environment); otherwise a new
pool is started; a forked child never takes its parent's. What a run leaves in a process is
forgotten at its end (:func:`~.blocks.close_on_workers`).
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import contextlib
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .._errors import finish_despite_interrupts, stop_waiting
from .._imports import STOP_SIGNALS

__all__ = ["ProcessPool", "cancel_pending", "end_kept", "kept", "process_pool"]

#: How long a pool waits, idle, for the next run (seconds); 0: none is kept.
IDLE_ENV = "FSTACK_DASK_PROCESS_POOL_IDLE"
DEFAULT_IDLE_S = 300.0


class ProcessPool:
    """``processes`` single-worker process executors (see the module docstring)."""

    def __init__(self, processes: int):
        _start_resource_tracker()
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
        try:
            with _signals_deferred():  # each process started now, sent its start-up data whole
                for executor in self.executors:
                    executor.submit(int)
        except BaseException:  # (one that came meanwhile, delivered): none left running
            self.shutdown()
            raise
        self._busy = [0] * len(self.executors)
        self._submitted: list[cf.Future] = []
        self._slot: dict[cf.Future, int] = {}
        self.started_with = _inherited(len(self.executors))
        self.parent = (
            os.getpid()
        )  # a forked child sees this pool, but its processes are not its own

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
        self._submitted.append(future)
        self._slot[future] = slot
        self._busy[slot] += 1
        future.add_done_callback(lambda _f, k=slot: self._done(k))
        return future

    def _done(self, slot: int) -> None:
        self._busy[slot] -= 1

    def reusable(self) -> bool:
        """Every task ended, and every process is alive (a run may take the pool)."""
        if not all(f.done() for f in self._submitted):
            return False
        self._submitted.clear()
        self._slot.clear()
        return all(_alive(executor) for executor in self.executors)

    def cancel(self, futures: set[cf.Future]) -> None:
        """Cancel ``futures`` not started, but not those of a process that died: Python 3.11's
        executor, finding its process gone, fails on each cancelled future with a traceback
        on stderr (``InvalidStateError: CANCELLED``)."""
        for future in futures:
            if _alive(self.executors[self._slot.get(future, 0)]):
                future.cancel()

    def wait(self, futures: set[cf.Future], timeout: float = 600) -> None:
        """Wait for ``futures`` to end, but not for those of a process that died: SIGTERM to
        the process group (scancel, systemd, ``timeout``) ends the workers too, and Python
        3.11's executor then leaves their futures pending for ever (its manager thread fails
        on a cancelled one). A run so stopped waited for 60 s (a review, 2026-12-05)."""
        pending, end = set(futures), time.monotonic() + timeout
        while pending and time.monotonic() < end and not stop_waiting():
            _, pending = cf.wait(pending, timeout=0.2)
            pending = self.live(pending)

    def live(self, futures: set[cf.Future]) -> set[cf.Future]:
        """Those of ``futures`` whose process is alive: one whose process died may stay
        pending for ever (see :meth:`wait`)."""
        return {f for f in futures if _alive(self.executors[self._slot.get(f, 0)])}

    def ask_each(self, fn: Callable, *args: Any, timeout: float = 60) -> list[Any]:
        """``fn(*args)`` in each process that is alive: the answers of those that gave one.
        A stopped run asked a process that had just died, before its executor knew it: the
        request, queued behind tasks the stop had cancelled, was never answered (CPython 3.11's
        manager thread fails on those) and the run waited for its 60 s grace."""
        asked = {self.submit_to(k, fn, *args) for k in self.slots if _alive(self.executors[k])}
        self.wait(asked, timeout)
        done = [f for f in asked if f.done() and not f.cancelled()]
        return [f.result() for f in done if f.exception() is None]

    def drain(self) -> None:
        """Drop reports left from an earlier run (each is ignored anyway: its id is not
        this run's)."""
        with contextlib.suppress(Exception):
            while not self.ticks.empty():
                self.ticks.get()

    def shutdown(self) -> None:
        finish_despite_interrupts(self._shutdown)  # every one, through a second Ctrl-C too

    def _shutdown(self) -> None:
        if stop_waiting():  # told to stop waiting: a task that never returns is not waited for
            for executor in self.executors:
                for process in list((getattr(executor, "_processes", None) or {}).values()):
                    with contextlib.suppress(Exception):
                        process.kill()
        for executor in self.executors:
            if not _alive(executor):
                # its process is gone (a signal to the process group): the feeder thread of
                # its task queue may be blocked writing to it, and the interpreter's exit
                # would join that thread for ever (Python 3.11 leaves it so)
                queue = getattr(executor, "_call_queue", None)
                with contextlib.suppress(Exception):
                    queue.cancel_join_thread()
            executor.shutdown(wait=True, cancel_futures=True)
        with contextlib.suppress(Exception):
            self.ticks.close()


@contextlib.contextmanager
def process_pool(processes: int) -> Iterator[ProcessPool]:
    """A pool of ``processes`` worker processes for one run: the one kept from an earlier
    run where it may be taken (see the module docstring), else a new one. Kept for the next
    run if this one ends without an error and with every task ended; shut down otherwise
    (its running tasks waited for, so that no write lands after the run)."""
    idle = idle_seconds()
    # only the main thread's pool is kept: a process dies with the thread that started it;
    # and not in a multiprocessing child, whose exit joins its children without telling the
    # pool to end (it would wait forever)
    main = threading.current_thread() is threading.main_thread()
    main = main and multiprocessing.parent_process() is None
    pool = (_take(processes) if main else None) or ProcessPool(processes)
    ended = False
    try:
        yield pool
        ended = True
    except cf.process.BrokenProcessPool as exc:
        hint = _unguarded_script()
        if hint is None:
            raise
        raise type(exc)(f"{exc}; {hint}") from exc
    finally:
        if ended and idle > 0 and main and pool.reusable():
            _keep(pool, idle)
        else:
            pool.shutdown()


def _unguarded_script() -> str | None:
    """Why the processes may have died at their start: spawned processes import the script
    that started them, and one without ``if __name__ == "__main__":`` runs its fusion again
    in each of them, which multiprocessing refuses (a wall of tracebacks, then a broken pool).
    None where ``__main__`` is no script file or names ``__name__``."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or getattr(main, "__spec__", None) is not None:
        return None  # python -c, a notebook, python -m: not imported again by name
    import tokenize

    try:  # the name in the code, not in a comment or a string
        with tokenize.open(path) as f:
            if any(t.string == "__name__" for t in tokenize.generate_tokens(f.readline)):
                return None
    except (OSError, SyntaxError, tokenize.TokenError):
        return None
    return (
        f"worker processes start by importing the script that started them ({path!r}), "
        "which runs fstack_dask again in each unless it does so under "
        "'if __name__ == \"__main__\":'; put the run there, or use scheduler='threads'"
    )


def idle_seconds() -> float:
    """``FSTACK_DASK_PROCESS_POOL_IDLE``, read when a run starts its pool."""
    text = os.environ.get(IDLE_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_IDLE_S
    except ValueError:
        value = math.nan
    value = 0.0 if value < 0 else value  # keeps none, as 0
    # "inf" or 1e308 passed, and the pool's idle timer died at its start with a traceback
    # (an adversarial run on names, 2026-12-06)
    if not 0 <= value <= threading.TIMEOUT_MAX:
        raise ValueError(
            f"{IDLE_ENV} must be a number of seconds from 0 to {threading.TIMEOUT_MAX:.0f} "
            f"(0: no pool kept), got {text!r}"
        )
    return value


def end_kept() -> None:
    """End the kept pool's processes now, if there is one."""
    global _kept
    with _kept_lock:
        found, _kept = _kept, None
    if found is not None:
        found[1].cancel()
        found[0].shutdown()


def kept() -> ProcessPool | None:
    """The pool waiting for the next run, if any (for tests)."""
    with _kept_lock:
        return _kept[0] if _kept is not None else None


def _inherited(processes: int) -> tuple[Any, ...]:
    """What a spawned process takes from this one when it starts, and keeps: a pool is
    taken only where all of it is the same."""
    environment = tuple(sorted(os.environ.items()))
    return processes, os.getcwd(), tuple(sys.path), environment


def _alive(executor: cf.ProcessPoolExecutor) -> bool:
    if getattr(executor, "_broken", False) or getattr(executor, "_shutdown_thread", False):
        return False
    processes = getattr(executor, "_processes", None) or {}
    return all(p.is_alive() for p in processes.values())


_kept_lock = threading.Lock()
_kept: tuple[ProcessPool, threading.Timer] | None = None


def _take(processes: int) -> ProcessPool | None:
    global _kept
    with _kept_lock:
        found, _kept = _kept, None
    if found is None:
        return None
    pool, timer = found
    if pool.parent != os.getpid():  # we are a fork of the process that kept it: not ours
        return None
    timer.cancel()
    if pool.started_with == _inherited(processes) and pool.reusable():
        pool.drain()
        return pool
    pool.shutdown()
    return None


def _keep(pool: ProcessPool, idle: float) -> None:
    global _kept
    timer = threading.Timer(idle, _expire, args=(pool,))
    timer.daemon = True  # an idle pool never holds the interpreter's exit up
    with _kept_lock:
        _kept = (pool, timer)  # none was kept: the main thread's run took it
    timer.start()


def _expire(pool: ProcessPool) -> None:
    global _kept
    with _kept_lock:
        if _kept is None or _kept[0] is not pool:
            return  # taken by a run meanwhile
        _kept = None
    pool.shutdown()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and the stop signals (:data:`~.._imports.STOP_SIGNALS`) in the main thread
    while the block runs, then deliver them, each once, in the order they came, to the
    handlers in place before. A Ctrl-C landing as a worker process had been spawned, before
    it was sent its start-up data, left it to print multiprocessing's "EOFError: Ran out of
    input" traceback under the run's one line (a fuzzer, 1 run in 50). A signal ignored,
    or at its default, is left so."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous: dict[int, Any] = {}
    try:
        for name in ("SIGINT", *STOP_SIGNALS):
            signum = getattr(signal, name, None)
            if signum is not None and callable(signal.getsignal(signum)):
                previous[signum] = signal.signal(signum, lambda n, _frame: came.append(n))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _deliver([*dict.fromkeys(came)])


def _deliver(signums: list[int]) -> None:
    """Raise each of ``signums`` in turn, the next one while the handler's exception of the
    one before goes up (as had they come one after the other as the run stopped): only the
    first was delivered, and a SIGTERM after a Ctrl-C (a batch system's kill) was lost, exit
    130."""
    if signums:
        try:
            signal.raise_signal(signums[0])
        finally:
            _deliver(signums[1:])


#: Signals a batch system or a terminal sends a job's whole process group (SIGINT and SIGTERM
#: aside, which multiprocessing's resource tracker ignores itself).
_GROUP_SIGNALS = ("SIGHUP", "SIGUSR1", "SIGUSR2", "SIGXCPU")


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (which our pool's semaphores register with)
    with :data:`_GROUP_SIGNALS` blocked, so that it outlives them as it outlives SIGTERM. A
    terminal's hang-up killed it with the workers, and the run, stopping cleanly, then
    printed a ``KeyError`` traceback for each semaphore it released (an adversarial run,
    2026-12-06)."""
    from multiprocessing import resource_tracker

    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - Windows
        return
    names = [getattr(signal, n) for n in _GROUP_SIGNALS if hasattr(signal, n)]
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, names)
    # Its report, at the end, of the semaphores of workers a hang-up killed (which it then
    # removes, its job) added four lines of UserWarnings to a stopped run's one (in CI).
    warnings = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join(
        filter(None, [warnings, "ignore::UserWarning:multiprocessing.resource_tracker"])
    )
    try:
        resource_tracker.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        if warnings is None:
            del os.environ["PYTHONWARNINGS"]
        else:
            os.environ["PYTHONWARNINGS"] = warnings


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
    import zarr.core.sync  # noqa: F401  (its exit hook registered first: ours runs before it)

    atexit.register(_end_zarr_reads)


def _end_zarr_reads() -> None:
    """A worker's exit: the reads a failed selection left pending on zarr's loop cancelled
    before zarr's hook closes it (each was "Task was destroyed but it is pending!" under the
    run's one error line with ``--scheduler processes``)."""
    sync = sys.modules.get("zarr.core.sync")
    loop = getattr(sync, "loop", [None])[0]
    if loop is not None and not loop.is_closed():
        cancel_pending(loop)


def cancel_pending(loop: Any, timeout: float = 5.0) -> None:
    """Cancel the reads still pending on zarr's loop, and let them end.

        A read that failed (an HTTP 403, a chunk that cannot be decoded) fails its whole
        selection, and the selection's other reads are left pending: the closed loop's tasks were
        reported at exit as "Task was destroyed but it is pending!", a traceback-like block apiece
        under the one error line, by the program and by each worker process at its exit
    . Cancelled, they end as asked; an exception a task raised and nobody retrieved is
        still reported.
    """
    import asyncio

    async def cancel() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    with contextlib.suppress(Exception):  # a loop stopped or stuck: as before
        asyncio.run_coroutine_threadsafe(cancel(), loop).result(timeout + 1)
