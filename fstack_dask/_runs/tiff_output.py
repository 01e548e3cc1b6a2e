"""A run into a TIFF dst: fuse into a hidden OME-Zarr working store, convert, move into place.

The working store ``.NAME.fstack-work`` beside ``dst`` is an ordinary fstack_dask output,
written by the same resumable, lease-locked run as any OME-Zarr dst (its messages name
``dst``). Once every block and level is written, and while the run still holds its lock, the
store is converted tile by tile into a temporary TIFF inside it (an entry of its record), made
durable and moved into place (``_outputs.tiff.place_tiff``: never over a file that is not
ours); then the store is marked complete and removed.

=====================  ==================================================================
dst is                 a run
=====================  ==================================================================
absent                 fuses, converts, moves the TIFF into place
a TIFF we wrote        ``overwrite``: as above, the old TIFF replaced only by the finished
                       new one; ``resume``: nothing to do (the same source and parameters),
                       or continues an interrupted overwrite; else refused
anything else          refused, with or without ``overwrite``/``resume``
=====================  ==================================================================

An interrupted run leaves the working store: ``resume`` continues the fusion where it
stopped, or, all blocks done, converts again (a partial TIFF is rewritten from the store). A
working store marked complete had its TIFF moved into place: the next run removes it, and
never converts it again (its removal may have been cut short).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from typing import Any

from .._errors import warn
from .._locations import Location, change_locked, mounts_within, resolve
from .._outputs import leftovers
from .._outputs.destination import Destination
from .._outputs.folders import path_too_long
from .._outputs.lifecycle import remove_finished
from .._outputs.lock import DestinationLock
from .._outputs.ownership import classify, provenance, run_record
from .._outputs.state import OutputState
from .._outputs.tiff import (
    PARTIAL,
    PREVIOUS,
    dropped_sizes,
    is_claim,
    place_tiff,
    previous_left,
    settle_previous,
    tiff_owner,
    write_tiff,
)
from .fusion import plan_fusion, with_block
from .resume import check_resumable
from .run import run_fusion
from .source_changes import source_identity

__all__ = ["WORK", "fuse_to_tiff", "working_store"]

log = logging.getLogger("fstack_dask")

WORK = ".fstack-work"


def working_store(tiff: Location) -> Location:
    """The hidden OME-Zarr store beside a TIFF dst; messages name the TIFF."""
    return dataclasses.replace(tiff.sibling(f".{tiff.name}{WORK}"), spec=tiff.spec)


def fuse_to_tiff(
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
) -> Any:
    """``fuse_zarr`` into a TIFF dst (see the module docstring)."""
    tiff = resolve(dst, name="dst", storage_options=dst_storage_options, writable=True)
    where = f"dst {tiff.spec!r}"
    if not tiff.is_local:
        raise ValueError(
            f"{where}: a TIFF dst must be a local path (tifffile writes local files); write an "
            "OME-Zarr dst (.ome.zarr) to an object store instead"
        )
    # (else refused as a store with our attributes copied in, for good, by every run)
    leftovers.remove_remains(working_store(tiff))
    _settle_previous(tiff, where)

    # refuses bad input, reads metadata; run_fusion tells what "auto" chose. dst is refused
    # before "auto" reads its sample (read first, it took minutes of a remote stack)
    def early(source: Any) -> None:
        check_tiff_destination(tiff, source.protected(), overwrite=overwrite, resume=resume)

    fusion = plan_fusion(src, **plan, output="ome-tiff", quiet_auto=True, before_sample=early)
    dropped = dropped_sizes(fusion.source.scale, fusion.source.units)
    if dropped is not None:
        warn(f"{where}: {dropped}")
    with contextlib.closing(fusion.source):  # its files, not left open by a kept traceback
        work = working_store(tiff)
        owner = check_tiff_destination(
            tiff, fusion.source.protected(), overwrite=overwrite, resume=resume
        )
        _refuse_another_output_at(work, where)
        _refuse_another_filesystem(work, tiff, where)
        if classify(work) == "complete":
            # Its TIFF was moved into place (the conversion comes before the store is marked
            # complete), and its removal cut short: what is left may lack chunks, so it is never
            # converted again (a resume did, over the good TIFF: a fifth adversarial run), only
            # removed.
            remove_finished(Destination(work, protect=fusion.source.protected()))
        if owner is not None and resume and classify(work) == "absent":
            _check_complete(tiff, work, owner, fusion, plan)
            log.info("%s is already complete; nothing to resume", tiff.spec)
            return open_tiff_result(tiff.path)

        def convert(target: Any) -> None:
            partial = os.path.join(target.output.path, PARTIAL)
            log.info("writing %s", tiff.spec)
            try:
                write_tiff(target.output, partial, check=target.check_lease)
            except BaseException as exc:
                # A resume writes it again from the start: kept, it held the space a full disk
                # needed back (an eighth adversarial run).
                with contextlib.suppress(OSError):
                    os.unlink(partial)
                if isinstance(exc, Exception):  # (it said "dst 'out.tif' is kept with 6 of 6
                    # blocks done" of a dst never written: the blocks are in the working store)
                    exc.left_on_disk = _left_unconverted(tiff, target.output, owner)
                raise
            target.check_lease()  # never move into place what another run has taken over
            try:
                place_tiff(partial, tiff.path, where=where)
            except Exception as exc:
                exc.left_on_disk = _left_at_the_move(tiff, target.output, owner)
                raise

        run_fusion(
            src, work, plan=plan, overwrite=overwrite, resume=resume, progress=progress,
            scheduler=scheduler, dst_storage_options=None, stall_timeout=stall_timeout,
            output="ome-tiff", finishing=convert,
            looks_like=tiff.path if owner is not None else None,  # a private TIFF's too
        )  # fmt: skip
        try:
            remove_finished(Destination(work, protect=fusion.source.protected()))
        except Exception as exc:  # the TIFF is in place: the run succeeded
            log.warning(
                "%s is written, but its working store %s could not be removed (%s): remove it "
                "with: rm -r %r", tiff.spec, work.path, " ".join(str(exc).split()), work.path,
            )  # fmt: skip
        return open_tiff_result(tiff.path)


def _left_unconverted(tiff: Location, work: Location, owner: Any) -> str:
    """What a conversion that failed leaves: dst as it was, the fused image in full in the
    working store, from which a resume writes only the TIFF."""
    return (
        f"{_dst_now(tiff, work, owner)}; the fused image is kept whole in its working folder "
        f"{work.path!r}, and the TIFF, which needs up to about {_tiff_room(work)} there, was "
        "removed: rerun the same command with resume=True, which writes only the TIFF"
    )


def _left_at_the_move(tiff: Location, work: Location, owner: Any) -> str:
    """What a failure as the finished TIFF was moved into place leaves: dst holds the new
    TIFF, complete, where it was moved before the error (a sync of its folder failed); else
    dst as it was, the fused image in the working store."""
    new_id = (provenance(work) or {}).get("output_id")
    placed = os.path.isfile(tiff.path) and not os.path.islink(tiff.path)
    found = tiff_owner(tiff.path) if placed else None
    if new_id and found is not None and found.get("output_id") == new_id:
        return (
            f"dst {tiff.spec!r} holds the new TIFF, complete (moved into place before the "
            f"error), its working folder {work.path!r} is kept: rerun the same command with "
            "resume=True, which writes the TIFF again from it, puts it in place and removes it"
        )
    return (
        f"{_dst_now(tiff, work, owner)}; the fused image is kept whole in its working folder "
        f"{work.path!r}: rerun the same command with resume=True, which writes the TIFF from "
        "it and puts it in place"
    )


def _dst_now(tiff: Location, work: Location, owner: Any) -> str:
    """What dst is after a failed conversion or move: unchanged, or missing with the previous
    TIFF moved aside into the working store (an overwrite without an exchange)."""
    if owner is None:
        return f"dst {tiff.spec!r} was not written"
    if not os.path.lexists(tiff.path) and previous_left(work.path) is not None:
        return (
            f"dst {tiff.spec!r} is missing: the previous TIFF is in "
            f"{os.path.join(work.path, PREVIOUS)!r}, which the next run into dst puts back"
        )
    return f"dst {tiff.spec!r} is unchanged (the previous TIFF)"


def _tiff_room(work: Location) -> str:
    """The most a TIFF of ``work``'s levels takes: their pixels uncompressed (zlib shrinks
    them, by how much the image decides)."""
    import zarr
    from dask.utils import format_bytes

    try:
        with warnings.catch_warnings():  # (its state folder is no zarr node: zarr says so)
            warnings.simplefilter("ignore")
            group = zarr.open_group(work.path, mode="r")
            total = sum(array.nbytes for _, array in group.arrays())
    except Exception:  # (the message is what matters; the size only helps)
        return "as much as the fused image takes uncompressed"
    return format_bytes(total)


def _settle_previous(tiff: Location, where: str) -> None:
    """Before anything else, under the working store's lock (a live run's refuses this one):
    the previous TIFF an overwrite without an exchange (exFAT, NFS) left in the working store,
    killed between its two moves, goes back to the missing dst; killed once the new TIFF was
    in place, it is removed. (dst was left missing, ``info`` said nothing of it, a resume
    kept it as a file fstack_dask did not write, and every later overwrite was refused.)"""
    work = working_store(tiff)
    if previous_left(work.path) is None:
        return
    lock = DestinationLock(OutputState(work).lock, f"{where} (its working folder {work.path!r})")
    lock.acquire()
    try:
        new_id = (provenance(work) or {}).get("output_id")  # the new TIFF's
        done = settle_previous(work.path, tiff.path, new_id)
    finally:
        lock.release()
    if done == "restore":
        log.warning("put back %s, the previous TIFF, from %s, where an overwrite cut short "
                    "between its two moves had left it; the same fuse command with --resume "
                    "(resume=True) finishes the overwrite", tiff.spec, work.path)  # fmt: skip
    elif done == "remove":
        log.info("removed the previous TIFF an overwrite of %s cut short left in %s (dst holds "
                 "the new one)", tiff.spec, work.path)  # fmt: skip


def _refuse_another_output_at(work: Location, where: str) -> None:
    """An fstack_dask output at the working store's name that no TIFF run wrote (their
    provenance says ``output: ome-tiff``) is a user's result: a plain run into the TIFF
    removed it as a finished working store (an eighth adversarial run)."""
    attrs = provenance(work)
    if attrs is not None and attrs.get("output") != "ome-tiff":
        raise FileExistsError(
            f"{where}: its working folder {work.path!r} holds an OME-Zarr output of "
            "fstack_dask's that is not a TIFF's working store; move it away, or fuse into "
            "another dst (nothing was written)"
        )


def _refuse_another_filesystem(work: Location, tiff: Location, where: str) -> None:
    """The finished TIFF is renamed from the working store into place, which cannot cross
    filesystems: a working store that leads elsewhere (a symlink to scratch) failed only once
    everything was fused, and again on every resume (an eighth adversarial run)."""
    real = os.path.realpath(work.path)
    try:
        here = os.stat(os.path.dirname(tiff.path)).st_dev
        there = os.stat(real if os.path.exists(real) else os.path.dirname(real)).st_dev
    except OSError:
        return  # the checks of dst say what is wrong
    if there != here:
        raise ValueError(
            f"{where}: its working folder {work.path!r} leads to another filesystem "
            f"({real!r}), from which the finished TIFF cannot be moved into place; remove that "
            "link, or write the TIFF on that filesystem (nothing was written)"
        )


def check_tiff_destination(
    tiff: Location, protect: list[Location], *, overwrite: bool, resume: bool
) -> dict[str, Any] | None:
    """What a run may do with a TIFF dst (reads only): its provenance if it is a TIFF we
    wrote, None if it is absent; anything else is refused.

    Raises
    ------
    ValueError
        If dst is the source or lies inside it.
    FileExistsError
        If dst exists and is not a TIFF fstack_dask wrote (with or without ``overwrite``),
        or is ours and neither ``overwrite`` nor ``resume`` lets the run replace it.
    FileNotFoundError
        If its parent folder does not exist.
    """
    where = f"dst {tiff.spec!r}"
    for place in protect:
        if tiff.overlaps(place):
            raise ValueError(
                f"{where} is the source or lies inside it ({place.spec!r}); expected an output "
                "location outside the input"
            )
    parent = tiff.parent_path()
    if not os.path.isdir(parent):
        raise FileNotFoundError(
            f"{where} cannot be created: its parent folder {parent!r} does not exist; create "
            "it first (a typo in the path?)"
        )
    for place, whose in ((tiff, ""), (working_store(tiff), "its working folder beside it ")):
        too_long = path_too_long(place)
        if too_long is not None:
            raise ValueError(f"{where}: {whose}{too_long}; choose a shorter name or path")
    if not os.path.lexists(tiff.path) or is_claim(tiff.path, working_store(tiff).path):
        return None  # (a run stopped at the move left its claim: refused as not ours)
    owner = tiff_owner(tiff.path) if os.path.isfile(tiff.path) else None
    if owner is None:
        _refuse_empty_claim(tiff, where)
        _refuse_our_zarr(tiff, where)
        kind = "a folder" if os.path.isdir(tiff.path) else "a file"
        raise FileExistsError(
            f"{where} exists and is {kind} fstack_dask did not write; refusing to replace it "
            "(only fstack_dask outputs are ever replaced): choose another dst"
        )
    if not overwrite and not resume:
        work = working_store(tiff)
        if classify(work) == "unfinished":  # (it said "pass overwrite=True", which fuses it
            # all again, of an overwrite a resume finishes)
            raise FileExistsError(
                f"{where} already exists, and an overwrite of it was cut short: its new TIFF "
                f"is unfinished in its working folder {work.path!r}; rerun the same command "
                "with resume=True to finish it, or with overwrite=True to start it again"
            )
        raise FileExistsError(f"{where} already exists; choose another path or pass overwrite=True")
    if overwrite and _mount_point(tiff, where):  # (a file bound there: the run computed it
        # all, then failed "Device or resource busy", "rerun with --resume")
        raise ValueError(
            f"{where} is a mount point, which cannot be replaced by another file; an overwrite "
            "writes the new TIFF beside dst and swaps the two: remove the old TIFF yourself, or "
            "choose another dst"
        )
    for place in (tiff.path, parent) if overwrite else ():  # (the run computed it all, then
        # failed "Operation not permitted" at the swap and said to rerun with --resume, which
        # failed so again, its working folder left beside dst, after b240eb3's Zarr fix)
        locked = change_locked(place)
        if locked is not None:
            raise ValueError(
                f"{where} cannot be replaced: {locked}; an overwrite writes the new TIFF beside "
                "dst and swaps the two: clear it, or choose another dst"
            )
    return owner


def _refuse_our_zarr(tiff: Location, where: str) -> None:
    """An OME-Zarr output of ours named like a TIFF (``fuse src out.tif/.`` wrote one
    before) was refused as "a folder fstack_dask did not write": it is ours, and no TIFF
    replaces it (a folder for a file)."""
    if os.path.isdir(tiff.path) and (provenance(tiff) or run_record(tiff)) is not None:
        raise FileExistsError(
            f"{where} exists and is an fstack_dask OME-Zarr output (a folder named like a "
            "TIFF), which a TIFF does not replace, also with overwrite=True: "
            f"remove it (rm -r {tiff.path!r}) or choose another dst"
        )


def _refuse_empty_claim(tiff: Location, where: str) -> None:
    """Refuse an empty file at dst beside a working store of ours, saying what it may be: the
    claim of that run's TIFF on FAT/exFAT (no hard links, no rename without replacing),
    created, then cut short before its text was written or synced (kill -9, power lost). It
    is not taken for ours: an empty file a user made there looks the same. It said
    "a file fstack_dask did not write ... choose another dst", of the run's own claim."""
    work = working_store(tiff)
    path = tiff.path
    if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) != 0:
        return
    if classify(work) not in ("complete", "unfinished"):
        return
    raise FileExistsError(
        f"{where} exists and is an empty file, which fstack_dask cannot tell for its own: the "
        f"claim of the TIFF of the run in {work.path!r}, cut short before it was written (a "
        "kill or power loss on FAT/exFAT), looks so; if it is, remove it and rerun with "
        "resume=True, else choose another dst"
    )


def _mount_point(tiff: Location, where: str) -> bool:
    """Whether the TIFF at ``tiff`` is a mount point (a file bound there); refused where that
    cannot be told (the mount table masked, statx refused: a hardened container), as for a
    Zarr dst (it said "cannot read the mount table ...", naming no parameter, exit 1)."""
    try:
        return tiff.path in mounts_within(tiff.path, itself=True)
    except PermissionError as exc:
        raise ValueError(
            f"{where} cannot be checked for being a mount point: {exc}; an overwrite writes the "
            "new TIFF beside dst and swaps the two: remove the old TIFF yourself, or choose "
            "another dst"
        ) from None


def _check_complete(tiff, work, owner, fusion, plan) -> None:
    """A resume of a finished TIFF: refused unless it was made from this source with these
    parameters."""
    if plan["chunks"] is None and owner.get("chunks"):
        levels = owner.get("levels", 0) if plan["levels"] is None else plan["levels"]
        fusion = with_block(fusion, tuple(owner["chunks"]), levels)
    stored = {"params": owner, "source": owner.get("source_identity")}
    destination = Destination(work, protect=fusion.source.protected())
    check_resumable(destination, stored, fusion.params, source_identity(fusion.source),
                    "complete")  # fmt: skip


def open_tiff_result(path: str) -> Any:
    """The TIFF's first image as a read-only zarr group (tifffile's Zarr store)."""
    import tifffile
    import zarr

    return zarr.open_group(tifffile.imread(path, aszarr=True, multiscales=True), mode="r")
