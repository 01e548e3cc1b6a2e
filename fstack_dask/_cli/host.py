"""What a command changes in the process that called it (a notebook's kernel, a script calling
``main([...])``): warning filters and loggers' levels, each noted as it is made and put back
when the last of the calls under way in the process ends.

Each call put back its own as it returned: two calls in two threads of one host (a notebook
fusing two stacks at once) put back each other's mid-run (the later one's notes lost, its
warnings shown twice) and left the host changed after both ended (the ``fstack_dask`` logger at
INFO, every ``FstackDaskWarning`` silenced). The program itself keeps them to its exit.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import threading
import warnings
from collections.abc import Callable, Iterator

__all__ = ["changes_kept", "ignore_warnings", "keep_to_itself", "lower_level", "set_level"]

_lock = threading.RLock()
#: The calls under way that put back what they change, and whether one was interrupted.
_calls = [0, False]
#: An undo for each change made since the first of them started, in the order made.
_changes: list[Callable[[], None]] = []


@contextlib.contextmanager
def changes_kept(interrupted: Callable[[], bool]) -> Iterator[None]:
    """A call's changes, kept until it and every other call under way have ended, then put
    back, last first. An interrupted run's frames are collected first (``interrupted()``
    says, as the call ends), while its abandoned coroutines' warnings are still quiet: they
    came after the one line, as the host's process ended."""
    with _lock:
        _calls[0] += 1
    try:
        yield
    finally:
        with _lock:
            _calls[0] -= 1
            _calls[1] = _calls[1] or interrupted()
            collect = _calls[1] and not _calls[0]
        if collect:
            gc.collect()
        with _lock:
            if not _calls[0]:  # (none started meanwhile, which would keep them)
                _calls[1] = False
                while _changes:
                    _changes.pop()()


def ignore_warnings(message: str, category: type[Warning]) -> None:
    """``warnings.filterwarnings("ignore", ...)``, noted for :func:`changes_kept`."""
    with _lock:
        before = list(warnings.filters)
        warnings.filterwarnings("ignore", message=message, category=category)
        entry = warnings.filters[0]
        # an equal filter of the host's is removed by filterwarnings: it goes back where it was
        index = next((i for i, f in enumerate(before) if f == entry), None)

        def undo() -> None:
            if not any(f is entry for f in warnings.filters):
                return  # put back already (a catch_warnings that ended)
            filters = [f for f in warnings.filters if f is not entry]
            if index is not None:
                filters.insert(index, before[index])
            warnings.filters[:] = filters
            warnings._filters_mutated()  # type: ignore[attr-defined]  # (as catch_warnings does)

        _changes.append(undo)


def set_level(name: str, level: int) -> None:
    """A logger's level set, noted for :func:`changes_kept`."""
    with _lock:
        logger = logging.getLogger(name)
        _changes.append(functools.partial(logger.setLevel, logger.level))
        logger.setLevel(level)


def lower_level(name: str, level: int) -> None:
    """A logger's level lowered to ``level`` where it would drop records of that level, noted
    for :func:`changes_kept`."""
    with _lock:
        if logging.getLogger(name).getEffectiveLevel() > level:
            set_level(name, level)


def keep_to_itself(name: str) -> None:
    """A logger's records kept from its ancestors' handlers (the root's: a host's
    ``logging.basicConfig()``), noted for :func:`changes_kept`."""
    with _lock:
        logger = logging.getLogger(name)
        _changes.append(functools.partial(setattr, logger, "propagate", logger.propagate))
        logger.propagate = False
