"""Zarr to OME-Zarr fusion: validation, planning, chunk-aligned writes, resume and locking.

Every task computes one y/x block and writes that block's region of the
output arrays itself, then drops a per-block "done" marker. Block regions are
unions of whole Zarr chunks, so no two tasks ever write into the same chunk. A
run that dies leaves the markers of finished blocks; ``resume=True`` computes
only the blocks without one. A block that was being written when the run died
has no marker, so it is recomputed and rewritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import dask
import dask.array as da
import fsspec
import numpy as np
import zarr
from dask.delayed import delayed

from ._batches import batch_of, plan_batches
from ._dask import (
    DEFAULT_MEMORY_PER_TASK,
    Channels,
    Layers,
    fused_layers,
    plan_chunks,
    resolve_channels,
)
from ._io import Source, check_destination, create_output, open_source
from ._utils import check_dtype, check_focus, check_nhsize
from ._version import __version__

__all__ = ["fuse_zarr"]

STATE_DIR = ".fstack_dask"  # inside dst: progress markers and the lock, removed on success
LOCK_STALE_AFTER = 60.0  # seconds without a heartbeat before another host's lock is stale
HEARTBEAT_EVERY = 10.0
BATCH_BUDGET_PER_TASK = 1.75  # a batch's source chunks may take this many times memory_per_task
PROGRESS_MINIMUM = 1.0  # seconds before the local progress bar shows (dask's ``minimum``)


class DestinationLockedError(RuntimeError):
    """Another live run is writing the same destination."""


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
    DestinationLockedError
        If another live run is writing ``dst``.

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
    array = da.from_zarr(source.array)
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
    fs, state_path = fsspec.core.url_to_fs(dst_str + "/" + STATE_DIR, **(dst_storage_options or {}))

    existing = fs.exists(state_path.rsplit("/", 1)[0] + "/zarr.json")
    lock = _DestinationLock(fs, state_path, dst_str)
    src_ref = _source_ref(src, source)
    if resume and existing:
        # Refuse (dst is or holds the source, other parameters) before the lock writes anything.
        check_destination(
            dst_str, src_root=src_ref, overwrite=True, storage_options=dst_storage_options
        )
        _check_resumable(dst_str, params, dst_storage_options, mode="r")
        with lock:
            group = _check_resumable(dst_str, params, dst_storage_options, mode="r+")
            if group is not None:
                _fuse_into(group, layers, fs, state_path, progress, scheduler, memory_per_task)
    else:
        check_destination(
            dst_str, src_root=src_ref, overwrite=overwrite, storage_options=dst_storage_options
        )
        if overwrite and existing:
            _refuse_live_lock(fs, state_path, dst_str)
        # Exclusive create: of two runs starting together, one fails here.
        group = _create(dst_str, source, src_ref, layers, params, overwrite, dst_storage_options)
        with lock:
            _fuse_into(group, layers, fs, state_path, progress, scheduler, memory_per_task)
    if fs.exists(state_path):
        fs.rm(state_path, recursive=True)  # markers and the lock: nothing is left behind
    return zarr.open_group(dst_str, mode="r", storage_options=dst_storage_options)


def _fuse_into(group, layers: Layers, fs, state_path: str, progress, scheduler, memory_per_task):
    fs.makedirs(state_path + "/done", exist_ok=True)
    done = {p.rsplit("/", 1)[-1] for p in fs.ls(state_path + "/done", detail=False)}
    tasks = _write_tasks(layers, group, fs, state_path + "/done", done)
    src_shape = group.attrs["fstack_dask"]["src_shape"]
    n_planes = src_shape[group.attrs["fstack_dask"]["src_axes"].index("z")]
    by, bx = (c[0] for c in layers.array.chunks[-2:])
    block_bytes = n_planes * by * bx * layers.dtype.itemsize * (3 if layers.plan.rgb else 1)
    budget = int(BATCH_BUDGET_PER_TASK * memory_per_task)
    _run(tasks, progress, scheduler, block_bytes, budget, layers.array.numblocks)
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


def _create(dst, source: Source, src_ref, layers: Layers, params, overwrite, storage_options):
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
        overwrite=overwrite,
        storage_options=storage_options,
        attributes=params,
        src_root=src_ref,
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


# ---------------------------------------------------------------- the lock


def _read_lock(fs, lock_path: str) -> dict[str, Any] | None:
    try:
        info = json.loads(fs.cat_file(lock_path))
        info["mtime"] = fs.modified(lock_path).timestamp()
        return info
    except FileNotFoundError:
        return None
    except Exception:  # half-written by a killed run: treat as stale
        return {"host": "?", "pid": -1, "mtime": 0.0}


def _lock_is_live(info: Mapping[str, Any]) -> bool:
    """Same host: the owning process exists. Other host: a heartbeat within the window."""
    if info.get("host") == socket.gethostname():
        pid = int(info.get("pid", -1))
        if pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return _pid_start_matches(pid, info.get("pid_start"))
    return time.time() - float(info.get("mtime", 0.0)) < LOCK_STALE_AFTER


def _pid_start(pid: int) -> str | None:
    # The start time tells a recycled pid apart from the lock's owner (Linux).
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def _pid_start_matches(pid: int, recorded: str | None) -> bool:
    current = _pid_start(pid)
    return recorded is None or current is None or current == recorded


def _refuse_live_lock(fs, state_path: str, dst: str) -> None:
    info = _read_lock(fs, state_path + "/lock")
    if info is not None and _lock_is_live(info):
        raise DestinationLockedError(
            f"dst {dst!r} is being written by pid {info.get('pid')} on {info.get('host')} "
            f"(lock {state_path}/lock); wait for it to finish"
        )


class _DestinationLock:
    """A lock file in dst's state folder, refreshed by a heartbeat thread.

    Created with exclusive-create so two runs cannot both take it. A lock whose
    owner is gone (same host: no such pid; other host: no heartbeat for
    ``LOCK_STALE_AFTER`` seconds) is stale and is taken over.
    """

    def __init__(self, fs, state_path: str, dst: str):
        self.fs, self.path, self.dst = fs, state_path + "/lock", dst
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _DestinationLock:
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        body = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "pid_start": _pid_start(os.getpid()),
                "started": time.time(),
            }
        ).encode()
        for _ in range(2):
            try:
                with self.fs.open(self.path, "xb") as fh:
                    fh.write(body)
                break
            except FileExistsError:
                info = _read_lock(self.fs, self.path)
                if info is not None and _lock_is_live(info):
                    raise DestinationLockedError(
                        f"dst {self.dst!r} is being written by pid {info.get('pid')} on "
                        f"{info.get('host')}; a second run into the same dst is refused"
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(self.path)  # stale: its owner is gone
        else:
            raise DestinationLockedError(f"could not take the lock on dst {self.dst!r}")
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY):
            with contextlib.suppress(Exception):
                self.fs.touch(self.path, truncate=False)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path)


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
        key = "_".join(map(str, index))
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


def _batched(tasks: list, numblocks: tuple[int, ...], block_bytes: int, budget: int) -> list:
    """Group the write tasks into spatial batches (see ``_batches``), per batch/channel index."""
    batches = plan_batches(tuple(numblocks[-2:]), block_bytes, budget)
    groups: dict[tuple, list] = {}
    for index, task in tasks:
        key = (*index[:-3], batch_of(index[-2:], batches))
        groups.setdefault(key, []).append(task)
    return [groups[k] for k in sorted(groups)]


def _run(tasks: list, progress: bool, scheduler: Any, block_bytes, budget, numblocks) -> None:
    """Compute the writes batch after batch, so held source chunks stay within ``budget``."""
    if not tasks:
        return
    with contextlib.ExitStack() as stack:
        client = _client_for(scheduler, stack)
        if client is not None:  # each worker process holds its share of a batch
            budget *= max(1, len(client.scheduler_info().get("workers", {})))
        groups = _batched(tasks, numblocks, block_bytes, budget)
        bar = _BatchProgress(len(tasks)) if progress and len(groups) > 1 else None
        for group in groups:
            if client is not None:
                futures = client.compute(group)
                if progress and bar is None:
                    _distributed_progress(futures)
                client.gather(futures)
            elif progress and bar is None:
                from dask.diagnostics import ProgressBar

                with ProgressBar(out=sys.stderr, minimum=PROGRESS_MINIMUM):
                    dask.compute(*group, scheduler=scheduler)
            else:
                dask.compute(*group, scheduler=scheduler)
            if bar is not None:
                bar.advance(len(group))
        if bar is not None:
            bar.close()


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
