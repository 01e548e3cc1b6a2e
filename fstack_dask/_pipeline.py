"""``fuse_zarr``: validate, plan, hand the blocks to the runner, finish.

Data flows one way: plan the fusion from the source's metadata (``_fusion``) and check
``dst`` (``_destination``), both before anything is written -> take ``dst`` and create the
output (``_write``) -> compute and write the blocks (``_run``, ``_blocks``) -> mark the output
complete and tidy up; or, on failure, leave ``dst`` as the table in ``_destination`` says.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any

from ._destination import Destination, Target
from ._device import require_device
from ._errors import DestinationFullError, DestinationLockedError, LeaseLostError, with_outcome
from ._fusion import Fusion, plan_fusion, with_block
from ._locations import Location, remove_tree, resolve
from ._open import open_source
from ._params import DEFAULT_MEMORY_PER_TASK, check_flag
from ._plan import Plan
from ._read import Source
from ._resume import (
    check_resumable,
    check_source_files,
    source_identity,
    stored_folder,
    stored_record,
)
from ._share import Shared, shared_recipe
from ._state import STATE_DIR, OutputState, provenance, recorded_entries, source_files

__all__ = ["DestinationFullError", "DestinationLockedError", "fuse_zarr"]

log = logging.getLogger("fstack_dask")


def fuse_zarr(
    src: Any,
    dst: str | os.PathLike[str],
    *,
    axes: str | None = None,
    level: int = 0,
    channels: str = "auto",
    nhsize: int | str = 9,
    focus: Any = None,
    alpha: float = 0.2,
    sth: float | str = 13,
    depth_map: bool = False,
    selectivity_map: bool = False,
    chunks: int | tuple[int, int] | None = None,
    memory_per_task: int | str = DEFAULT_MEMORY_PER_TASK,
    levels: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    scheduler: Any = None,
    storage_options: dict[str, Any] | None = None,
    dst_storage_options: dict[str, Any] | None = None,
    stall_timeout: float = 600.0,
    device: str = "cpu",
) -> Any:
    """Fuse a focus stack stored as Zarr into an OME-Zarr 0.5 all-in-focus image.

    Out of core: each task reads one y/x block of the stack with its halo straight from
    the source, fuses it (Pertuz et al. 2013, as :func:`focus_stack`) and writes its own
    region of the output, so memory is bounded by ``memory_per_task`` per worker whatever
    the image size, and the output is bit-identical to the in-memory result whatever the
    chunking and the scheduler.

    Parameters
    ----------
    src : str, os.PathLike or zarr.Array
        A Zarr v2/v3 array, or an OME-Zarr image group (NGFF 0.1-0.5; axes from its
        metadata), as a local path or an fsspec URL.
    dst : str or os.PathLike
        Where to write the OME-Zarr 0.5 image group (Zarr v3): a new path (its parent folder
        must exist), an empty folder, or an earlier fstack_dask output (with ``overwrite``
        or ``resume``). Array ``"0"`` is the fused image in the input's dtype with axes
        (batch..., ``c`` if any, ``y``, ``x``) and the input's y/x scale.
    axes : str, optional
        Axes of a plain array without dimension names (e.g. ``"zyx"``, ``"czyx"``,
        ``"tczyx"``, ``"yxz"``); must agree with stored dimension names.
    level : int, optional
        Pyramid level of an OME-Zarr source (0: full resolution).
    channels : {"auto", "rgb", "independent"}, optional
        See :func:`fuse`. Default ``"auto"``: RGB for 3 uint8 channels or a colour format,
        otherwise each channel is fused on its own.
    nhsize, focus, alpha, sth
        As in :func:`focus_stack`; ``"auto"`` for ``nhsize`` and/or ``sth`` chooses them from
        a fixed sample of tiles of the stack (the same whatever the chunking), logs the
        choice and stores it in the output's provenance.
    depth_map, selectivity_map : bool, optional
        Also write ``depth`` (position of the sharpest plane, float32, NaN where no plane
        has contrast: in the source's physical z units when it has a z scale and ``focus``
        is not given, else in ``focus`` units) and ``selectivity`` (S in dB, float32, NaN
        where undefined).
    chunks : int or (int, int), optional
        y/x block (and output chunk) size. Default: the largest whole multiple of the
        source's chunk (or shard) that fits ``memory_per_task``.
    levels : int, optional
        Multiscale levels besides full resolution, each 2 x 2 averaged from the one before
        (the image, and the depth and selectivity maps); default: until the image fits in
        one chunk; 0 for none.
    memory_per_task : int or str, optional
        Bytes one task may hold (default 256 MiB), e.g. ``"1GiB"``; see the README.
    overwrite : bool, optional
        Replace an existing ``dst`` that is an fstack_dask output (the new output is written
        beside it and swapped in only once complete).
    resume : bool, optional
        Continue an interrupted run into ``dst``: only blocks not yet written are computed.
        Parameters must match, and the source must not have changed in the blocks already
        written.
    progress : bool, optional
        Show a progress bar (a line every 30 s when stderr is not a terminal).
    scheduler : optional
        ``"synchronous"``, ``"threads"``, ``"processes"``, a ``distributed.Client`` or a
        scheduler address; default: ``dask.config``'s scheduler, else the active ``Client``,
        else threads.
    storage_options, dst_storage_options : dict, optional
        fsspec options for URL ``src`` and ``dst``.
    stall_timeout : float, optional
        On a cluster, seconds without any finished block before the run fails (workers
        paused for memory, frozen or lost).
    device : {"cpu", "cuda"}, optional
        Where each block is fused: ``"cuda"`` on the CUDA GPU of each worker (``pip install
        "fstack_dask[gpu]"``; without it, or without a GPU where the tasks run, a
        ``ValueError`` naming ``device``, before anything is written). Recorded in the
        output's provenance; a run is resumed only on the same device.

    Returns
    -------
    zarr.Group
        The output group, opened read-only.

    Raises
    ------
    FileNotFoundError, FileExistsError, ValueError, TypeError
        For bad input or a refused destination, before anything is written.
    PermissionError
        If ``dst`` cannot be created.
    DestinationLockedError
        If another live run is writing ``dst``.
    SourceReadError, SourceValueError
        If source chunks cannot be read, or hold NaN or infinity; names the source and the
        chunk. The blocks that do not read them are still written.
    DestinationFullError
        If the device holding ``dst`` fills up.

    References
    ----------
    .. [1] S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of all-in-focus
       images by noise-robust selective fusion of limited depth-of-field images", IEEE
       Trans. Image Process. 22(3):1242-1251, 2013. doi:10.1109/TIP.2012.2231087

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from fstack_dask import fuse_zarr, synthetic_stack, write_stack
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> stack = synthetic_stack((64, 64), 7, seed=0).stack.transpose(2, 0, 1)  # z, y, x
    >>> write_stack(tmp / "in.zarr", stack, axes="zyx")
    >>> out = fuse_zarr(tmp / "in.zarr", tmp / "out.zarr", depth_map=True, progress=False)
    >>> out["0"].shape, out["depth"]["0"].dtype == "float32"
    ((64, 64), True)
    """
    for name, value in (
        ("depth_map", depth_map), ("selectivity_map", selectivity_map),
        ("overwrite", overwrite), ("resume", resume), ("progress", progress),
    ):  # fmt: skip
        check_flag(value, name)
    stall_timeout = _positive(stall_timeout, "stall_timeout")
    fusion = plan_fusion(
        src, axes=axes, level=level, channels=channels, nhsize=nhsize, focus=focus,
        alpha=alpha, sth=sth, depth_map=depth_map, selectivity_map=selectivity_map,
        chunks=chunks, memory_per_task=memory_per_task, levels=levels,
        storage_options=storage_options, device=device,
    )  # fmt: skip
    _warm_up(fusion)
    dst_loc = resolve(dst, name="dst", storage_options=dst_storage_options, writable=True)
    source = fusion.source
    destination = Destination(dst_loc, protect=source.protected(), entries=fusion.spec.entries)
    mode = destination.check(overwrite=overwrite, resume=resume)
    stored = stored_record(destination, mode)
    if stored is not None and stored["params"].get("chunks"):
        old = stored["params"]
        block = tuple(old["chunks"]) if chunks is None else fusion.block
        fusion = with_block(fusion, block, old.get("levels", 0) if levels is None else levels)
        destination.entries = fusion.spec.entries
    identity = source_identity(source)
    files = source_files(source.data_files())
    if stored is not None:
        check_resumable(destination, stored, fusion.params, identity, mode)
        folder = stored_folder(destination, mode)
        if mode != "complete" and provenance(folder) is not None:
            check_source_files(OutputState(folder), f"dst {dst_loc.spec!r}", source,
                               fusion.plan(1)[0], files)  # fmt: skip
    if mode == "complete":
        _tidy_complete(destination)
        log.info("%s is already complete; nothing to resume", dst_loc.spec)
        return _open_result(dst_loc)

    from ._blocks import close_on_workers
    from ._run import execute, resolve_scheduler

    with contextlib.ExitStack() as stack:
        sched = resolve_scheduler(scheduler, stack)  # after every check: it may connect
        require_device(fusion.params["device"], sched)  # where the tasks run; nothing written
        plan, cache_bytes = fusion.plan(sched.workers, sched.processes)
        target = _take(destination, mode)
        try:
            _prepare(target, destination, fusion, identity, files, stored)
            done = target.state.done()
            todo = (b for b in plan.blocks() if plan.name(b) not in done)
            n_todo = plan.n_blocks - target.state.n_done()
            if mode in ("resume", "resume-staged"):
                log.info("resuming %s: %d of %d blocks left", dst_loc.spec, n_todo, plan.n_blocks)
            with shared_recipe(fusion.recipe, sched.kind, sched.client) as (recipe, task_args):
                job = _job(fusion, recipe, plan, target, cache_bytes)
                try:
                    execute(job, todo, n_blocks=n_todo, scheduler=sched, progress=progress,
                            stall_timeout=stall_timeout, task_args=task_args)  # fmt: skip
                except BaseException:
                    close_on_workers(job, sched, wait=False)  # no waiting on a failed cluster
                    raise
                close_on_workers(job, sched)
            _pyramid(fusion, target, done, sched, progress, stall_timeout)
            _finish(target, destination)
        except BaseException as exc:
            _fail(target, destination, exc, plan.n_blocks)
    return _open_result(dst_loc)


def _pyramid(fusion: Fusion, target: Target, done, sched, progress, stall_timeout) -> None:
    """Levels 1..N, each from the one below once that is complete (see ``_pyramid``)."""
    from ._pyramid import PyramidJob, level_plan
    from ._run import execute

    for level in range(1, fusion.spec.levels + 1):
        plan = level_plan(fusion.layout, fusion.block, level)
        job = PyramidJob(target.output, level, ("", *fusion.maps), plan, lease=target.lease)
        todo = [b for b in plan.blocks() if job.marker(b) not in done]
        execute(job, iter(todo), n_blocks=len(todo), scheduler=sched, progress=progress,
                stall_timeout=stall_timeout, label=f"level {level}")  # fmt: skip


def _warm_up(fusion: Fusion) -> None:
    """Load the compiled kernel for this run's types in the background (about 0.5 s from the
    disk cache, or a compilation on first use), while the rest of the run is prepared."""
    if fusion.params.get("device", "cpu") != "cpu":
        return
    import threading

    import numpy as np

    from ._kernel import fuse_block

    lay = fusion.layout
    shape = ((lay.n_channels,) if lay.rgb else ()) + (max(5, lay.n_planes), 8, 8)
    tiny = np.zeros(shape, fusion.source.dtype.newbyteorder("="))
    kernel = {**fusion.kernel, "focus": np.arange(shape[-3], dtype=np.float64)}

    def load() -> None:
        try:
            fuse_block(tiny, **kernel)
        except Exception:  # the run itself will meet (and report) any problem
            pass

    threading.Thread(target=load, name="fstack-dask-warm-up", daemon=True).start()


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _prepare(target: Target, destination, fusion: Fusion, identity, files, stored) -> None:
    """Write the run record (what this run writes: the claim's content), then the output's
    structure; a resume only clears what its killed writes left."""
    from ._write import create_output

    if stored is not None:  # our run, killed: its writes cut short left temporary files
        target.state.remove_partial_files(recorded_entries(target.output) or ())
        if not target.needs_create:
            return
    params = fusion.spec.attributes["fstack_dask"]  # the parameters, with the entries
    record = {"run_id": target.run_id, "params": params, "source": identity,
              "dst": destination.dst.url}  # fmt: skip
    target.state.write_record(record, files)
    create_output(target.output, fusion.spec, extra={"source_identity": identity})


def _take(destination: Destination, mode: str) -> Target:
    """Claim dst (see ``_destination``); a full disk there is told like one while writing."""
    from ._errors import is_no_space

    try:
        return destination.take(mode)
    except OSError as exc:
        if not is_no_space(exc):
            raise
        unchanged = mode not in ("new", "empty")
        left = "dst is unchanged" if unchanged else "nothing was written"
        raise with_outcome(exc, dst=destination.dst.spec, left=left) from exc


def _tidy_complete(destination: Destination) -> None:
    """A resume of a complete output: under its lock, put back what an overwrite killed
    after its swap left, and drop a state folder left by a kill after the output was marked
    complete (its markers vouch for nothing more)."""
    target = destination.take("complete")
    try:
        state = target.state
        for name in ("done", "run.json", "source-files.npz"):
            entry = state.folder.child(name)
            if entry.exists():
                remove_tree(entry, owned=lambda _loc: None, protect=destination.protect)
    finally:
        Destination.release(target)


def _job(fusion: Fusion, recipe: tuple, plan: Plan, target: Target, cache_bytes: int):
    from ._blocks import FuseJob

    return FuseJob(
        token=uuid.uuid4().hex,
        open_source=_Reopen(*recipe),
        plan=plan,
        output=target.output,
        lease=target.lease,
        arrays={"0": "0", **{m: f"{m}/0" for m in fusion.maps}},
        kernel=fusion.kernel,
        dtype=fusion.spec.array("0").dtype,
        cache_bytes=cache_bytes,
        depth_affine=fusion.depth_affine,
        source=fusion.source,
    )


class _Reopen:
    """Opens the source again in a worker process (a picklable recipe)."""

    def __init__(self, src, axes, level, storage_options):
        self.src, self.axes, self.level, self.storage_options = src, axes, level, storage_options

    def __call__(self, data: Any = None) -> Source:
        src = self.src.resolve(data) if isinstance(self.src, Shared) else self.src
        return open_source(
            src, axes=self.axes, level=self.level, storage_options=self.storage_options
        )


def _finish(target: Target, destination: Destination) -> None:
    """Mark the output complete, swap a staged output in, drop the state folder."""
    import zarr

    target.check_lease()  # never mark complete what another run has taken over
    group = zarr.open_group(store=target.output.zarr_store(read_only=False), mode="r+")
    attrs = dict(group.attrs["fstack_dask"])
    attrs["complete"] = True
    group.attrs["fstack_dask"] = attrs
    if target.staged:
        destination.swap_in(target)
    Destination.release(target)
    state = target.output.child(STATE_DIR)
    remove_tree(state, owned=lambda _loc: None, protect=destination.protect)


def _fail(target: Target, destination: Destination, exc: BaseException, n_blocks: int):
    """Release the locks, remove what is worthless, and raise ``exc`` saying what is left.

    Nothing finished: what this run wrote goes (by its record: a staged overwrite's folder,
    a new dst, its entries in an empty folder), so a failure before any output leaves
    nothing behind. Otherwise the finished blocks stay, marked incomplete, for
    ``resume=True``. An interrupted run (Ctrl-C) keeps everything for a resume. A run whose
    lock was taken over touches nothing more: dst is the other run's now.
    """
    for lock in target.locks:
        lock.stop_heartbeat()
    if isinstance(exc, LeaseLostError) or _lost(target):
        Destination.release(target)  # removes no lock that is not ours
        if isinstance(exc, LeaseLostError):
            raise exc
        raise LeaseLostError(
            f"dst {destination.dst.spec!r} was taken over by another run while this one was "
            f"stopped or cut off ({' '.join(str(exc).split())}); this run stopped writing"
        ) from exc
    with contextlib.suppress(Exception):
        target.state.remove_partial_files(target.entries)
    n_done = target.state.n_done() if target.output.exists() else 0
    interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
    worthless = (
        n_done == 0
        and not interrupted
        and (target.staged or target.mode in ("new", "empty", "replace"))
    )
    Destination.release(target)
    if worthless:
        kept: list[str] = []
        with contextlib.suppress(Exception):
            kept = destination.remove_run(target)
        left = "the previous output in dst is unchanged" if target.staged else "nothing was written"
        if kept and target.staged:
            left += f"; {target.output.url!r} is left with {', '.join(kept)}, not written by us"
    elif target.staged:
        left = (
            f"the previous output in dst is unchanged; the new one is kept beside it in "
            f"{target.output.path!r} with {n_done} of {n_blocks} blocks done; rerun with "
            "resume=True to continue it (or overwrite=True to start over)"
        )
    else:
        left = (
            f"dst {destination.dst.spec!r} is kept with {n_done} of {n_blocks} blocks done; "
            "rerun with resume=True to continue"
        )
    if interrupted:
        raise exc
    raise with_outcome(exc, dst=destination.dst.spec, left=left) from exc


def _lost(target: Target) -> bool:
    """Whether the heartbeat found this run's lock taken over (a failure may follow)."""
    return any(lock.lost for lock in target.locks)


def _open_result(location: Location) -> Any:
    import zarr

    return zarr.open_group(store=location.zarr_store(read_only=True), mode="r")


def refuse_live_lock(dst: Any, storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise `DestinationLockedError` if a live run holds the lock of ``dst``."""
    from ._lock import live_lock, locked_message

    loc = resolve(dst, name="dst", storage_options=storage_options)
    info = live_lock(OutputState(loc).lock)
    if info is not None:
        raise DestinationLockedError(locked_message(f"dst {loc.spec!r}", info))
