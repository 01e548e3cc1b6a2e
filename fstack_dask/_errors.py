"""The errors ``fuse_zarr`` raises besides ValueError/TypeError, and how a failure is told.

Every failure ends in one message that says what happened and what is left on disk: nothing,
or the finished blocks and how to continue (``resume=True``).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ._public import public

T = TypeVar("T")

__all__ = [
    "DestinationFullError",
    "DestinationLockedError",
    "FstackDaskWarning",
    "LeaseLostError",
    "SourceChangedError",
    "SourceReadError",
    "SourceValueError",
    "StopWaiting",
    "as_interrupt",
    "diverted_warnings",
    "forget_stop",
    "finish_despite_interrupts",
    "finish_quietly_despite_interrupts",
    "interrupted_leaving",
    "interruption_behind",
    "interruptions_of_this_call",
    "is_no_space",
    "note_stop",
    "raise_if_stopped",
    "stop_waiting",
    "warn",
    "with_outcome",
]


@public
class SourceReadError(RuntimeError):
    """A chunk of the source could not be read or decoded (corrupt, truncated, unreadable)."""


class SourceChangedError(SourceReadError):
    """Another program changed the source while the run read it (a microscope still writing
    it, a copy or removal under way): the blocks read from a version it no longer holds are
    not kept."""


@public
class SourceValueError(ValueError):
    """A chunk of the source holds values that cannot be fused (NaN or infinity)."""


@public
class DestinationLockedError(RuntimeError):
    """Another live run is writing the same destination."""


class LeaseLostError(DestinationLockedError):
    """This run's lock was taken over by another run: it stopped writing."""


@public
class DestinationFullError(OSError):
    """The device holding the destination is full (ENOSPC) or over quota."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[type[DestinationFullError], tuple[str]]:
        return type(self), (self.strerror,)


class DestinationReadOnlyError(OSError):
    """The filesystem holding the destination is, or became, read-only (EROFS)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EROFS, message)

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[type[DestinationReadOnlyError], tuple[str]]:
        return type(self), (self.strerror,)


@public
class FstackDaskWarning(UserWarning):
    """Something that may make the result other than the user meant (an odd file among the
    planes, too few planes, unlikely axes): the run goes on, and says so.

    The category of every warning about the input and the parameters:
    ``warnings.simplefilter("ignore", fstack_dask.FstackDaskWarning)`` silences them,
    ``"error"`` makes them raise (before anything is written). What a run did to its output
    (a staging folder restored or kept, a user's file kept, a replacement not atomic) is a
    record on the ``fstack_dask`` logger instead, never raised: it is said while outputs are
    removed or moved, where an exception would stop that half-way.
    """


# Shown every time, not once per place in the code: a notebook cell run again on the same
# folder must warn again. Appended, so that a user's own filter still wins.
warnings.filterwarnings("always", category=FstackDaskWarning, append=True)


#: Where this context's warnings go instead of Python's warnings (:func:`diverted_warnings`).
_NOT_DIVERTED: list[str] = []
_DIVERTED: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "fstack_dask_warnings_diverted", default=_NOT_DIVERTED
)


@contextlib.contextmanager
def diverted_warnings(into: list[str] | None) -> Iterator[None]:
    """This thread's (context's) :func:`warn` messages appended to ``into`` (None: dropped),
    not raised as Python warnings. ``warnings.catch_warnings``, used for this by the command
    line, swaps the whole process's filters and display: ``main(["info", ...])`` in one thread
    of a host printed another thread's warnings as its own, that thread never saw them, and a
    filter it set meanwhile was gone once info ended."""
    token = _DIVERTED.set(into)
    try:
        yield
    finally:
        _DIVERTED.reset(token)


def warn(message: str) -> None:
    """Warn the user, once, wherever they look.

    A Python warning (:class:`FstackDaskWarning`: shown in scripts and notebooks, and
    catchable), and a record on the ``fstack_dask`` logger when logging is set up (a batch
    job's log, the command line, which shows the record and not the warning). Without any
    logging set-up the record is not made, so that Python's last-resort handler does not print
    the message a second time.

    Parameters
    ----------
    message : str
        One line naming what is concerned (the files, the axes, the planes) and what to do.
    """
    logger = logging.getLogger("fstack_dask")
    if logger.hasHandlers():
        logger.warning(message)
    into = _DIVERTED.get()
    if into is not _NOT_DIVERTED:  # (a command's own, this thread's: diverted_warnings)
        if into is not None:
            into.append(message)
        return
    warnings.warn(message, FstackDaskWarning, stacklevel=_callers_level())


def _callers_level() -> int:
    """The ``stacklevel`` of the first frame outside this package: the user's call, which a
    notebook shows with the warning (it showed a line of ours, ``fusion.py:160:
    _warn_over_budget(fusion)``); where none is (a worker's thread), the caller of the
    function that warned."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(2), 2  # warn()'s caller, as warnings.warn counts
    while frame is not None:
        if not os.path.abspath(frame.f_code.co_filename).startswith(package):
            return level
        frame, level = frame.f_back, level + 1
    return 3


def is_no_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is ENOSPC or EDQUOT."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _with_errno(exc: BaseException | None, number: int) -> OSError | None:
    """The ``OSError`` of errno ``number`` that ``exc`` is, or was raised from, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == number:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def with_outcome(exc: BaseException, *, dst: str, left: str) -> BaseException:
    """``exc`` with what is left on disk added to its message (same type where we can)."""
    if _with_errno(exc, errno.EDQUOT) is not None:  # (a user's quota: the disk has room)
        return DestinationFullError(
            f"disk quota exceeded while writing dst {dst!r}: free space within your quota "
            f"(quota -s; on Lustre, lfs quota -u $USER) or choose another dst; {left}"
        )
    if is_no_space(exc):
        return DestinationFullError(
            f"no space left on device while writing dst {dst!r}: free space or choose another "
            f"dst; {left}"
        )
    read_only = _with_errno(exc, errno.EROFS)
    if read_only is not None:  # (a disk error remounts ext4 so, errors=remount-ro)
        return DestinationReadOnlyError(
            f"read-only file system while writing dst {dst!r} ({_text(read_only)}): make it "
            f"writable again (a disk error may have made it read-only: dmesg says), or choose "
            f"another dst; {left}"
        )
    if isinstance(exc, SourceChangedError):  # nothing to repair: let the writer finish
        return type(exc)(f"{exc}; {left}")
    if isinstance(exc, (SourceReadError, SourceValueError)):
        left = left.replace("rerun with", "repair the source and rerun with")
        return type(exc)(f"{exc}; {left}")
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return exc
    try:
        clone = type(exc)(f"{_text(exc)}; {left}")
    except Exception:  # an exception class with another signature: keep it as it is
        return exc
    return clone


def interrupted_leaving(exc: KeyboardInterrupt, left: str) -> KeyboardInterrupt:
    """``exc`` (Ctrl-C, a SIGTERM) saying what it left where that is not a run to continue:
    the command line prints ``left`` instead of "rerun ... with --resume to continue"."""
    exc.left = left  # type: ignore[attr-defined]
    exc.args = (left,)  # (what a caller of fuse_zarr sees)
    return exc


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class StopWaiting(KeyboardInterrupt):
    """An interruption that ends :func:`finish_despite_interrupts`'s waits at once (the
    command line's second SIGTERM, or its grace period's end)."""


#: The interruption a stop signal raised in the main thread (the command line's handlers
#: note it here), until the program forgets it.
_stop: list[KeyboardInterrupt] = []


def note_stop(exc: KeyboardInterrupt) -> None:
    """Note the interruption a signal raised, for :func:`raise_if_stopped`."""
    _stop[:] = [exc]


def forget_stop() -> None:
    _stop.clear()


def raise_if_stopped() -> None:
    """Raise again, in the main thread, the interruption a signal raised there, if one did:
    for a run's waits, so that a run goes on no longer where something swallowed it (a
    ``__del__`` or a weakref finalizer, where Python only prints "Exception ignored"; a
    library's ``except BaseException``). The run then waited for the 60 s grace of SIGTERM."""
    if _stop and threading.current_thread() is threading.main_thread():
        raise _stop[0]


def stop_waiting() -> bool:
    """Whether the interruption noted asks for no more waiting (a :class:`StopWaiting`: a
    second signal, or the end of SIGTERM's grace period)."""
    return bool(_stop) and isinstance(_stop[0], StopWaiting)


def finish_despite_interrupts(step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``step(*args, **kwargs)`` carried to its end through one more Ctrl-C, then an interrupt
    raised if one came: for the waits that make sure no task still writes once a run has
    released its lock, and that no worker process is left behind. (A second Ctrl-C in such a
    wait left a worker process alive for the kernel's life, and once let tasks write after
    the lock was released: a helper's run, 2026-12-05.)

    In the main thread, with Python's own SIGINT handler in place, the first SIGINT meanwhile
    is held back rather than caught and retried (CPython 3.11 marks a ``Thread.join``
    interrupted by it as stopped while the thread runs on, and a retried
    ``ProcessPoolExecutor.shutdown`` returned with its processes alive); a further one stops
    the wait at once (a task hung on a dead mount must not make the run unstoppable), as does
    a :class:`StopWaiting` (the command line's second SIGTERM). A caller's own SIGINT handler,
    or SIG_IGN, is left as it is.
    """
    return _finish(step, args, kwargs, _WAIT_SAID)


_WAIT_SAID = (
    "interrupted: waiting for the running tasks to end, so that nothing is written after the "
    "run's lock is released (Ctrl-C again to stop without waiting)"
)


def finish_quietly_despite_interrupts(step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """:func:`finish_despite_interrupts` for a step of a few milliseconds that waits for no
    task (a cluster's workers shielded, or put back): an interrupt meanwhile said the wait's
    warning beside the run's one "interrupted" line."""
    return _finish(step, args, kwargs, None)


def _finish(step: Callable[..., T], args: Any, kwargs: Any, said: str | None) -> T:
    held: list[int] = []
    # what the caller handles as it waits (the run's Ctrl-C: schedulers' except, a finally) is
    # behind every error the step raises, and none of them is a new interruption: a step that
    # failed so (its scheduler gone) was taken for one and called again, for ever
    handled = _chain(sys.exc_info()[1])

    def hold(signum: int, frame: Any) -> None:
        if held:
            raise KeyboardInterrupt  # pressed again: stop waiting
        held.append(signum)
        if said is not None:
            logging.getLogger("fstack_dask").warning(said)

    previous: Any = None
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):  # (an embedded interpreter)
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                previous = signal.signal(signal.SIGINT, hold)
    interrupted: KeyboardInterrupt | None = None
    try:
        while True:
            try:
                result = step(*args, **kwargs)
                break
            except BaseException as error:
                # (one wrapped where it landed, as in a class body: an interruption still)
                exc = interruption_behind(error)
                if exc is None or id(exc) in handled:
                    raise
                if held or previous is None and interrupted is not None:
                    raise  # asked twice: stop waiting
                if isinstance(exc, StopWaiting):
                    raise
                interrupted = exc  # (not held back: not the main thread, or a caller's handler)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if interrupted is not None:
        raise interrupted
    if held:
        raise KeyboardInterrupt
    return result


def _chain(exc: BaseException | None) -> set[int]:
    """The ids of ``exc`` and of what it was raised from or while handling."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # (a chain can loop)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return seen


#: The ids of the exceptions the caller was handling as a run (or a command) began: old, and
#: behind any exception raised in it (Python chains what is raised to what is being handled).
_BEFORE: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    "handled_before", default=frozenset()
)


def interruptions_of_this_call(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` (a run, a command), in which an interruption its caller was handling as it began
    is none of its own (:func:`interruption_behind`): called in a host's ``except
    KeyboardInterrupt:`` (a script going on after a Ctrl-C, a retry), its failures were taken
    for that old Ctrl-C, ``main([...])``'s usage error said "interrupted", exit 130."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> T:
        token = _BEFORE.set(_BEFORE.get() | _chain(sys.exc_info()[1]))
        try:
            return fn(*args, **kwargs)
        finally:
            _BEFORE.reset(token)

    return call


def interruption_behind(
    exc: BaseException, prefer: type[KeyboardInterrupt] | None = None
) -> KeyboardInterrupt | None:
    """The interruption (Ctrl-C, or a stop signal's) that ``exc`` is, or was raised from or
    while handling; None where there is none.

    A signal can land where Python or a library wraps what it raised: Python 3.11 wraps a
    KeyboardInterrupt raised in a class body's ``__set_name__`` (numcodecs'
    ``cached_property``, as a module imports) in a RuntimeError "Error calling __set_name__"
    (a CI run, 2026-12-07); numba's dispatcher in a SystemError. What stopped the run is the
    interruption behind it. With ``prefer``, one of that class where the chain holds one. The
    chain is followed back to what the caller of the run was handling as it began
    (:func:`interruptions_of_this_call`), no further: an interruption there is old.
    """
    seen: set[int] = set(_BEFORE.get())
    found: KeyboardInterrupt | None = None
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:  # (a chain can loop)
        if isinstance(link, KeyboardInterrupt):
            if prefer is None or isinstance(link, prefer):
                return link
            found = found or link
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return found


def as_interrupt(exc: BaseException) -> BaseException:
    """A Ctrl-C that reached us wrapped, as the KeyboardInterrupt it is (:func:`interruption_
    behind`): numba's dispatcher, interrupted inside its C code, raises ``SystemError(
    "CPUDispatcher(...) returned a result with an exception set")`` caused by it (4 of 12
    interrupts of a synchronous run in a Jupyter kernel were reported as a failure: a helper's
    run, 2026-12-05); a class body's ``__set_name__`` a RuntimeError."""
    return interruption_behind(exc) or exc
