"""Zarr to OME-Zarr fusion: validation, planning, chunk-aligned writes, resume and locking.

Every task computes one y/x block and writes that block's region of the
output arrays itself, then drops a per-block "done" marker. Block regions are
unions of whole Zarr chunks, so no two tasks ever write into the same chunk. A
run that dies leaves the markers of finished blocks; ``resume=True`` computes
only the blocks without one. A block that was being written when the run died
has no marker, so it is recomputed and rewritten.

One run at a time writes a dst: it holds ``dst/.fstack_dask/lock`` (host, pid,
pid start time; its mtime is a heartbeat), and an existing dst is only emptied
or resumed under that lock. A lock whose owner is gone is stale and is taken
over (see `_lock_is_live`). A run that fails releases its lock; a dst it
created with no block finished is removed, otherwise the partial output is kept
for ``resume=True`` (see `_guarded`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import dask
import fsspec
import numpy as np
import zarr
from dask.delayed import delayed

try:  # POSIX: serialises the takeover of a stale lock between processes on one host
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

from ._batches import batch_of, plan_batches
from ._dask import (
    DEFAULT_MEMORY_PER_TASK,
    Channels,
    Layers,
    fused_layers,
    plan_chunks,
    resolve_channels,
)
from ._io import (
    Source,
    SourceReadError,
    check_destination,
    check_outside_source,
    create_output,
    open_source,
    source_dask_array,
)
from ._utils import check_dtype, check_focus, check_nhsize
from ._version import __version__

__all__ = ["DestinationFullError", "DestinationLockedError", "fuse_zarr"]

log = logging.getLogger("fstack_dask")

STATE_DIR = ".fstack_dask"  # inside dst: progress markers and the lock, removed on success
LOCK_STALE_AFTER = 60.0  # seconds without a heartbeat before another host's lock is stale
HEARTBEAT_EVERY = 10.0
BATCH_BUDGET_PER_TASK = 1.75  # a batch's source chunks may take this many times memory_per_task
PROGRESS_MINIMUM = 1.0  # seconds before the local progress bar shows (dask's ``minimum``)
CLUSTER_DRAIN_TIMEOUT = 600.0  # seconds a failed batch's running tasks get to finish
FAILED_BLOCKS_LIMIT = 64  # blocks spoilt by unreadable source chunks before a run stops


class DestinationLockedError(RuntimeError):
    """Another live run is writing the same destination."""


class DestinationFullError(OSError):
    """The device holding the destination is full (ENOSPC) or over quota."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self):
        return type(self), (self.strerror,)


def fuse_zarr(
    src: Any,
    dst: str | os.PathLike[str],
    *,
    axes: str | None = None,
    channels: Channels = "auto",
    nhsize: int = 9,
    focus: Any = None,
    alpha: float = 0.2,
    sth: float = 13,
    depth_map: bool = False,
    selectivity_map: bool = False,
    chunks: int | tuple[int, int] | None = None,
    memory_per_task: int = DEFAULT_MEMORY_PER_TASK,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    scheduler: Any = None,
    storage_options: dict[str, Any] | None = None,
    dst_storage_options: dict[str, Any] | None = None,
) -> zarr.Group:
    """Fuse a focus stack stored as Zarr into an OME-Zarr 0.5 all-in-focus image.

    Out of core: each task reads one y/x block of the stack with its halo,
    fuses it (Pertuz et al. 2013, as :func:`focus_stack`) and writes its own
    region of the output, so memory is bounded by ``memory_per_task`` whatever
    the image size, and the output is bit-identical to the in-memory result
    whatever the chunking and the scheduler.

    Parameters
    ----------
    src : str, os.PathLike or zarr.Array
        A Zarr v2/v3 array, or an OME-Zarr image group (NGFF 0.4 or 0.5; axes
        from its metadata, level 0), as a local path or fsspec URL.
    dst : str or os.PathLike
        Where to write the OME-Zarr 0.5 image group (Zarr v3). Its level
        ``"0"`` is the fused image in the input's dtype with axes (batch...,
        ``c`` if any, ``y``, ``x``) and the input's y/x scale.
    axes : str, optional
        Axes of a plain array (e.g. ``"zyx"``, ``"czyx"``, ``"tczyx"``,
        ``"yxz"``, ``"yxzc"``) when it has no dimension names.
    channels : {"auto", "rgb", "independent"}, optional
        See :func:`fuse`. Default ``"auto"``: RGB for 3 uint8 channels,
        otherwise each channel is fused on its own.
    nhsize, focus, alpha, sth
        As in :func:`focus_stack`.
    depth_map, selectivity_map : bool, optional
        Also write ``depth`` (focus position of the sharpest plane, float32,
        NaN where no plane has contrast) and ``selectivity`` (S in dB,
        float32, NaN where undefined) arrays into the same group.
    chunks : int or (int, int), optional
        y/x block (and output chunk) size. Default: the largest block that
        fits ``memory_per_task``, aligned to the source's chunk grid.
    memory_per_task : int, optional
        Bytes one task may hold (default 256 MiB); see the README.
    overwrite : bool, optional
        Replace an existing ``dst`` (a Zarr store or an empty directory).
    resume : bool, optional
        Continue an interrupted run into ``dst``: only blocks not yet written
        are computed. Parameters must match the interrupted run.
    progress : bool, optional
        Show a progress bar (local schedulers and distributed).
    scheduler : optional
        ``"synchronous"``, ``"threads"``, ``"processes"``, a
        ``distributed.Client`` or a scheduler address; default: Dask's
        current scheduler (an active ``Client`` if there is one).
    storage_options, dst_storage_options : dict, optional
        fsspec options for URL ``src`` and ``dst``.

    Returns
    -------
    zarr.Group
        The output group, opened read-only.

    Raises
    ------
    FileNotFoundError, FileExistsError, ValueError, TypeError
        For bad input or a refused destination, before anything is written.
    PermissionError
        If ``dst`` cannot be created (read-only or missing location).
    DestinationLockedError
        If another live run is writing ``dst`` (see ``_lock_is_live``).
    SourceReadError
        If source chunks cannot be read or decoded (corrupt, truncated); names
        the source and the chunk. The blocks that do not read them are still
        written.
    DestinationFullError
        If the device holding ``dst`` fills up (ENOSPC or over quota).

    Notes
    -----
    A run that fails releases its lock. If it created ``dst`` and no block was
    finished, it removes ``dst`` again (nothing is left behind); otherwise the
    partial output stays, marked incomplete, and ``resume=True`` continues it
    (after a kill, an interruption, a full disk or a repaired source alike).

    References
    ----------
    .. [1] S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of
       all-in-focus images by noise-robust selective fusion of limited
       depth-of-field images", IEEE Trans. Image Process. 22(3):1242-1251,
       2013. doi:10.1109/TIP.2012.2231087

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from fstack_dask import fuse_zarr, synthetic_stack
    >>> from fstack_dask._io import write_ome_zarr_stack
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> stack = synthetic_stack((64, 64), 7, seed=0).stack.transpose(2, 0, 1)  # z, y, x
    >>> write_ome_zarr_stack(tmp / "in.zarr", stack, axes="zyx")
    >>> out = fuse_zarr(tmp / "in.zarr", tmp / "out.zarr", depth_map=True, progress=False)
    >>> out["0"].shape, out["depth"].dtype == "float32"
    ((64, 64), True)
    """
    source = open_source(src, axes=axes, storage_options=storage_options)
    check_dtype(source.array.dtype, "src")
    array = source_dask_array(source)
    if chunks is None:
        chunks = _default_chunks(source, channels=channels, nhsize=nhsize, budget=memory_per_task)
    else:
        chunks = _check_chunks(chunks)
    with_maps = depth_map or selectivity_map
    # Builds the graph and validates every parameter; computes nothing.
    layers = fused_layers(
        array,
        axes=source.axes,
        nhsize=nhsize,
        focus=focus,
        alpha=alpha,
        sth=sth,
        channels=channels,
        chunks=chunks,
        memory_per_task=memory_per_task,
        with_maps=with_maps,
    )
    params = _provenance(source, layers, nhsize, focus, alpha, sth, depth_map, selectivity_map)
    dst_str = os.fspath(dst)
    target = _Target(dst_str, dst_storage_options, n_blocks=math.prod(layers.array.numblocks))
    src_ref = _source_ref(src, source)

    def work(group: zarr.Group, resumed: bool = False) -> None:
        _fuse_into(group, layers, target, progress, scheduler, memory_per_task, resumed)

    # Nothing below writes before every check has passed.
    target.refuse_live_lock()  # whatever we were asked: a live run owns dst
    state = target.state()
    if resume and state in ("complete", "unfinished"):
        check_outside_source(dst_str, src_root=src_ref, storage_options=dst_storage_options)
        _check_resumable(dst_str, params, dst_storage_options, mode="r")
        lock = _acquire(target, created=None)
        _guarded(target, lock, None, lambda: _resume(target, params, work))
    elif resume and state == "other":
        check_outside_source(dst_str, src_root=src_ref, storage_options=dst_storage_options)
        raise ValueError(
            f"dst {dst_str!r} exists but is not an fstack_dask output; cannot resume into it"
        )
    else:  # a fresh run (or resuming one that was killed before it had created dst)
        check_outside_source(dst_str, src_root=src_ref, storage_options=dst_storage_options)
        ours = state in ("unfinished", "creating")
        if ours and not (overwrite or resume):
            raise FileExistsError(
                f"dst {dst_str!r} holds an unfinished fstack_dask run; continue it with "
                "resume=True, or start over with overwrite=True"
            )
        if state != "creating":  # an unfinished creation is ours to replace
            check_destination(
                dst_str,
                src_root=src_ref,
                overwrite=overwrite,
                storage_options=dst_storage_options,
            )
        if state == "absent":
            created = target.claim()
            lock = _acquire(target, created=created)
        else:  # replaced only under its lock, so a run that has just started is safe
            lock = _acquire(target, created=None)
            created = target.path  # from now on dst is this run's
            try:
                target.clear()
            except BaseException as exc:
                lock.release()
                _reraise(exc, target, kept=True)

        def create_and_fuse() -> None:
            work(_create(dst_str, source, layers, params, dst_storage_options))

        _guarded(target, lock, created, create_and_fuse)
    return zarr.open_group(dst_str, mode="r", storage_options=dst_storage_options)


def refuse_live_lock(dst: str | os.PathLike[str], storage_options=None) -> None:
    """Raise `DestinationLockedError` if a live run holds the lock of ``dst``."""
    _Target(os.fspath(dst), storage_options, n_blocks=0).refuse_live_lock()


def _acquire(target: _Target, created: str | None) -> _DestinationLock:
    """Take dst's lock; on an I/O error remove what this run ``created`` (if anything)."""
    lock = target.lock()
    try:
        lock.acquire()
    except DestinationLockedError:
        raise  # another run holds dst: nothing here is ours to remove
    except BaseException as exc:
        if created is not None:
            with contextlib.suppress(Exception):
                target.discard(created)
        _reraise(exc, target, kept=created is None)
    return lock


def _resume(target: _Target, params: Mapping[str, Any], work) -> None:
    group = _check_resumable(target.dst, params, target.storage_options, mode="r+")
    if group is not None:
        target.remove_partial_files()  # left by writes a kill cut short
        work(group, resumed=True)


def _guarded(target: _Target, lock: _DestinationLock, created: str | None, work) -> None:
    """Run ``work`` holding ``lock``; on success remove the state, on failure tidy up.

    A failed run always releases the lock. It removes the dst it created itself
    (``created``) when no block was finished, so an error leaves nothing behind;
    once a block is finished the partial output is kept, marked incomplete, for
    ``resume=True``. An interrupted run (KeyboardInterrupt) keeps it always.
    """
    try:
        work()
    except BaseException as exc:
        lock.stop_heartbeat()
        kept = True
        if created is not None and isinstance(exc, Exception) and target.n_done() == 0:
            with contextlib.suppress(Exception):
                target.discard(created)
                kept = False
        lock.release()
        _reraise(exc, target, kept=kept)
    target.finish(lock)


def _reraise(exc: BaseException, target: _Target, *, kept: bool) -> NoReturn:
    """Raise ``exc``, or a clearer error for a full disk or an unreadable source."""
    if kept:
        n = target.n_done()
        left = (
            f"dst {target.dst!r} is kept with {n} of {target.n_blocks} blocks done; "
            "rerun with resume=True to continue"
        )
    else:
        left = "nothing was written"
    if _is_no_space(exc):
        raise DestinationFullError(
            f"no space left on device while writing dst {target.dst!r}: free space or choose "
            f"another dst; {left}"
        ) from exc
    if isinstance(exc, SourceReadError):
        left = left.replace("rerun with", "repair the source and rerun with")
        raise SourceReadError(f"{exc}; {left}") from exc
    raise exc


def _is_no_space(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _fuse_into(
    group, layers: Layers, target: _Target, progress, scheduler, memory_per_task, resumed
):
    target.fs.makedirs(target.done_dir, exist_ok=True)
    done = target.done()
    tasks = _write_tasks(layers, group, target.fs, target.done_dir, done)
    if resumed:  # the number of blocks this run computes (the tests rely on it)
        log.info("resuming %s: %d of %d blocks left", target.dst, len(tasks), target.n_blocks)
    else:
        log.debug("fusing into %s: %d blocks", target.dst, len(tasks))
    src_shape = group.attrs["fstack_dask"]["src_shape"]
    n_planes = src_shape[group.attrs["fstack_dask"]["src_axes"].index("z")]
    by, bx = (c[0] for c in layers.array.chunks[-2:])
    block_bytes = n_planes * by * bx * layers.dtype.itemsize * (3 if layers.plan.rgb else 1)
    budget = int(BATCH_BUDGET_PER_TASK * memory_per_task)
    _run(tasks, progress, scheduler, block_bytes, budget, layers.array.numblocks, target.done)
    attrs = dict(group.attrs["fstack_dask"])
    attrs["complete"] = True
    group.attrs["fstack_dask"] = attrs


def _check_chunks(chunks: Any) -> tuple[int, int]:
    pair = (chunks, chunks) if isinstance(chunks, (int, np.integer)) else chunks
    ok = isinstance(pair, (tuple, list)) and len(pair) == 2
    if not ok or not all(
        isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_)) and c >= 1
        for c in pair
    ):
        raise ValueError(f"chunks must be a positive int or a (y, x) pair of them, got {chunks!r}")
    return int(pair[0]), int(pair[1])


def _source_ref(src: Any, source: Source) -> str | None:
    """What dst must stay out of: the source's local directory, else its fsspec URL."""
    if source.root is not None:
        return source.root
    if isinstance(src, (str, os.PathLike)) and "://" in source.url:
        return source.url
    return None  # an open node in a non-fsspec store (e.g. zarr's MemoryStore)


def _default_chunks(source: Source, *, channels: str, nhsize: int, budget: int):
    """Blocks that fit the budget, on the source's chunk grid so each source chunk is read once."""
    axes, shape = source.axes, source.array.shape
    rgb = resolve_channels(channels, axes, shape, source.array.dtype)
    grid = source.array.chunks
    return plan_chunks(
        (shape[axes.index("y")], shape[axes.index("x")]),
        n_planes=shape[axes.index("z")],
        n_channels=3 if rgb else 1,
        itemsize=np.dtype(source.array.dtype).itemsize,
        nhsize=check_nhsize(nhsize),
        rgb=rgb,
        memory_per_task=budget,
        align=(grid[axes.index("y")], grid[axes.index("x")]),
    )


def _provenance(source: Source, layers: Layers, nhsize, focus, alpha, sth, depth_map, sel_map):
    """Everything that determines the output; a resumed run must match it."""
    n_planes = source.array.shape[source.axes.index("z")]
    return {
        "version": __version__,
        "method": "Pertuz et al. 2013 noise-robust selective all-in-focus fusion",
        "src": source.url,
        "src_axes": source.axes,
        "src_shape": [int(n) for n in source.array.shape],
        "nhsize": int(nhsize),
        "focus": check_focus(focus, n_planes).tolist(),
        "alpha": float(alpha),
        "sth": float(sth),
        "channels": "rgb" if layers.plan.rgb else "independent",
        "chunks": [[int(c) for c in cs] for cs in layers.array.chunks[-2:]],
        "depth_map": bool(depth_map),
        "selectivity_map": bool(sel_map),
        "complete": False,
    }


def _create(dst, source: Source, layers: Layers, params, storage_options) -> zarr.Group:
    size_of = {a: source.array.shape[source.axes.index(a)] for a in source.axes}
    if layers.plan.rgb:
        size_of["c"] = 3
    chunk_of = {"y": layers.out_chunks[0][0], "x": layers.out_chunks[1][0]}
    extras = {}
    if params["depth_map"]:
        extras["depth"] = (layers.map_axes, "float32")
    if params["selectivity_map"]:
        extras["selectivity"] = (layers.map_axes, "float32")
    axes = layers.image_axes
    return create_output(
        dst,
        axes=axes,
        shape=tuple(size_of[a] for a in axes),
        dtype=layers.dtype,
        chunks=tuple(chunk_of.get(a, 1) for a in axes),
        scale=source.scale,
        units=source.units,
        extras=extras,
        storage_options=storage_options,
        attributes=params,
        checked=True,  # dst is the directory this run created and holds the lock in
    )


def _check_resumable(
    dst: str, params: Mapping[str, Any], storage_options, mode: str
) -> zarr.Group | None:
    """The group to continue writing, or None when it is already complete."""
    try:
        group = zarr.open_group(dst, mode=mode, storage_options=storage_options)
        stored = dict(group.attrs["fstack_dask"])
    except Exception as exc:
        raise ValueError(
            f"dst {dst!r} exists but is not an fstack_dask output; cannot resume into it"
        ) from exc
    differs = sorted(
        k for k in params if k not in ("complete", "version") and stored.get(k) != params[k]
    )
    if differs:
        raise ValueError(
            f"dst {dst!r} was started with different {', '.join(differs)}; "
            "resume with the same parameters, or start over with overwrite=True and resume=False"
        )
    return None if stored.get("complete") else group


# ------------------------------------------------------------ dst and its lock


_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")  # zarr's LocalStore temporary files


class _Target:
    """The destination: its state folder (done-markers, the lock) and how to tidy it."""

    def __init__(self, dst: str, storage_options: dict[str, Any] | None, n_blocks: int):
        self.dst, self.storage_options, self.n_blocks = dst, storage_options, n_blocks
        self.fs, self.state_path = fsspec.core.url_to_fs(
            dst + "/" + STATE_DIR, **(storage_options or {})
        )
        self.path = self.state_path.rsplit("/", 1)[0]
        self.done_dir = self.state_path + "/done"
        self.local = self.path if _is_local(self.fs) else None

    def state(self) -> str:
        """ "absent"; "complete" or "unfinished" (an fstack_dask output); "creating" (a run
        was killed while creating it: our state folder, no provenance yet); "other"."""
        if not self.fs.exists(self.path):
            return "absent"
        attrs = None
        with contextlib.suppress(Exception):
            attrs = json.loads(self.fs.cat_file(self.path + "/zarr.json"))["attributes"]
        if isinstance(attrs, dict) and isinstance(attrs.get("fstack_dask"), dict):
            return "complete" if attrs["fstack_dask"].get("complete") else "unfinished"
        if self.fs.isdir(self.state_path) and self.n_done() == 0:
            return "creating"
        return "other"

    def refuse_live_lock(self) -> None:
        info = _read_lock(self.fs, self.state_path + "/lock")
        if info is not None and _lock_is_live(info):
            raise DestinationLockedError(_locked_message(self.dst, info))

    def lock(self) -> _DestinationLock:
        return _DestinationLock(self)

    def done(self) -> set[str]:
        try:
            return {p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.done_dir, False)}
        except FileNotFoundError:
            return set()

    def n_done(self) -> int:
        return len(self.done())

    def clear(self) -> None:
        """Empty an existing dst for a new run, holding its lock: everything goes (earlier
        done-markers included) but the lock. dst was checked to be a Zarr store, an empty
        folder, or ours."""
        for folder, keep in ((self.path, STATE_DIR), (self.state_path, "lock")):
            for entry in self.fs.ls(folder, detail=False):
                if entry.rstrip("/").rsplit("/", 1)[-1] != keep:
                    self.fs.rm(entry, recursive=True)

    def claim(self) -> str:
        """Create dst; return the topmost folder created (to remove on an early failure).

        Locally the folder is created with ``mkdir``, which fails if it exists: of two
        runs starting together, exactly one goes on.
        """
        if self.local is None:
            self.fs.makedirs(self.path, exist_ok=True)
            return self.path
        top = self.local
        while not os.path.exists(os.path.dirname(top)) and os.path.dirname(top) != top:
            top = os.path.dirname(top)
        try:
            os.makedirs(os.path.dirname(self.local), exist_ok=True)
            try:
                os.mkdir(self.local)
            except FileExistsError:
                raise DestinationLockedError(
                    f"dst {self.dst!r} was created by another run starting at the same time; "
                    "a second run into the same dst is refused"
                ) from None
        except OSError as exc:
            with contextlib.suppress(Exception):
                self.discard(top)
            if _is_no_space(exc):
                raise
            raise PermissionError(
                f"dst {self.dst!r} cannot be created: {exc.strerror or exc}"
            ) from exc
        return top

    def discard(self, created: str) -> None:
        """Remove what this run created: dst and the parent folders it made."""
        if self.local is None:
            if self.fs.exists(self.path):
                self.fs.rm(self.path, recursive=True)
            return
        if os.path.isdir(self.local):
            shutil.rmtree(self.local)
        parent = os.path.dirname(self.local)
        while len(parent) >= len(created) and parent.startswith(created):
            try:
                os.rmdir(parent)  # only if empty: never anything that is not ours
            except OSError:
                break
            parent = os.path.dirname(parent)

    def remove_partial_files(self) -> None:
        """Delete the temporary files of zarr writes that a kill interrupted."""
        if self.local is None:
            return
        for root, dirs, files in os.walk(self.local):
            if root == self.local:
                dirs[:] = [d for d in dirs if d != STATE_DIR]
            for name in files:
                if _PARTIAL.search(name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(root, name))

    def finish(self, lock: _DestinationLock) -> None:
        """After success: markers first, then the lock, then the state folder."""
        if self.fs.exists(self.done_dir):
            self.fs.rm(self.done_dir, recursive=True)
        lock.release()
        if self.fs.exists(self.state_path):
            self.fs.rm(self.state_path, recursive=True)


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _read_lock(fs, lock_path: str) -> dict[str, Any] | None:
    try:
        raw = fs.cat_file(lock_path)
        mtime = fs.modified(lock_path).timestamp()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(raw)
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
    except ValueError:  # not ours, or torn: only its age can tell
        info = {"host": None, "pid": None}
    info["mtime"] = mtime
    return info


def _lock_is_live(info: Mapping[str, Any]) -> bool:
    """Whether the lock's owner may still be running.

    Same host: its pid exists and was started when the lock says (a recycled pid
    belongs to another process). Another host, or a lock we cannot read: a heartbeat
    (the lock file's mtime) within the last ``LOCK_STALE_AFTER`` seconds.
    """
    if info.get("host") == socket.gethostname():
        try:
            pid = int(info.get("pid", -1))
        except (TypeError, ValueError):
            pid = -1
        if pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by another user
        return _pid_start_matches(pid, info.get("pid_start"))
    return time.time() - float(info.get("mtime", 0.0)) < LOCK_STALE_AFTER


def _pid_start(pid: int) -> str | None:
    # The start time tells a recycled pid apart from the lock's owner (Linux).
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_start_matches(pid: int, recorded: str | None) -> bool:
    current = _pid_start(pid)
    return recorded is None or current is None or current == recorded


def _locked_message(dst: str, info: Mapping[str, Any]) -> str:
    owner = (
        f"pid {info.get('pid')} on {info.get('host')}"
        if info.get("host")
        else "another run (unreadable lock)"
    )
    return (
        f"dst {dst!r} is being written by {owner}; a second run into the same dst is refused "
        f"(wait for it to finish; a lock without heartbeat for {LOCK_STALE_AFTER:g} s is stale)"
    )


def _owner_text(info: Mapping[str, Any]) -> str:
    return f"pid {info.get('pid')} on {info.get('host')}"


class _DestinationLock:
    """A lock file in dst's state folder, refreshed by a heartbeat thread.

    Taken with an exclusive create (locally: written aside, then hard-linked into
    place, so it is never seen half-written). A lock whose owner is gone (see
    `_lock_is_live`) is stale and is taken over; locally the check and the takeover
    happen under ``flock`` on the state folder, so two runs cannot both take over.
    """

    def __init__(self, target: _Target):
        self.target = target
        self.fs, self.path, self.dst = target.fs, target.state_path + "/lock", target.dst
        self.body = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "pid_start": _pid_start(os.getpid()),
                "started": time.time(),
            }
        ).encode()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False

    def acquire(self) -> None:
        self.fs.makedirs(self.target.state_path, exist_ok=True)
        with self._guard():
            for _ in range(2):
                if self._create():
                    break
                info = _read_lock(self.fs, self.path)
                if info is not None and _lock_is_live(info):
                    raise DestinationLockedError(_locked_message(self.dst, info))
                if info is not None:
                    log.info("taking over the stale lock of %s on %s", _owner_text(info), self.dst)
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(self.path)
            else:
                raise DestinationLockedError(f"could not take the lock on dst {self.dst!r}")
        self._held = True
        self._thread = threading.Thread(target=self._beat, name="fstack-dask-lock", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        if self.target.local is None or fcntl is None:
            yield
            return
        fd = os.open(os.path.join(self.target.local, STATE_DIR), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _create(self) -> bool:
        """Exclusively create the lock file with our body; False if one exists."""
        if self.target.local is None:
            try:
                with self.fs.open(self.path, "xb") as fh:
                    fh.write(self.body)
            except FileExistsError:
                return False
            return True
        lock = os.path.join(self.target.local, STATE_DIR, "lock")
        aside = f"{lock}.{os.getpid()}.{uuid.uuid4().hex}"
        try:
            with open(aside, "wb") as fh:
                fh.write(self.body)
            os.link(aside, lock)  # atomic, and fails if the lock exists
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(aside)
        return True

    def _mine(self) -> bool:
        try:
            return self.fs.cat_file(self.path) == self.body
        except Exception:
            return False

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY):
            with contextlib.suppress(Exception):
                if self._mine():  # never refresh a lock someone else holds now
                    if self.target.local is not None:
                        os.utime(os.path.join(self.target.local, STATE_DIR, "lock"))
                    else:
                        self.fs.touch(self.path, truncate=False)

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def release(self) -> None:
        self.stop_heartbeat()
        if self._held and self._mine():
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path)
        self._held = False


# ---------------------------------------------------------------- writing


def _block_regions(chunks: tuple[tuple[int, ...], ...]) -> Iterator[tuple[tuple[int, ...], tuple]]:
    starts = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in chunks]
    for index in np.ndindex(*(len(c) for c in chunks)):
        yield (
            index,
            tuple(slice(int(s[i]), int(s[i + 1])) for s, i in zip(starts, index, strict=True)),
        )


def _write_tasks(layers: Layers, group: zarr.Group, fs, done_dir: str, done: set):
    """(block index, delayed write) per block not yet done; graph culling drops the rest."""
    blocks = layers.array.to_delayed().reshape(-1)
    # Without the dask array: delayed would make every write depend on the whole image.
    meta = layers._replace(array=None)
    targets = {"image": group["0"]}
    for name in ("depth", "selectivity"):
        if name in group:
            targets[name] = group[name]
    tasks = []
    for flat, (index, region) in enumerate(_block_regions(layers.array.chunks)):
        key = _marker_name(index)
        if key in done:
            continue
        task = delayed(_write_block, pure=False)(
            blocks[flat], region, meta, targets, fs, f"{done_dir}/{key}"
        )
        tasks.append((index, task))
    return tasks


def _write_block(block: np.ndarray, region: tuple, layers: Layers, targets, fs, marker: str):
    """Write one block's regions of every output, then mark it done."""
    k_ax = block.ndim - 3
    lead, yx = region[:k_ax], region[k_ax + 1 :]
    if layers.plan.rgb:  # lead ends with the (length-1) colour slot: all 3 colours
        img_region = lead[:-1] + (slice(0, 3),) + yx
        map_region = lead[:-1] + yx
    else:
        img_region = map_region = lead + yx
    targets["image"][img_region] = layers.split(block, "image").astype(layers.dtype)
    for name in ("depth", "selectivity"):
        if name in targets:
            targets[name][map_region] = layers.split(block, name).astype(np.float32)
    fs.pipe_file(marker, b"")  # only after every region is written
    return 1


def _marker_name(index: tuple[int, ...]) -> str:
    return "_".join(map(str, index))


def _batched(tasks: list, numblocks: tuple[int, ...], block_bytes: int, budget: int) -> list:
    """Group the (index, write task) pairs into spatial batches (see ``_batches``), per
    batch/channel index."""
    batches = plan_batches(tuple(numblocks[-2:]), block_bytes, budget)
    groups: dict[tuple, list] = {}
    for index, task in tasks:
        key = (*index[:-3], batch_of(index[-2:], batches))
        groups.setdefault(key, []).append((index, task))
    return [groups[k] for k in sorted(groups)]


def _run(tasks: list, progress: bool, scheduler: Any, block_bytes, budget, numblocks, done_of):
    """Compute the writes batch after batch, so held source chunks stay within ``budget``.

    A source chunk that cannot be read (`SourceReadError`) spoils only the blocks
    that read it: the other blocks are still computed and written (locally, a failed
    batch is retried block by block), so that after repairing the source a resume
    computes only the spoilt blocks. The error is raised at the end, or once
    ``FAILED_BLOCKS_LIMIT`` blocks have failed. Any other error stops the run at
    once. Either way the writes already running are let finish before this returns
    (each local batch runs in a thread pool of its own that is shut down and waited
    for; on a cluster, the batch's other tasks are waited for), so that no write lands
    after the caller has released the lock or removed dst.

    ``done_of()`` returns the names of the blocks with a done-marker.
    """
    if not tasks:
        return
    failures: list[SourceReadError] = []
    with contextlib.ExitStack() as stack:
        client = _client_for(scheduler, stack)
        if client is not None:  # each worker process holds its share of a batch
            budget *= max(1, len(client.scheduler_info().get("workers", {})))
        groups = _batched(tasks, numblocks, block_bytes, budget)
        bar = _BatchProgress(len(tasks)) if progress and len(groups) > 1 else None
        if bar is not None:
            stack.callback(bar.close)  # ends its line, also before an error message
        for group in groups:
            if client is not None:
                failures += _compute_on_cluster(client, group, progress and bar is None)
            else:
                failures += _compute_locally(
                    group, scheduler, progress and bar is None, done_of, len(failures)
                )
            if bar is not None:
                bar.advance(len(group))
            if len(failures) >= FAILED_BLOCKS_LIMIT:
                break
    if failures:
        unique = list(dict.fromkeys(str(e) for e in failures))
        more = f" (and {len(unique) - 1} more)" if len(unique) > 1 else ""
        raise SourceReadError(
            f"{unique[0]}{more}; {len(failures)} block(s) could not be computed"
        ) from failures[0]


def _compute_locally(group: list, scheduler, show_bar: bool, done_of, n_failed: int) -> list:
    """Compute one batch; after a `SourceReadError`, its unfinished blocks one by one."""
    try:
        _local_compute([t for _, t in group], scheduler, show_bar)
        return []
    except SourceReadError as exc:
        first = exc
    log.debug("%s; computing the rest of the batch block by block", first)
    failures: list[SourceReadError] = []
    done = done_of()
    for index, task in group:
        if _marker_name(index) in done:
            continue
        try:  # in this process, so a block that cannot be read fails alone
            dask.compute(task, scheduler="synchronous")
        except SourceReadError as exc:
            failures.append(exc)
            if n_failed + len(failures) >= FAILED_BLOCKS_LIMIT:
                break
    return failures


def _local_compute(tasks: list, scheduler: Any, show_bar: bool) -> None:
    """``dask.compute`` on a local scheduler; the threaded one gets a pool of its own, shut
    down and waited for when the batch ends, however it ends."""
    get = dask.base.get_scheduler(scheduler=scheduler) or dask.threaded.get
    with contextlib.ExitStack() as stack:
        kwargs: dict[str, Any] = {"scheduler": scheduler}
        if get is dask.threaded.get:
            from concurrent.futures import ThreadPoolExecutor

            workers = dask.config.get("num_workers", None) or dask.threaded.CPU_COUNT
            pool = ThreadPoolExecutor(workers, thread_name_prefix="fstack-dask")
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            kwargs = {"scheduler": "threads", "pool": pool}
        if show_bar:
            from dask.diagnostics import ProgressBar

            stack.enter_context(ProgressBar(out=sys.stderr, minimum=PROGRESS_MINIMUM))
        dask.compute(*tasks, **kwargs)


def _compute_on_cluster(client, group: list, progress: bool) -> list:
    """Compute one batch on a cluster; the blocks that failed on an unreadable source."""
    from distributed import wait

    futures = client.compute([t for _, t in group])
    try:
        if progress:
            _distributed_progress(futures)
        client.gather(futures)
        return []
    except Exception as exc:
        # The batch's other tasks may still be writing: let them finish (or fail) first.
        with contextlib.suppress(Exception):
            wait(futures, timeout=CLUSTER_DRAIN_TIMEOUT)
        if isinstance(exc, SourceReadError):
            errors = [f.exception() for f in futures if f.status == "error"]
            if all(isinstance(e, SourceReadError) for e in errors):
                return errors or [exc]
        raise
    except BaseException:
        client.cancel(futures)
        raise


class _BatchProgress:
    """One text bar over all batches (dask's bars would print one per batch)."""

    def __init__(self, total: int, width: int = 40):
        self.total, self.width, self.done = total, width, 0
        self.start = time.perf_counter()
        self._draw()

    def advance(self, n: int) -> None:
        self.done += n
        self._draw()

    def _draw(self) -> None:
        frac = self.done / self.total
        filled = int(round(frac * self.width))
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(
            f"\r[{'#' * filled}{' ' * (self.width - filled)}] {frac:4.0%} "
            f"{self.done}/{self.total} blocks | {elapsed:.1f}s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def _distributed_progress(futures: list) -> None:
    from distributed import progress as dist_progress

    if _in_notebook():
        with contextlib.suppress(ImportError):  # the widget needs ipywidgets
            from IPython.display import display

            display(dist_progress(futures, notebook=True))  # returns at once
            return
    dist_progress(futures, notebook=False)  # text bar on stdout; returns when done


def _client_for(scheduler: Any, stack: contextlib.ExitStack):
    """A distributed Client for ``scheduler``, or None to use a local scheduler."""
    if scheduler in ("synchronous", "sync", "single-threaded", "threads", "processes"):
        return None
    try:
        from distributed import Client, default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    if isinstance(scheduler, Client):
        return scheduler
    if isinstance(scheduler, str):
        # Our own connection to an address, closed when done (not made the default).
        return stack.enter_context(Client(scheduler, set_as_default=False))
    if scheduler is None:
        with contextlib.suppress(ValueError):
            return default_client()
    return None


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"
