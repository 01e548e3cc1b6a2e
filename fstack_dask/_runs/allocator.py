"""The C allocator while a run's tasks use it: a worker process's thresholds (glibc only), and
arrays held across tasks in mappings of their own.

distributed's nanny starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (its config's
``distributed.nanny.pre-spawn-environ``), so that memory freed by tasks goes back to the
system. Setting it also turns off glibc's adaptive mmap threshold: every allocation from
128 KiB up is then a fresh ``mmap``, zero-filled page by page as it is first touched, and
unmapped again when freed. A block's arrays (the haloed samples, the focus measure, the
row buffers: tens of MB) are allocated anew for every block, so a worker spent about 2 s of
system time per 6 s of work on page faults: a LocalCluster of 2 single-thread workers took
1.4x the threads scheduler's time on 2 cores (``benchmarks/RESULTS.md``).

While a run's tasks work in such a process (:func:`hold`), the allocator gets the limits
glibc's own adaptive setting grows to (blocks under 32 MiB from the heap, freed memory kept
up to 64 MiB), which is what the threads scheduler has. When the run closes in the process
(:func:`release`; on a cluster :func:`~.blocks.close_on_workers`), the process's own
setting is restored and the heap trimmed. A process whose environment sets neither variable
is left alone (glibc adapts by itself there). Elsewhere than glibc, nothing is done.

Arrays held across tasks (halo exchange's cores, kept until their last fuse) are each given
a mapping of their own (:func:`outside_heap`), used again for the run's next such array once
let go. From the heap they sat among the blocks' temporaries in glibc's per-thread arenas
and kept freed memory around them from being reused or returned: on 8192^2 x 32 uint8 at
2 x 256 MiB the process peaked up to 80 MiB over its bound, which limiting glibc to one
arena also removed (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import math
import mmap
import os
import sys
import threading
import weakref

import numpy as np

__all__ = ["forget", "held", "hold", "outside_heap", "release", "trim"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
#: glibc's adaptive thresholds at their largest (64-bit): mmap above 32 MiB, trim above twice
#: that (``DEFAULT_MMAP_THRESHOLD_MAX``; the adaptive trim threshold is twice the mmap one).
_MMAP_MAX = 32 * 2**20
_TRIM = 2 * _MMAP_MAX
# glibc's fixed thresholds once the environment set one of them
_MMAP_DEFAULT = _TRIM_DEFAULT = 128 * 2**10
_ENVIRONMENT = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")

#: Smaller arrays come from the heap, as glibc's own default threshold gives them.
_OWN_MAPPING = 128 * 2**10

_lock = threading.Lock()
_runs: set[str] = set()
_free: dict[str, collections.deque[mmap.mmap]] = {}  # by run: mappings whose arrays are gone


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc's: musl's mallopt does nothing  # noqa: B018
        return libc
    except (OSError, AttributeError):
        return None


def _fixed_by_environment() -> bool:
    return any(name in os.environ for name in _ENVIRONMENT)


def hold(token: str) -> None:
    """Run ``token`` uses this process: large arrays come from the heap (see the module
    docstring). Cheap once done; a no-op where the environment left glibc adaptive."""
    if token in _runs or not _fixed_by_environment():
        return
    libc = _libc()
    if libc is None:
        return
    with _lock:
        if not _runs:
            libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _TRIM)
        _runs.add(token)


def release(token: str) -> None:
    """Run ``token`` is over here: once no run holds this process, its own allocator setting
    (its environment's) is back and the memory kept is returned to the system."""
    with _lock:
        if token not in _runs:
            return
        _runs.discard(token)
        if _runs:
            return
        libc = _libc()
        if libc is None:  # pragma: no cover - hold() recorded nothing then
            return
        libc.mallopt(_M_MMAP_THRESHOLD, _environment_value("MALLOC_MMAP_THRESHOLD_",
                                                           _MMAP_DEFAULT))  # fmt: skip
        libc.mallopt(_M_TRIM_THRESHOLD, _environment_value("MALLOC_TRIM_THRESHOLD_",
                                                           _TRIM_DEFAULT))  # fmt: skip
        libc.malloc_trim(0)


def trim() -> None:
    """Give the heap's free memory back to the system (glibc; elsewhere nothing)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def held() -> set[str]:
    """The runs holding this process (for tests)."""
    with _lock:
        return set(_runs)


def _environment_value(name: str, default: int) -> int:
    with contextlib.suppress(KeyError, ValueError):
        return int(os.environ[name])
    return default


def outside_heap(shape: tuple[int, ...], dtype: np.dtype | str, token: str) -> np.ndarray:
    """An uninitialised C-contiguous array for data that outlives the task that made it (see
    the module docstring): in an anonymous mapping of its own (from 128 KiB; smaller ones
    from the heap), taken from those run ``token``'s arrays left free in this process where
    one is large enough. A fresh mapping is faulted page by page (20 ms to fill 26 MiB here,
    against 5 ms for the heap's reused pages), so each is used again once its array is let go,
    until :func:`forget` drops them; where the kernel allows, with 2 MiB pages."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes < _OWN_MAPPING or not hasattr(mmap, "MAP_ANONYMOUS"):
        return np.empty(shape, dtype)
    with _lock:
        free = _free.setdefault(token, collections.deque())
    mapping = _reused(free, nbytes)
    if mapping is None:
        mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            mapping.madvise(mmap.MADV_HUGEPAGE)
    array = np.frombuffer(mapping, dtype, count=count)
    # Every view of ``array`` has it as its base (NumPy's base of a view is the first array up
    # the chain that does not own its memory's object): the mapping is free once it is gone.
    weakref.finalize(array, free.append, mapping)
    return array.reshape(shape)


def _reused(free: collections.deque, nbytes: int) -> mmap.mmap | None:
    """A free mapping of at least ``nbytes``; one too small is dropped (unmapped), so the
    free ones never outnumber the arrays held at once. Free-threaded: ``append`` and ``pop``
    of a deque are atomic, and finalizers may append while this runs."""
    while True:
        try:
            mapping = free.pop()
        except IndexError:
            return None
        if len(mapping) >= nbytes:
            return mapping


def forget(token: str) -> None:
    """Run ``token`` is over in this process: its free mappings are unmapped (those still in
    use are when their arrays go)."""
    with _lock:
        _free.pop(token, None)
