"""How the command line stops when told to: SIGTERM (and the other signals that end a job)
as an interruption, an end that does not wait for a task that never returns, and output
whose reader went away.

A run that is interrupted or terminated waits for its running tasks to end, so that nothing
is written once its lock is released (``_errors.finish_despite_interrupts``). A task blocked
in a read that never returns (a dead network mount, a hung device) would make that wait, and
then the interpreter's own join of the worker threads at exit, last for ever: a run that
ignored SIGTERM and a double Ctrl-C was found by an adversarial run (2026-12-05). So:

* a second Ctrl-C or SIGTERM stops the wait, and SIGTERM alone stops it after
  :data:`TERMINATION_GRACE` seconds (a scheduler's ``kill`` is not repeated);
* the program then ends without joining threads that are still running (:func:`leave`):
  ending the process is what stops them writing. Worker processes of ours are ended first.

A resume afterwards redoes the blocks those tasks had not finished.

The other signals whose default is to end the program without a word are taken the same
way (:data:`STOP_SIGNALS`): SIGHUP (the terminal or ssh session gone), SIGUSR1 and SIGUSR2
(the warnings of batch systems: SLURM's ``--signal``, SGE's ``-notify``, LSF's ``-wa``) and
SIGXCPU (a CPU-time limit: LSF, PBS, ``ulimit -t``). They killed a run outright, its lock
left and nothing said (an adversarial run, 2026-12-06); a signal its parent set to be
ignored (``nohup``) stays ignored.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import functools
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import _base
from typing import Any

from .._errors import StopWaiting, forget_stop, interruption_behind, note_stop
from .._imports import STOP_SIGNALS, WARM_UP_THREAD, held_in_imports, holding, ignore_last

__all__ = [
    "STOP_SIGNALS",
    "TERMINATION_GRACE",
    "Terminated",
    "deaf",
    "end_zarr_io",
    "ending",
    "leave",
    "on_stop_signals_raise",
    "quiet_broken_pools",
    "quiet_gone_readers",
    "quiet_swallowed_interrupts",
    "stop_behind",
]

#: Seconds a terminated run waits for its running tasks to end before it stops waiting.
TERMINATION_GRACE = 60.0


class Terminated(KeyboardInterrupt):
    """SIGTERM (or another of :data:`STOP_SIGNALS`, its number in ``signum``), turned into an
    interruption so that a run stops cleanly (locks released, worker processes ended,
    finished blocks kept for --resume)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__()
        self.signum = signum


class TerminatedNow(Terminated, StopWaiting):
    """A second signal: the running tasks are not waited for."""


def on_stop_signals_raise(names: tuple[str, ...] = STOP_SIGNALS) -> Callable[[], None]:
    """Raise :class:`Terminated` on each of ``names`` (:data:`STOP_SIGNALS`) in the main thread,
    until the function returned is called (it puts the previous handlers back). SIGTERM's
    handler is always replaced; another's only where it is the default (one ignored stays
    ignored). A caller's process gives SIGTERM alone: a handler Python did not install
    (``faulthandler.register``'s, a C library's) reads as the default, and was replaced by
    SIG_DFL, killing the host at its next signal (a review, 2026-12-06).

    The first signal also starts a timer that, :data:`TERMINATION_GRACE` seconds later,
    delivers a second one if the run has not ended: it stops the wait for tasks that do not
    end."""
    main_thread = threading.main_thread().ident
    timer: list[threading.Timer] = []
    first: list[int] = []
    # Signals deferred (see _taking_a_lock) and not yet re-sent, and any that came as the
    # handlers were being put back: re-sent after it, they reached the caller's handler (a
    # host's SIGTERM) late, and a second time where the run had taken the first.
    deferred: dict[threading.Timer, int] = {}
    late: list[int] = []
    guard, restored = threading.Lock(), [False]

    def resend(signum: int) -> None:
        with guard:  # (restore takes it after marking itself: nothing is sent past it)
            if restored[0] or deferred.pop(threading.current_thread(), None) is None:
                return
            signal.pthread_kill(main_thread, signum)

    def again() -> None:
        logging.getLogger("fstack_dask").warning(
            "running tasks did not end within %.0f s of SIGTERM (a read that does not "
            "return?): stopping without waiting for them", TERMINATION_GRACE
        )  # fmt: skip
        if main_thread is not None:
            signal.pthread_kill(main_thread, signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        if restored[0]:  # the run is over: restore decides whose it is
            late.append(signum)
            return
        if _taking_a_lock(frame):  # raised there, it would leave the lock held: a moment later
            later = threading.Timer(_DEFERRED, resend, (signum,))
            later.daemon = True
            with guard:
                deferred[later] = signum
            later.start()
            return
        # noted as well as raised: the run's waits raise it again where it was swallowed
        # (a __del__ running when it came), and the run went on until the grace period's end
        if timer:  # a second signal, or the grace period's end
            note_stop(TerminatedNow(first[0]))
            raise TerminatedNow(first[0])
        first.append(signum)
        note_stop(Terminated(signum))
        timer.append(threading.Timer(TERMINATION_GRACE, again))
        timer[0].daemon = True
        timer[0].start()
        raise Terminated(signum)

    previous: dict[int, Any] = {}
    # raised in numba's import, a stop broke it for a caller's later runs
    forget = held_in_imports(handler)

    def restore() -> None:
        restored[0] = True  # first: from here a signal is kept in ``late``, never raised
        forget()
        with guard:
            pending = [*deferred.values()]
            for t in [*timer, *deferred]:
                t.cancel()
            deferred.clear()
        forget_stop()
        for signum, old in previous.items():
            with contextlib.suppress(ValueError):
                if signal.getsignal(signum) is handler:  # (the program's end: see ending)
                    signal.signal(signum, old)
        if not first:  # the run ended before it could take them: the caller's, now, once each
            for signum in dict.fromkeys([*pending, *late]):
                signal.raise_signal(signum)
        # (where the run had taken one, they were its own: a second stop, not the caller's)

    try:
        for name in names:
            signum = getattr(signal, name, None)  # (Windows has few of them)
            if signum is None:
                continue
            current = signal.getsignal(signum)  # (holding: the program's, at its start)
            if name == "SIGTERM" or current is signal.SIG_DFL or holding(current):
                previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not in the main thread (e.g. called from a test thread)
        forget()
        return lambda: None
    except BaseException:  # a signal came meanwhile: raised, the handlers put back
        restore()
        raise
    return restore


#: Seconds after which a stop signal that came while the main thread took a lock is sent again.
_DEFERRED = 0.01


def _taking_a_lock(frame: Any) -> bool:
    """Whether ``frame`` (where a signal interrupted the main thread) is between a lock's
    acquire and the ``with`` block that releases it: a Condition's ``__enter__``, or
    concurrent.futures taking every future's lock for a wait. An exception raised there
    leaves the lock held for ever: the pool's manager thread then blocked on that future
    and the stopped run, joining it, never ended (a SIGTERM to the process group of a
    ``processes`` run, 1 in about 170 signals landing in a wait)."""
    codes = _lock_taking_codes()
    while frame is not None:
        if frame.f_code in codes:
            return _holding_one(frame)
        frame = frame.f_back
    return False


def _holding_one(frame: Any) -> bool:
    """Whether the thread already holds a lock the code at ``frame`` takes. Where it holds none
    yet (blocked taking it: another thread holds it), the exception leaves nothing held and is
    raised at once: deferred, a stop waited, re-sent every 10 ms, as long as the other thread
    held the lock, for ever where it waited for the main thread (a review of af9e043)."""
    owner = frame.f_locals.get("self")
    if isinstance(owner, _base._AcquireFutures):
        return any(f._condition._is_owned() for f in owner.futures)
    lock = getattr(owner, "_lock", None)
    if frame.f_code is threading.Condition.__enter__.__code__ and hasattr(lock, "_is_owned"):
        return lock._is_owned()  # an RLock knows its owner (a Lock does not: deferred)
    return True


@functools.cache
def _lock_taking_codes() -> frozenset[Any]:
    condition = threading.Condition
    return frozenset(
        f.__code__
        for f in (condition.__enter__, condition.__exit__, condition._acquire_restore,
                  condition._release_save, _base._AcquireFutures.__enter__,
                  _base._AcquireFutures.__exit__)
    )  # fmt: skip


@contextlib.contextmanager
def deaf(names: tuple[str, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Ignore Ctrl-C and ``names`` (:data:`STOP_SIGNALS`) while the program says how it
    stopped, and ends: a second Ctrl-C (or SIGTERM) landing there printed a traceback under
    the one line, or instead of it, and could make the exit status 1 (an adversarial run,
    2026-12-06). The previous handlers are back afterwards (a caller's ``main([...])`` goes
    on; it gives the signals it handled, see :func:`on_stop_signals_raise`)."""
    previous: dict[int, Any] = {}
    for name in ("SIGINT", *names):
        signum = getattr(signal, name, None)
        if signum is not None:
            with contextlib.suppress(ValueError, OSError):  # (not the main thread)
                previous[signum] = signal.signal(signum, signal.SIG_IGN)
    try:
        yield
    finally:
        for signum, old in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):  # (None: not Python's)
                signal.signal(signum, old)


def ending(code: int, names: tuple[str, ...] = STOP_SIGNALS) -> None:
    """From now on, end the program at once with ``code`` on Ctrl-C or ``names``: it has said
    how it ended (its exit status decided) and is ending. It put Python's defaults back, so a
    SIGTERM 0.1 s after a Ctrl-C, landing while the interpreter shut down, killed it (-15, not
    the 130 its one line announced; an adversarial run, 2026-12-06). Once the interpreter's
    other exit handlers have run (a cluster's close among them: ignored from the first, it
    could be stopped by SIGKILL only), they are ignored instead: Python then
    puts SIG_DFL back for a handler of its own (its signal module's finalisation, for a second
    or more after them on a loaded node), but leaves an ignored signal so. For the program
    only (a caller's ``main([...])`` gets its own handlers back); a signal ignored
    (``nohup``) stays ignored."""
    import atexit

    def end_now(signum: int, frame: Any) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)

    _set_all(("SIGINT", *names), end_now)
    # ignored after the other exit handlers (fstack_dask.__main__ registered it first): as
    # the first to run, it left the program deaf to SIGTERM while a cluster closed
    if not ignore_last(("SIGINT", *names)):  # (its main run without fstack_dask.__main__)
        atexit.register(_set_all, ("SIGINT", *names), signal.SIG_IGN)


def _set_all(names: tuple[str, ...], action: Any) -> None:
    """``action`` for each signal of ``names`` not ignored (``nohup``), where one can be set."""
    for name in names:
        signum = getattr(signal, name, None)
        if signum is not None:
            with contextlib.suppress(ValueError, OSError):  # (not the main thread)
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    signal.signal(signum, action)


def _still_running() -> list[threading.Thread]:
    """Threads the interpreter would join at exit (not daemons), other than this one."""
    me = threading.current_thread()
    return [t for t in threading.enumerate() if t is not me and t.is_alive() and not t.daemon]


def leave(code: int) -> None:
    """End the program with ``code`` now where a thread is still running (an interrupted
    run's task that never returned); otherwise return, and the program ends as usual. The
    kernel's warm-up, still compiling, is no task: not waited for, and not said (a stop in
    the seconds of a first compilation added "1 task(s) had not ended (a read that does not
    return?)" under the run's one line, on a loaded machine)."""
    running = _still_running()
    if not running:
        return
    tasks = [t for t in running if t.name != WARM_UP_THREAD]
    with contextlib.suppress(Exception):  # (no usable stderr: a service)
        if tasks:
            print(
                f"fstack-dask: {len(tasks)} task(s) had not ended (a read that does not "
                "return?); exiting without waiting for them",
                file=sys.stderr,
                flush=True,
            )
    for child in multiprocessing.active_children():  # our worker processes: they may write
        child.kill()
    for child in multiprocessing.active_children():
        child.join(timeout=5)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os._exit(code)


def quiet_broken_pools() -> Callable[[], None]:
    """Keep CPython 3.11's failure of a process pool's manager thread, when a signal to the
    process group ended the pool's processes (``InvalidStateError: CANCELLED`` on each queued
    future, a traceback apiece), off the program's stderr: the one-line "terminated" says it.
    Returns the function that puts the previous hook back. For the program only (a library
    leaves the process's hooks alone)."""
    previous = threading.excepthook

    def hook(args: Any) -> None:
        manager = type(args.thread).__name__ == "_ExecutorManagerThread"
        if manager and isinstance(args.exc_value, cf.InvalidStateError):
            return
        previous(args)

    threading.excepthook = hook

    def restore() -> None:
        threading.excepthook = previous

    return restore


def stop_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The interruption (Ctrl-C, or a stop signal's) that ``exc`` is, or was raised from or
    while handling (wrapped where it landed in a class body); None where there is none
    (:func:`.._errors.interruption_behind`). A stop signal's where there are both, whichever
    came first: a batch system's kill after a Ctrl-C, or a Ctrl-C (which only stops the wait
    for the running tasks) after it, ended with 130 and "interrupted"."""
    return interruption_behind(exc, prefer=Terminated)


def quiet_swallowed_interrupts() -> Callable[[], None]:
    """An interruption (Ctrl-C, or a stop signal's) raised in a ``__del__`` or a finalizer
    running in the main thread when it came is swallowed there by Python, which prints
    "Exception ignored in ..." and a traceback: it is noted instead, and the run's next wait
    raises it (:func:`.._errors.raise_if_stopped`), then the one line says how the run
    stopped. Returns the function that puts the previous hook back. For the program only, as
    :func:`quiet_broken_pools`."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, KeyboardInterrupt):
            note_stop(exc)
            return
        previous(unraisable)

    sys.unraisablehook = hook

    def restore() -> None:
        sys.unraisablehook = previous

    return restore


class _Tolerant:
    """A standard stream that drops what it is given once its reader is gone: a pipe whose
    reader ended (``| head -1``: EPIPE) or a terminal that hung up (EIO); or once it cannot
    be written, a file on a full disk or over quota (``> run.log`` beside the output that
    filled it: a complete run exited 1, "error: [Errno 28] No space left on device"). Its
    descriptor then points at /dev/null, so that the interpreter's last flush at exit fails
    no more."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _gone(self, exc: OSError) -> None:
        if exc.errno not in (errno.EPIPE, errno.EIO, errno.ENOSPC, errno.EDQUOT):
            raise exc
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except OSError as exc:
            self._gone(exc)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            self._gone(exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def quiet_gone_readers() -> Callable[[], None]:
    """Keep a reader of stdout or stderr that went away (``fstack-dask fuse ... | head -1``,
    an ssh session gone while the run goes on) from turning a run into a failure: until the
    function returned is called, what they are given after that is dropped. (A finished
    fusion exited 1, "error: [Errno 32] Broken pipe", or silently: an adversarial run,
    2026-12-06.) For the program only, as :func:`quiet_broken_pools`."""
    streams = sys.stdout, sys.stderr
    if sys.stdout is not None:  # (None: no console, pythonw)
        sys.stdout = _Tolerant(sys.stdout)
    if sys.stderr is not None:
        sys.stderr = _Tolerant(sys.stderr)

    def restore() -> None:
        sys.stdout, sys.stderr = streams

    return restore


def end_zarr_io(*, interrupted: bool, timeout: float = 5.0) -> None:
    """Stop zarr's event-loop thread, waiting for it, before zarr's own exit hook does.

    That hook gives the thread 0.2 s: on a loaded node it had not stopped, and the program
    ended with zarr's "Thread did not finish cleanly" and a RuntimeError traceback from
    ``atexit`` after its one line (seen in CI on a loaded machine). An interrupted run's
    reads still pending would be reported by asyncio as destroyed tasks and unretrieved
    exceptions, a traceback apiece: the program is ending as asked, so asyncio is quiet
    then. For the program only, as :func:`quiet_broken_pools`.
    """
    if interrupted:
        logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    sync = sys.modules.get("zarr.core.sync")
    loop = getattr(sync, "loop", [None])[0]
    thread = getattr(sync, "iothread", [None])[0]
    if loop is None or thread is None or loop.is_closed():
        return
    from .._runs.pool import cancel_pending

    cancel_pending(loop, timeout)
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout)
    if not thread.is_alive():
        with contextlib.suppress(Exception):
            sync.cleanup_resources()  # closes the stopped loop; zarr's hook then finds none
