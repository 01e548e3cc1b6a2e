"""A destination's life through one run: claimed, prepared, then finished or failed.

:func:`claim` takes ``dst`` as :class:`~.destination.Destination` decides, :func:`prepare`
writes the run record and the output's empty structure, :func:`finish` marks the output
complete (swapping a staged overwrite into place) and :func:`fail` leaves ``dst`` as the
table in :mod:`.destination_checks` says, raising one message that tells what is left on disk.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Mapping
from typing import Any

from .._errors import (
    LeaseLostError,
    as_interrupt,
    interrupted_leaving,
    interruption_behind,
    is_no_space,
    with_outcome,
)
from .._locations import Location
from . import inplace, leftovers, staleness
from .destination import Destination, Target
from .ownership import STATE_DIR, provenance, recorded_entries, run_record
from .removal import ours_within, remove_state
from .state import OutputState, new_output_id, write_output_id
from .write import OutputSpec, create_output, make_durable, publish

log = logging.getLogger(__name__)

__all__ = [
    "claim",
    "fail",
    "finish",
    "open_result",
    "prepare",
    "record_source",
    "remove_finished",
    "tidy_complete",
]


def claim(destination: Destination, mode: str) -> Target:
    """Claim dst (see :meth:`.Destination.take`); a full disk there is told like one while
    writing, with what is left."""
    try:
        return destination.take(mode)
    except OSError as exc:
        if not is_no_space(exc):
            raise
        left = "nothing was written" if mode in ("new", "empty", "claimed") else "dst is unchanged"
        raise with_outcome(exc, dst=destination.dst.spec, left=left) from exc


def prepare(
    target: Target,
    spec: OutputSpec,
    *,
    identity: Mapping[str, Any],
    files: Mapping[str, Any],
    resuming: bool,
) -> None:
    """Write the run record (what this run writes: its claim's content), then the output's
    structure; a resume only clears what its killed writes left."""
    if resuming:  # our run, killed: its writes cut short left temporary files
        target.state.remove_partial_files(
            recorded_entries(target.output) or (), ours_within(target.output)
        )
        torn: list[str] = []
        lost = target.state.drop_markers_without_data(torn)
        if torn:
            log.warning("%d done-markers of %s were cut short by a crash (%s); their blocks are "
                        "fused again", len(torn), target.dst.spec,
                        ", ".join(torn[:3]) + (" ..." if len(torn) > 3 else ""))  # fmt: skip
        if lost:
            log.warning("%d finished blocks of %s lost chunk files since they were written "
                        "(%s); they are fused again", len(lost), target.dst.spec,
                        ", ".join(lost[:3]) + (" ..." if len(lost) > 3 else ""))  # fmt: skip
        _drop_older_levels(target.state)
        if not target.needs_create:
            return
    record = {
        "run_id": target.run_id,
        "params": spec.attributes["fstack_dask"],  # the parameters, with the entries
        "source": dict(identity),
        "dst": target.dst.url,
    }
    target.state.write_record(record, files)
    oid = new_output_id(record["params"])
    write_output_id(target.output, oid)  # before the provenance that names it
    extra = {"source_identity": dict(identity), "output_id": oid}
    create_output(target.output, spec, extra=extra)
    # on disk before any block's marker: a crash (a power cut, a disk error aborting ext4's
    # journal) left the arrays' zarr.json empty beside durable chunks and markers, and every
    # --resume failed "Expecting value: line 1 column 1 (char 0)"
    make_durable(target.output, [f"{path}/zarr.json".lstrip("/") for path in spec.groups]
                 + [f"{array.path}/zarr.json" for array in spec.arrays])  # fmt: skip


def record_source(target: Target, identity: Mapping[str, Any]) -> None:
    """Keep with the output the identity of the source as this run found it (a resume's: its
    files may differ from the first run's, in what no finished block read), for a later
    resume of the complete output to compare."""
    import zarr

    group = zarr.open_group(store=target.output.zarr_store(read_only=False), mode="r+")
    attrs = dict(group.attrs["fstack_dask"])
    if attrs.get("source_identity") != dict(identity):
        attrs["source_identity"] = dict(identity)
        group.attrs["fstack_dask"] = attrs


def _drop_older_levels(state: OutputState) -> None:
    """A run begun before records named their numbers' generation (``numerics``) computes its
    pyramid levels again: the rules for them changed since (the maps' +inf, 64-bit integers
    clipped), and a level half by each version was two versions' numbers in one image."""
    record = state.record()
    if record is None or "numerics" in (record.get("params") or {}):
        return
    older = sorted(n for n in state.done() if n.startswith("L"))
    for name in older:
        state.done_folder.child(name).fs.rm_file(state.done_folder.child(name).path)
    if older:
        log.info("%d block(s) of the pyramid were computed by an earlier version of fstack_dask: "
                 "computed again by this one", len(older))  # fmt: skip


def finish(target: Target, destination: Destination) -> None:
    """Publish the output's NGFF metadata and mark it complete (:func:`.write.publish`),
    swap a staged output in, drop the state folder."""
    target.check_lease()  # never mark complete what another run has taken over
    publish(target.output)
    if target.staged:
        destination.swap_in(target)
    # Complete and in place: a failure to tidy up (EIO removing a done-marker) no longer
    # fails the run, whose failure path said "nothing was written" or "0 of 9 blocks done"
    # of a complete output; a later run drops what is left (tidy_complete).
    state = target.state.folder
    try:
        try:  # under the lock, then the lock: released first, the lock a second run took
            # meanwhile went with the rest (a done-marker a block: minutes on S3), and that
            # run failed "this run's lock was taken over and is gone"
            names = [n for n in state.listdir() if n != "lock"] if state.exists() else []
            remove_state(state, names, protect=destination.protect)
        finally:
            Destination.release(target)  # (and the state folder, left empty)
    except BaseException as exc:
        stop = interruption_behind(exc)
        if stop is not None:  # never lost (a script's Ctrl-C: it went on as if unpressed,
            # exit 0), nor said of a complete output as "rerun with --resume to continue"
            left = (f"dst {destination.dst.spec!r} is complete; what is left of its state "
                    f"folder {state.url!r} goes with the next run into it")  # fmt: skip
            raise interrupted_leaving(stop, left) from None
        if not isinstance(exc, Exception):
            raise
        log.warning(
            "%s is complete, but its state folder %s could not be removed (%s): the next run "
            "into it removes it, or remove it with: rm -r %r", destination.dst.spec,
            target.state.folder.url, " ".join(str(exc).split()), target.state.folder.url,
        )  # fmt: skip


def fail(target: Target, destination: Destination, exc: BaseException, n_blocks: int):
    """Release the locks, remove what is worthless, and raise ``exc`` saying what is left.

    Nothing finished: what this run wrote goes (by its record: a staged overwrite's folder,
    a new dst, its entries in an empty folder), so a failure before any output leaves
    nothing behind. Otherwise the finished blocks stay, marked incomplete, for
    ``resume=True``. An interrupted run (Ctrl-C) keeps everything for a resume. A run whose
    lock was taken over touches nothing more: dst is the other run's now.
    """
    for lock in target.locks:
        lock.stop_heartbeat()
    if isinstance(exc, LeaseLostError) or any(lock.lost for lock in target.locks):
        Destination.release(target)  # removes no lock that is not ours
        if isinstance(exc, LeaseLostError):
            raise exc
        raise LeaseLostError(
            f"dst {destination.dst.spec!r} was taken over by another run while this one was "
            f"stopped or cut off ({' '.join(str(exc).split())}); this run stopped writing"
        ) from exc
    writers = next((lock.writers_left for lock in target.locks if lock.writers_left), None)
    if writers is not None:  # its tasks may still write: nothing of it goes, none of its locks
        for lock in target.locks:
            lock.keep_for_writers(writers)
    else:
        with contextlib.suppress(Exception):
            target.state.remove_partial_files(target.entries, ours_within(target.output))
    n_done = target.state.n_done() if target.output.exists() else 0
    exc = as_interrupt(exc)
    interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
    locks = [lock.lock.url for lock in target.locks]
    try:
        Destination.release(target)
    except Exception as why:  # the disk gone read-only (or an I/O error) as the run failed:
        # its lock stays, taken over by the next run once this process has ended; the run's
        # failure and what it left is what to say (it said "[Errno 30] Read-only file
        # system: '.../.fstack_dask/lock'", and nothing of the blocks kept)
        unreleased = (f"; its lock {', '.join(map(repr, locks))} could not be removed "
                      f"({' '.join(str(why).split())}): the next run takes it over")  # fmt: skip
    else:
        unreleased = ""
    if interrupted:
        raise exc
    if writers is not None:
        left = (f"dst {destination.dst.spec!r} is kept with {n_done} of {n_blocks} blocks done, "
                f"and so is its lock, since the run's tasks on the cluster may still write "
                f"({writers}): rerun with resume=True once the lock is "
                f"{staleness.LOCK_STALE_AFTER:g} s old")  # fmt: skip
    else:  # (a TIFF run's conversion says what it left itself: its dst is a file, not
        # the working store that holds the blocks)
        left = getattr(exc, "left_on_disk", None) or _left(target, destination, n_done, n_blocks)
        left += unreleased
    raise with_outcome(exc, dst=destination.dst.spec, left=left) from exc


def _previous(destination: Destination) -> str:
    """What became of the previous output of a failed overwrite: unchanged in dst, or hidden
    beside it where the two-rename swap (no RENAME_EXCHANGE: NFS) could not rename it back
    (an I/O error on both: the error said "unchanged" of a dst that was gone); on an object
    store, where the swap copies, dst may hold a part of a copy (the copy and its undo failed)."""
    dst = destination.dst
    if dst.exists() and (dst.is_local or provenance(dst) is not None):
        return "the previous output in dst is unchanged"
    old = [f.url for f in leftovers.staging_folders(dst) if "-old-" in f.name]
    what = "dst is missing" if not dst.exists() else "dst holds a part of a copy, no output"
    return (
        f"{what}: the previous output is in {', '.join(map(repr, old)) or 'no folder'}"
        " beside it, which the next run into dst puts back"
    )


def _swapped_in(target: Target, destination: Destination) -> str | None:
    """What a staged run that failed once its swap had put the new output in dst left, or
    None where the swap did not: an object store's swap that copied the new output into dst
    whole, then failed deleting the staged copies, its undo failing too (the same network
    fault), said "the previous output in dst is unchanged ... rerun with resume=True to
    continue it" of a dst holding the new output, complete. dst is the new output where its
    run record (copied or moved with it) is this run's."""
    dst = destination.dst
    if not target.staged or provenance(dst) is None:
        return None
    if (run_record(dst) or {}).get("run_id") != target.run_id:
        return None
    old = [f.url for f in leftovers.staging_folders(dst) if "-old-" in f.name]
    where = ", ".join(map(repr, old or [target.output.url]))
    return (
        f"dst holds the new output, complete (the swap had put it in place); the previous one "
        f"is left in {where} beside it: rerun the same command with resume=True to remove it "
        "(what you had put into it goes back into dst), or remove it yourself"
    )


def _ours_left(kept: str, entries: tuple[str, ...]) -> bool:
    """Whether ``kept`` (a path in the output) is an entry this run wrote and could not remove,
    not a user's file inside one of its entries (``0/notes.txt``: kept on purpose, it was
    told "left with 0/notes.txt ...: remove it by hand"). A file inside an entry is kept only
    where the removal judged it a user's (:func:`.removal.ours_within`, with the level's
    chunk grid: a user's ``0/c/9/0`` beyond it, or ``0/notes.<hex>.partial``); one of ours
    it could not remove fails the removal, whose error names it. (Judged again by name alone,
    ``written_by_us``, a user's ``0/c/9/0`` was "left ...: remove it by hand".)"""
    entry, _, path = kept.partition("/")
    return entry in {*entries, STATE_DIR} and not path


def _left(target: Target, destination: Destination, n_done: int, n_blocks: int) -> str:
    """What a failed run leaves, after removing what is worthless (nothing finished)."""
    if n_done == 0 and (target.staged or target.mode in ("new", "empty", "claimed", "replace")):
        try:
            kept = destination.remove_run(target)
        except Exception as exc:  # e.g. credentials that may write but not read back
            unchanged = f"{_previous(destination)}; " if target.staged else ""
            return (
                f"{unchanged}what this run wrote in {target.output.url!r} could not be removed "
                f"({' '.join(str(exc).split()) or type(exc).__name__}): remove it by hand"
            )
        if not target.staged:
            # a fault removing this run's own entries: not "nothing" (a user's file is kept)
            ours = [k for k in kept if _ours_left(k, target.entries)]
            if ours and target.output.exists():
                return (f"{target.output.url!r} is left with {', '.join(ours)}, which could "
                        "not be removed: remove it by hand")  # fmt: skip
            return "nothing was written"
        left = _previous(destination)
        if kept:
            left += f"; {target.output.url!r} is left with {', '.join(kept)}, not written by us"
        return left
    if target.staged:
        swapped = inplace.left(destination.dst) or _swapped_in(target, destination)
        if swapped is not None:
            return swapped
        return (
            f"{_previous(destination)}; the new one is kept beside it in "
            f"{target.output.path!r} with {n_done} of {n_blocks} blocks done; rerun with "
            "resume=True to continue it (or overwrite=True to start over)"
        )
    if destination.dst.path.rstrip("/").endswith(".fstack-work"):  # _runs.tiff_output.WORK
        # (it said "dst 'out.tif' is kept with 3 of 6 blocks done" of a TIFF not written: the
        # blocks are in the TIFF's working folder, and dst is absent or the previous TIFF)
        dst = "is unchanged" if destination.looks_like is not None else "is not written yet"
        return (
            f"dst {destination.dst.spec!r} {dst}; {n_done} of its {n_blocks} blocks are done "
            f"and kept in its working folder {destination.dst.path!r}; rerun with resume=True "
            "to continue"
        )
    return (
        f"dst {destination.dst.spec!r} is kept with {n_done} of {n_blocks} blocks done; "
        "rerun with resume=True to continue"
    )


def tidy_complete(destination: Destination) -> None:
    """A resume of a complete output: under its lock, put back what an overwrite killed
    after its swap left, and drop a state folder left by a kill after the output was marked
    complete (its markers vouch for nothing more). Where there is nothing of the kind (no
    state folder in it, no staging folder beside it) nothing is taken or written: a complete
    output on a read-only mount, or a collaborator's, is "already complete" too (an HPC run,
    2026-12-05: the lock's folder could not be created)."""
    state = OutputState(destination.dst).folder
    if not state.exists() and not leftovers.staging_folders(destination.dst):
        return
    target = destination.take("complete")
    try:  # every name a run writes, but the lock (a record's temporary file a kill left
        # stayed, and the state folder with it, for good)
        state = target.state.folder
        names = [n for n in state.listdir() if n != "lock"] if state.exists() else []
        remove_state(state, names, protect=destination.protect)
    finally:
        Destination.release(target)


def remove_finished(destination: Destination) -> None:
    """Remove a complete output of ours, under its lock: a run writing there now is refused
    (:class:`DestinationLockedError`), and what it writes never removed. (Two runs removing
    a TIFF's working store at once, the second then fusing into a new one between the first's
    passes, lost it: a seventh adversarial run.)"""
    target = destination.take("complete")
    left: OSError | None = None
    try:
        destination.remove(destination.dst)
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY or not destination.dst.is_local:
            raise
        left = exc
    finally:
        Destination.release(target)
    if left is not None:
        # A FUSE filesystem (exfat-fuse) keeps a file unlinked while open, our lock's that
        # holds its flock until released, as a hidden .fuse_hidden* file in its folder till
        # it is closed: the folders it emptied go once the lock is released, by rmdir alone
        # (whatever else appeared in them since stays). Every TIFF run there warned that its
        # working store "could not be removed", left empty.
        with contextlib.suppress(OSError):
            os.rmdir(destination.dst.child(STATE_DIR).path)
        try:
            os.rmdir(destination.dst.path)
        except OSError:
            raise left from None


def open_result(location: Location) -> Any:
    """The output group, opened read-only."""
    import zarr

    return zarr.open_group(store=location.zarr_store(read_only=True), mode="r")
