"""Importing a module through one Ctrl-C: numba's import, interrupted half-way, is broken
for the rest of the process (a Jupyter kernel), so a Ctrl-C meanwhile is held until the import
is done. Used by the package's lazy public names and by the first run of ``fuse_zarr``, which
imports the engine only when it fuses.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["import_through_one_ctrl_c"]


def import_through_one_ctrl_c(module: str, package: str | None = None) -> Any:
    """Import ``module``, a Ctrl-C meanwhile raised once it is imported (a second one at once).

    Interrupted half-way, numba's import (seconds on a cold cache: a Jupyter user's first
    cell) left it unusable: every later call in the kernel failed with "module 'numba' has no
    attribute 'core'" until a restart. Only the main thread, and only with Python's own
    SIGINT handler in place (a caller's own is left alone).
    """
    import signal
    import threading

    held: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if held:
            raise KeyboardInterrupt  # pressed again: an import hung on a dead mount
        held.append(signum)

    previous: Any = None
    if threading.current_thread() is threading.main_thread():
        try:
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                previous = signal.signal(signal.SIGINT, hold)
        except (ValueError, OSError):  # (an embedded interpreter)
            previous = None
    try:
        found = importlib.import_module(module, package)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt
    return found
