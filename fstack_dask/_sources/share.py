"""An in-memory source handed to worker processes once, not with every task.

Each task of a run on worker processes or a cluster carries the run's
:class:`~fstack_dask._runs.blocks.FuseJob`, whose recipe opens the source again in the
worker. For a store that recipe is a path; for an in-memory NumPy array it would be
the array itself, pickled into every task and kept by every worker process. Instead:

* worker processes on this machine (``scheduler="processes"``) attach one copy of the
  array in shared memory (:mod:`multiprocessing.shared_memory`), read-only;
* cluster workers fetch one scattered copy each (``Client.scatter``; each task names
  the Future, which dask resolves to the worker's copy).

Either way a task carries only a name. dask-backed arrays are not copied (their graph
travels, and workers compute the regions they read).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ScatterLostError", "Shared", "release_attached", "shared_recipe"]

log = logging.getLogger("fstack_dask")


class ScatterLostError(RuntimeError):
    """The cluster lost the scattered copy of an in-memory source (its worker was killed,
    restarted or retired): scattered data has no lineage, so no task reading it can run."""


def _to_a_lost_worker(client: Any, exc: BaseException) -> bool:
    """Whether a scatter failed on a closed connection while the scheduler still answers: the
    worker the data was sent to died as it reached it (the OOM killer; one killed just
    before a copy was sent again), and the scheduler, whose send failed, closed the call.
    That failed the run "lost the connection to the dask scheduler ... (it stopped, or the
    network failed)"."""
    if "CommClosedError" not in f"{type(exc).__name__} {exc}":
        return False
    if getattr(client, "status", None) != "running":
        return False  # (closed by another thread: said so where the run fails)
    try:
        client.sync(client.scheduler.identity, callback_timeout=10)
    except Exception:
        return False  # the scheduler itself is gone
    return True


# Shared-memory blocks attached in this process: the arrays on them need the mappings.
_attached: list[Any] = []


@dataclass(frozen=True)
class _InSharedMemory:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def data(self) -> np.ndarray:
        from multiprocessing import shared_memory

        block = shared_memory.SharedMemory(name=self.name)
        _attached.append(block)
        array = np.ndarray(self.shape, np.dtype(self.dtype), buffer=block.buf)
        array.flags.writeable = False
        return array


def release_attached() -> None:
    """Unmap the shared-memory copies this process attached whose arrays are gone (at a
    run's end: a worker process kept for later runs would otherwise keep every run's
    source mapped, its memory not freed though the driver unlinked it)."""
    if not _attached:
        # nothing to unmap (a store's run): no full collection, 20-40 ms of a worker's CPU
        # over its ~120,000 objects at each run's end, which the run waits for
        return
    import gc

    gc.collect()  # arrays in reference cycles still hold their block's buffer
    kept = []
    for block in _attached:
        try:
            block.close()
        except BufferError:  # an array on it is still alive here: it stays mapped
            kept.append(block)
    _attached[:] = kept


@dataclass(frozen=True)
class _Scattered:
    """The array comes with each task, as an argument: dask resolves a scattered Future
    there to the worker's copy, fetched once per worker."""

    def data(self) -> np.ndarray:
        raise ValueError("the source's scattered copy did not come with the task")


@dataclass(frozen=True)
class Shared:
    """A picklable stand-in for an in-memory source: ``resolve()`` gives the array again
    (a DataArray rebuilt around it with its dims, coordinates and attributes); ``data``
    is the array where the task brought it."""

    where: _InSharedMemory | _Scattered
    xarray: tuple[Any, ...] | None = None  # dims, coords, attrs, name

    def resolve(self, data: np.ndarray | None = None) -> Any:
        data = self.where.data() if data is None else data
        if self.xarray is None:
            return data
        import xarray

        dims, coords, attrs, name = self.xarray
        return xarray.DataArray(data, dims=dims, coords=coords, attrs=attrs, name=name)


def _shared_memory_room() -> int | None:
    """Bytes free for shared memory (Linux's /dev/shm), or None where there is no such
    folder to ask."""
    try:
        st = os.statvfs("/dev/shm")
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def _numpy_data(src: Any) -> tuple[np.ndarray | None, tuple[Any, ...] | None]:
    """The NumPy array behind ``src`` (and what rebuilds a DataArray), or None."""
    if isinstance(src, np.ndarray):
        return src, None
    if type(src).__module__.split(".")[0] == "xarray" and isinstance(
        getattr(src, "data", None), np.ndarray
    ):
        return src.data, (src.dims, src.coords, src.attrs, src.name)
    return None, None


@contextlib.contextmanager
def shared_recipe(
    recipe: tuple[Any, ...],
    kind: str,
    client: Any = None,
    a_worker: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """``(recipe, task_args)``: ``recipe`` (src first) for tasks on a scheduler of ``kind``,
    its in-memory array shared while the block runs (removed or released after), and the
    arguments each task takes after its blocks (the scattered array, on a cluster).
    ``a_worker()`` is entered once the cluster has a worker to scatter to, which it keeps
    until the scatter is done (an adaptive cluster scaled to none starts one for a task)."""
    data, xarray_parts = _numpy_data(recipe[0])
    if data is None or kind not in ("processes", "distributed"):
        yield recipe, ()
        return
    if kind == "processes":
        from multiprocessing import shared_memory

        room = _shared_memory_room()
        if room is not None and data.nbytes > room:
            # Filling a block beyond the room kills the process (SIGBUS): a container's
            # /dev/shm is 64 MiB unless it is given more.
            log.warning(
                "the in-memory source (%.1f MiB) does not fit in shared memory (%.1f MiB "
                "free in /dev/shm): it is sent to the worker processes with every task",
                data.nbytes / 2**20, room / 2**20,
            )  # fmt: skip
            yield recipe, ()
            return
        block = shared_memory.SharedMemory(create=True, size=max(1, data.nbytes))
        try:
            copy = np.ndarray(data.shape, data.dtype, buffer=block.buf)
            copy[...] = data
            del copy  # no view may outlive the block's close()
            where = _InSharedMemory(block.name, tuple(data.shape), data.dtype.str)
            yield (Shared(where, xarray_parts), *recipe[1:]), ()
        finally:
            block.close()
            block.unlink()
        return
    # a scatter is no task: an adaptive cluster scaled to no worker started none for it, and
    # it failed "No valid workers found" after 30 s, a valid run refused
    with a_worker():
        try:
            future = client.scatter(data, hash=False)
        except Exception as exc:
            if _to_a_lost_worker(client, exc):  # sent again, as a copy lost later is
                raise ScatterLostError(
                    "the cluster lost its copy of the in-memory source with the worker it was "
                    "being sent to (killed, restarted or retired)"
                ) from exc
            raise
    try:
        yield (Shared(_Scattered(), xarray_parts), *recipe[1:]), (future,)
    except Exception as exc:
        # the tasks naming it are cancelled "already forgotten", a traceback of dask's that
        # named neither the cause nor the way on
        if isinstance(exc, cf.CancelledError) and future.status != "finished":
            raise ScatterLostError(
                "the cluster lost its copy of the in-memory source with the worker that held "
                "it (killed, restarted or retired)"
            ) from exc
        raise
    finally:
        future.release()
