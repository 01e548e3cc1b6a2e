"""Importing through one Ctrl-C: numba's import, interrupted half-way, is broken for the
rest of the process (a Jupyter kernel), so a Ctrl-C meanwhile is held until the import is done.
Used by the package's lazy public names and by the first run of ``fuse_zarr``, which imports
the engine only when it fuses; and by the program, whose stop signals are held while it
imports its command line (:func:`hold_stop_signals`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from typing import Any

__all__ = [
    "STOP_SIGNALS",
    "WARM_UP_THREAD",
    "deliver_held_signals",
    "first_held",
    "held_in_imports",
    "hold_stop_signals",
    "holding",
    "ignore_at_the_very_end",
    "ignore_last",
    "import_through_one_ctrl_c",
    "keeping_signal_handlers",
    "take_held_signal",
]


#: The name of the thread that loads the compiled kernel, or compiles it, while a run is
#: prepared (``_algorithm.block.warm_up``): no task of a run; a stopped program does not wait
#: for it (``_cli.stopping.leave``).
WARM_UP_THREAD = "fstack-dask-warm-up"

#: The signals that stop a run as SIGTERM does (the program exits with 128 + the number): a
#: hang-up, the batch systems' warnings, a CPU-time limit (``_cli.stopping``).
STOP_SIGNALS = ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGXCPU")


@contextlib.contextmanager
def keeping_signal_handlers() -> Any:
    """Put back, at the end of the block, the handlers of Ctrl-C and :data:`STOP_SIGNALS` that
    code run in it replaced. dask-jobqueue's import sets Ctrl-C's to ``sys.exit()`` for the
    whole process (its ``runner`` module, at import time): a Ctrl-C of a run on a PBS or
    SLURM cluster then raised SystemExit, and the program ended 0, saying nothing, as if
    the run had finished. Outside the main thread, where no handler can be set, the block's
    own attempts are let pass unset: there the same import failed, "signal only works in
    main thread" (a host's ``main([...])`` in a thread, with a PBS or SLURM config)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        with _OUTSIDE_THE_MAIN_THREAD:  # (one replacement of signal.signal at a time)
            real, me = signal.signal, threading.get_ident()

            def set_in_the_main_thread_only(signum: int, handler: Any) -> Any:
                if threading.get_ident() == me:
                    return signal.getsignal(signum)
                return real(signum, handler)

            signal.signal = set_in_the_main_thread_only
            try:
                yield
            finally:
                signal.signal = real
        return
    kept: dict[int, Any] = {}
    for name in ("SIGINT", *STOP_SIGNALS):
        signum = getattr(signal, name, None)  # (Windows has few of them)
        if signum is not None:
            kept[signum] = signal.getsignal(signum)
    try:
        yield
    finally:
        for signum, handler in kept.items():
            if handler is not None and signal.getsignal(signum) is not handler:
                with contextlib.suppress(ValueError, OSError, TypeError):
                    signal.signal(signum, handler)


_OUTSIDE_THE_MAIN_THREAD = threading.Lock()


def import_through_one_ctrl_c(module: str, package: str | None = None) -> Any:
    """Import ``module``, a Ctrl-C (or a run's stop signal, :data:`_RUN_HANDLERS`) meanwhile
    delivered once it is imported (a second one at once).

    Interrupted half-way, numba's import (seconds on a cold cache: a Jupyter user's first
    cell) left it unusable: every later call in the kernel failed with "module 'numba' has no
    attribute 'core'" until a restart. Only the main thread, and only with Python's own
    SIGINT handler in place (a caller's own is left alone).
    """
    import signal
    import threading

    held: list[int] = []
    previous: dict[int, Any] = {}

    timers: list[Any] = []

    def hold(signum: int, frame: Any) -> None:
        if held:  # pressed again (or a stop signal's grace is over): an import hung on a
            # dead mount. A stop signal's handler, whichever came first: a SIGTERM held, then a
            # Ctrl-C ended 130, "interrupted", where a batch system's kill is 143 (as the
            # run's own handlers decide: _cli.stopping.stop_behind)
            first = next((n for n in (*held, signum) if n != signal.SIGINT), signum)
            previous[first](first, frame)
        held.append(signum)
        if signum != signal.SIGINT:  # a scheduler's SIGTERM is not repeated: it is, for an
            # import that never returns (as hold_stop_signals' HOLD_GRACE)
            again = (threading.main_thread().ident, signum)
            timers.append(threading.Timer(HOLD_GRACE, signal.pthread_kill, again))
            timers[-1].daemon = True
            timers[-1].start()

    if threading.current_thread() is threading.main_thread():
        for signum in range(1, signal.NSIG):  # Python's Ctrl-C, and a run's stop signals
            with contextlib.suppress(ValueError, OSError):  # (an embedded interpreter)
                current = signal.getsignal(signum)
                if (signum == signal.SIGINT and current is signal.default_int_handler) or any(
                    current is h for h in _RUN_HANDLERS
                ):
                    previous[signum] = signal.signal(signum, hold)
    try:
        found = importlib.import_module(module, package)
    finally:
        for timer in timers:
            timer.cancel()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if held:  # delivered now, to the handler it came for (a run's: Terminated)
        signal.raise_signal(held[0])
    return found


#: The handlers of the stop signals of runs under way (the command line's, in a caller's
#: ``main([...])`` too): :func:`import_through_one_ctrl_c` holds their signals as it holds
#: Ctrl-C. A SIGTERM there, raised in numba's import, broke it for the caller's later runs
#: in the process ("module 'numba' has no attribute 'core'").
_RUN_HANDLERS: list[Any] = []


def held_in_imports(handler: Any) -> Any:
    """Have :func:`import_through_one_ctrl_c` hold the signals ``handler`` (a run's) takes;
    returns the function that ends it."""
    _RUN_HANDLERS.append(handler)

    def forget() -> None:
        with contextlib.suppress(ValueError):
            _RUN_HANDLERS.remove(handler)

    return forget


#: What :func:`hold_stop_signals` held: the signals' numbers, in the order they came.
_HELD: list[int] = []


#: Seconds a held stop signal waits for the imports to end before it ends the program, and
#: what ends it then (:func:`hold_stop_signals`' ``end``); the watch that will (:func:`_watch`).
HOLD_GRACE = 10.0
_WATCH: list[Any] = []


def _hold(signum: int, frame: Any) -> None:
    _HELD.append(signum)  # (the second too: the program's status is a stop signal's, below)
    if len(_HELD) > 1:  # pressed again: an import hung (a dead mount) is not waited for
        raise KeyboardInterrupt


def first_held() -> int | None:
    """The signal the program ends with where a second one ended its start-up: the first
    stop signal held, whichever came first (a Ctrl-C, then a batch system's SIGTERM, ended
    130, "interrupted": 143, as the run's own handlers decide), else Ctrl-C; None if none."""
    import signal

    return next((n for n in _HELD if n != signal.SIGINT), _HELD[0] if _HELD else None)


def _watch(read_fd: int, done: Any, end: Any) -> None:
    """The held stop signals' grace (a scheduler's SIGTERM is not repeated: an import that never
    returns, a dead mount, held it for ever, the program never ended), counted in a
    thread of its own from the moment Python's C handler wrote the signal's number to
    ``read_fd``'s pipe (:func:`signal.set_wakeup_fd`), whether or not the main thread ran
    :func:`_hold`: a SIGTERM landing just before the import's read that hangs was taken by the
    C handler, the main thread in its read before it ran the Python one, and the program never
    ended (1 run in 20 of tests/cli/test_stopping.py's, on a loaded machine)."""
    import signal

    try:
        while not done.is_set():
            came = os.read(read_fd, 64)
            stops = [n for n in came if n not in (0, signal.SIGINT)]
            if stops:
                if not done.wait(HOLD_GRACE):
                    end(stops[0])
                return
            if not came or 0 in came:  # (the imports are done: :func:`_stop_watching`)
                return
    finally:
        os.close(read_fd)


def _start_watching(end: Any) -> None:
    import signal
    import threading

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # (as set_wakeup_fd asks)
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except (ValueError, OSError):  # (not the main thread)
        os.close(read_fd)
        os.close(write_fd)
        return
    done = threading.Event()
    threading.Thread(target=_watch, args=(read_fd, done, end), name="fstack-dask-start-up",
                     daemon=True).start()  # fmt: skip
    _WATCH[:] = [previous, write_fd, done]


def _stop_watching() -> None:
    """The imports are done: the grace of a held signal ends, the wakeup descriptor goes back."""
    import signal

    if not _WATCH:
        return
    previous, write_fd, done = _WATCH
    _WATCH.clear()
    done.set()
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(previous)
    with contextlib.suppress(OSError):
        os.write(write_fd, b"\0")  # (the watch, waiting for a signal, ends)
    os.close(write_fd)


def holding(handler: Any) -> bool:
    """Whether ``handler`` is the one :func:`hold_stop_signals` put in place."""
    return handler is _hold


def hold_stop_signals(names: tuple[str, ...], end: Any = None) -> None:
    """Hold Ctrl-C and the stop signals ``names`` (where Python's defaults: one ignored, as by
    ``nohup``, stays ignored) until :func:`deliver_held_signals`: the program's own handlers
    come with its command line, whose imports (20 ms, 200 ms on a loaded node) Ctrl-C broke
    with a traceback and SIGTERM ended without a word (-15). A second signal meanwhile raises
    KeyboardInterrupt; a stop signal not delivered within :data:`HOLD_GRACE` seconds calls
    ``end(signum)`` (from a thread: it ends the process). For the program only, in its main
    thread."""
    import signal

    if end is not None:  # (before the handlers: a signal that comes then has its grace)
        _start_watching(end)
    for name in ("SIGINT", *names):
        signum = getattr(signal, name, None)
        if signum is None:  # (Windows has few of them)
            continue
        default = signal.default_int_handler if name == "SIGINT" else signal.SIG_DFL
        with contextlib.suppress(ValueError, OSError):  # (not the main thread)
            if signal.getsignal(signum) is default:
                signal.signal(signum, _hold)


def deliver_held_signals() -> None:
    """Python's Ctrl-C handler back where it was held, and the first signal held delivered
    now, once the program's own handlers are in place (the others still holding get their
    defaults back): it stops the program as it would have."""
    import signal

    for signum in range(1, signal.NSIG):
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(signum) is _hold:
                default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
                signal.signal(signum, default)
    _stop_watching()
    held, _HELD[:] = _HELD[:1], []
    for signum in held:
        signal.raise_signal(signum)


def take_held_signal() -> int | None:
    """The first signal held, for a program that ends before it would deliver it (``--help``,
    a usage error): it ends with that signal's status, having said so, where the signal was
    dropped (exit 0 or 2). The holding handlers ignore what comes next; None (nothing
    changed) where none was held."""
    import signal

    _stop_watching()
    if not _HELD:
        return None
    for signum in range(1, signal.NSIG):
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(signum) is _hold:
                signal.signal(signum, signal.SIG_IGN)
    return first_held()


#: The signals ignored at the very end (:func:`ignore_last`), and whether that is registered.
_ENDING: list[str] = []
_REGISTERED: list[bool] = []


def ignore_at_the_very_end() -> None:
    """Register, as the program's first exit handler (so run last), the ignoring of the
    signals :func:`ignore_last` will name: Python's finalisation would put SIG_DFL back (-15,
    not the status announced). Ignored from the first exit handler on: before, a
    SIGTERM was lost for as long as the others took (a cluster's close, a join of
    child processes): the program could be stopped by SIGKILL only."""
    import atexit

    atexit.register(_ignore_ending)
    _REGISTERED.append(True)


def ignore_last(names: tuple[str, ...]) -> bool:
    """Have the last exit handler ignore ``names``; False where :func:`ignore_at_the_very_end`
    was not called (the caller then ignores them itself)."""
    _ENDING[:] = names
    return bool(_REGISTERED)


def _ignore_ending() -> None:
    import signal

    for name in _ENDING:
        signum = getattr(signal, name, None)
        if signum is not None:
            with contextlib.suppress(ValueError, OSError):  # (not the main thread)
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    signal.signal(signum, signal.SIG_IGN)
