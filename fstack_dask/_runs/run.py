"""One run into an OME-Zarr destination, as its story, each step a function of its part.

open and plan (``fusion``: sources, algorithm) -> examine ``dst`` (``resume``: reads only)
-> connect to the scheduler and check the device where the tasks run -> claim and prepare
``dst`` (``_outputs.lifecycle``) -> fuse the blocks, then the pyramid (``passes``) -> finish;
or, on any failure, leave ``dst`` as the table in ``_outputs.destination`` says.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from .._algorithm.block import require_engine, warm_up
from .._errors import interruptions_of_this_call
from .._outputs import lifecycle
from .._outputs.display import fit_display_windows
from .._params import is_synchronous, local_workers
from . import scheduler_choice
from .device import require_device, require_engine_on_workers
from .fusion import plan_fusion
from .passes import fuse_blocks, image_minimums, pyramid_levels
from .reading import read_by
from .resume import check_early, examine
from .source_changes import check_source_after_run

__all__ = ["run_fusion"]

log = logging.getLogger("fstack_dask")


@interruptions_of_this_call
def run_fusion(
    src: Any,
    dst: Any,
    *,
    plan: dict[str, Any],
    overwrite: bool,
    resume: bool,
    progress: bool,
    scheduler: Any,
    dst_storage_options: dict[str, Any] | None,
    stall_timeout: float,
    output: str = "ome-zarr",
    finishing: Any = None,
    looks_like: str | None = None,
) -> Any:
    """The run into an OME-Zarr ``dst`` (a path, or a ``Location``): plan, examine, claim,
    fuse, the pyramid, finish. ``finishing(target)``, if given, runs once every block is
    written, under the run's lock, before the output is marked complete (the TIFF
    conversion); never on a resume of a complete output. A new ``dst`` takes the owner,
    group, mode and ACLs of ``looks_like`` (the TIFF a working store will replace)."""

    def early(source: Any) -> None:  # dst refused before "auto" reads its sample
        check_early(source, dst, dst_storage_options=dst_storage_options, overwrite=overwrite,
                    resume=resume)  # fmt: skip

    fusion = plan_fusion(src, **plan, output=output, quiet_auto=True, before_sample=early)
    with contextlib.closing(fusion.source):  # its files, not left open by a kept traceback
        lay = fusion.layout

        def checked() -> None:  # dst accepted: the kernel loads (numba: 1-2 s) meanwhile
            if not _fused_elsewhere(scheduler):
                require_engine(fusion.kernel["engine"])  # a numba that fails to import
                warm_up(fusion.source.dtype, n_planes=lay.n_planes, n_channels=lay.n_channels,
                        kernel=fusion.kernel)  # fmt: skip

        prior = examine(fusion, dst, dst_storage_options=dst_storage_options, overwrite=overwrite,
                        resume=resume, chunks=plan["chunks"], levels=plan["levels"],
                        threads=_reading_threads(scheduler), checked=checked)  # fmt: skip
        if fusion.auto_note is not None:  # told once dst is accepted, not before its refusal
            log.info("auto parameters: %s", fusion.auto_note)
        fusion, destination = prior.fusion, prior.destination
        destination.looks_like = looks_like
        if prior.mode == "complete":
            lifecycle.tidy_complete(destination)
            log.info("%s is already complete; nothing to resume", destination.dst.spec)
            return lifecycle.open_result(destination.dst)
        with contextlib.ExitStack() as stack:
            # after every check: it may connect
            sched = scheduler_choice.resolve_scheduler(scheduler, stack)
            require_device(fusion.params["device"], sched)  # where the tasks run; nothing written
            scheduler_choice.warm_workers(sched, fusion.source.dtype, n_planes=lay.n_planes,
                                          n_channels=lay.n_channels,
                                          kernel=fusion.kernel)  # fmt: skip
            require_engine_on_workers(fusion.kernel["engine"], sched)  # (their numba loads)
            fusion = read_by(fusion, sched.workers, sched.processes)  # shards, or their chunks
            blocks, cache_bytes = fusion.plan(sched.workers, sched.processes)
            target = lifecycle.claim(destination, prior.mode)
            try:
                lifecycle.prepare(target, fusion.spec, identity=prior.identity, files=prior.files,
                                  resuming=prior.resuming)  # fmt: skip
                done = fill_undefined(fusion, blocks, target, sched, cache_bytes=cache_bytes,
                                      progress=progress, stall_timeout=stall_timeout,
                                      resuming=prior.resuming)  # fmt: skip
                # another program may have written the source meanwhile (still acquired)
                threads = sched.workers * sched.processes  # reads the source again with
                if sched.kind == "distributed":  # this process reads: as the check before
                    threads = _reading_threads(scheduler)
                identity = check_source_after_run(src, fusion, target.state, blocks, prior.identity,
                                                  prior.files, threads=threads)  # fmt: skip
                pyramid_levels(fusion, target, sched, done=done, progress=progress,
                               stall_timeout=stall_timeout)  # fmt: skip
                given = [k for k, ch in enumerate(fusion.source.channels or ()) if "window" in ch]
                fit_display_windows(target.output, given=given)
                for name in fusion.spec.groups:  # the maps' (their windows: their values)
                    if name:
                        fit_display_windows(target.output.child(name))
                lifecycle.record_source(target, identity)
                if finishing is not None:
                    finishing(target)
                lifecycle.finish(target, destination)
            except BaseException as exc:
                lifecycle.fail(target, destination, exc, blocks.n_blocks)
        return lifecycle.open_result(destination.dst)


def _reading_threads(scheduler: Any) -> int:
    """The threads a resume reads the source again on, before the scheduler is resolved
    (which may connect): the run's own, one for the synchronous scheduler (it read on
    every core, whatever the run was told: a review, 2026-12-06). With a cluster too: the
    reads are this process's, not its workers' (a cluster's threads, and a cache of
    ``memory_per_task`` each, would be asked of the machine the client runs on), so dask's
    ``num_workers`` here, or this machine's cores."""
    import dask

    if scheduler is None:
        scheduler = dask.config.get("scheduler", None) or dask.config.get("get", None)
    if is_synchronous(scheduler):
        return 1
    return local_workers(dask.config.get("num_workers", None))


def _fused_elsewhere(scheduler: Any) -> bool:
    """Whether only our worker processes fuse (``scheduler="processes"``, given or in dask's
    config): the kernel loaded here as well was never run (0.3 s of CPU a run: numba's cache,
    and the SciPy its registries import; 2026-12-06). The workers load it (``warm_workers``)."""
    import dask

    if scheduler is None:
        scheduler = dask.config.get("scheduler", None) or dask.config.get("get", None)
    return isinstance(scheduler, str) and scheduler.lower() == "processes"


def fill_undefined(fusion, blocks, target, sched, *, cache_bytes, progress, stall_timeout,
                   resuming) -> set[str]:  # fmt: skip
    """Level 0's blocks, then those whose pixels need their image's smallest selectivity.

    The reference fills an undefined ``S`` (where the Gaussian fit fails: a plane without
    contrast in the fit's three, a flat region's neighbours) with the smallest ``S`` of the
    whole image, known only once every block is fused. A block that needs it is not written
    in the first pass; its image's smallest ``S`` (exact: a minimum) then fuses it in a
    second. Returns the markers found before the run (``fuse_blocks``)."""
    done, report = fuse_blocks(fusion, blocks, target, sched, cache_bytes=cache_bytes,
                               progress=progress, stall_timeout=stall_timeout,
                               resuming=resuming, fills=fusion.fills)  # fmt: skip
    if report.deferred:
        fills = image_minimums(blocks, target, done, report)
        log.info("%d block(s) hold pixels whose selectivity is undefined: fused again with "
                 "their image's smallest selectivity, as the reference fills it",
                 report.deferred)  # fmt: skip
        fuse_blocks(fusion, blocks, target, sched, cache_bytes=cache_bytes, progress=progress,
                    stall_timeout=stall_timeout, resuming=True, fills=fills,
                    label="undefined S")  # fmt: skip
    return done
