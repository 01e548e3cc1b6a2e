"""Replacing ``dst`` entry by entry, where its folder cannot be renamed: the fallback of an
overwrite's swap (:func:`.folders.exchange`) that failed ``EXDEV``.

A folder in an overlayfs lower layer (an output baked into a container image, run with the
container's layer on top) cannot be renamed without the mount's ``redirect_dir``: every
``--overwrite`` of it failed "Invalid cross-device link" once the new output was complete,
and said to rerun with --resume, which failed so again. As ``mv`` does across devices,
the old output is then removed and the new one moved in, entry by entry, under both locks:

1. dst's run record names the staged output it takes in (``swapping_in``, with that run's
   id) and lists the entries of both outputs: dst stays ours at every step, by its record,
   whatever of its provenance and id file is gone;
2. the old output's entries go (its ``zarr.json`` first: readers meet no image, not half of
   one), only our files in them, as any removal;
3. the staged entries are renamed into dst (a folder the run created moves: it lies in the
   upper layer), its ``zarr.json`` last: dst is an image once whole; one that cannot be
   renamed either is copied, marked copied in dst's state folder, then removed from the
   staged folder (a kill during that removal leaves a staged entry that is not whole);
4. the staged folder's state goes; then dst's record (the caller's ``finish``).

A run killed at any step leaves dst ours, and the staged output's remaining entries beside
it: the next run into dst finishes the replacement (:func:`resume_replacement`) before
anything else. The old output is removed only once it is ours and the new one is complete;
a user's file beside our entries stays where it is, in dst.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import uuid
from collections.abc import Iterable

from .._locations import Location, remove_tree
from .folders import STAGING
from .lock import DestinationLock, release_all
from .ownership import (
    STATE_DIR,
    classify,
    owned_output,
    provenance,
    recorded_entries,
    run_record,
)
from .removal import ours_within, remove_state
from .state import OutputState
from .write import fsync_dir

__all__ = [
    "SWAPPING",
    "abandoned",
    "drop_staged_state",
    "left",
    "replace_in_place",
    "replacing",
    "resume_replacement",
    "warn",
]

log = logging.getLogger(__name__)

#: The key of dst's run record that names the staged output being moved in.
SWAPPING = "swapping_in"


def warn(dst: Location, exc: OSError) -> None:
    """Say, in one line, that the swap is not atomic."""
    log.warning(
        "%s could not be swapped with the new output in one step (%s: its folder cannot be "
        "renamed, as one in an overlayfs lower layer, a container image's, cannot); it is "
        "replaced entry by entry instead: it holds no image until that is done, and a run "
        "cut short meanwhile is finished by the next run into it",
        dst.spec, exc.strerror or exc,
    )  # fmt: skip


def replace_in_place(new: Location, dst: Location, *, protect: Iterable[Location]) -> None:
    """Replace our complete output at ``dst`` by the complete staged output at ``new``
    (both locked by the caller), entry by entry (the module docstring)."""
    record = run_record(new)
    attrs = provenance(new)
    if record is None or attrs is None or attrs.get("complete") is not True:
        raise PermissionError(f"refusing to replace {dst.spec!r}: {new.url!r} is not complete")
    if classify(dst) != "complete":
        raise PermissionError(f"refusing to replace {dst.spec!r}: it is not a complete output")
    _refuse_theirs_inside(dst, recorded_entries(new) or set())
    old = provenance(dst) or {}
    entries = sorted((recorded_entries(dst) or set()) | (recorded_entries(new) or set()))
    levels = max(_levels(old), _levels(record.get("params") or {}))
    params = {**old, "entries": [e for e in entries if e != STATE_DIR], "levels": levels}
    swapping = {"from": new.name, "run_id": record["run_id"]}
    OutputState(dst).write_record(
        {"run_id": uuid.uuid4().hex, "params": params, "dst": dst.url, SWAPPING: swapping}
    )
    _carry_on(new, dst, protect, checked=True)


def _levels(params: dict) -> int:
    try:
        return int(params.get("levels") or 0)
    except (TypeError, ValueError):
        return 0


def _refuse_theirs_inside(dst: Location, entries: Iterable[str]) -> None:
    """Refuse, before anything is removed, where a user's file inside one of the old
    output's ``entries`` would keep that entry, which the new output's of that name must
    take (its rename failed "Directory not empty" at each rerun, naming no file)."""
    ours = ours_within(dst)
    for entry in sorted(set(entries) - {STATE_DIR, "zarr.json"}):
        top = dst.child(entry).path
        for root, _dirs, files in os.walk(top):
            for name in files:
                rel = os.path.relpath(os.path.join(root, name), top).replace(os.sep, "/")
                if not ours(entry, rel):
                    raise FileExistsError(
                        f"dst {dst.spec!r} holds {entry}/{rel}, which fstack_dask did not "
                        "write, inside an entry the new output replaces (dst cannot be "
                        "swapped in one step, so its entries are replaced): move it out"
                    )


def _carry_on(
    new: Location, dst: Location, protect: Iterable[Location], *, checked: bool = False
) -> None:
    """Steps 2 and 3 from wherever a run stopped: an entry the staged folder still holds has
    not moved yet (dst's of that name is the old one's); one it lacks is dst's new one."""
    moving = sorted((recorded_entries(new) or set()) - {STATE_DIR})
    moving = [e for e in moving if os.path.lexists(new.child(e).path)]
    for entry in [e for e in moving if os.path.lexists(_copied(dst, e).path)]:
        # copied whole, killed while its staged original went (it lacked files: copied
        # again, dst's new level lacked chunks, complete, exit 0): the rest of it goes
        moving.remove(entry)
        _drop_staged(new, entry, protect)
    if not checked:  # a user's file put there since, or while a run was killed
        _refuse_theirs_inside(dst, moving)
    record = run_record(dst) or {}
    listed = (record.get("params") or {}).get("entries") or []
    moved = set((recorded_entries(new) or set()) - set(moving))
    old = [e for e in listed if e not in moved and e != STATE_DIR]
    old = sorted(old, key=lambda e: e != "zarr.json")  # its zarr.json first
    old = [e for e in old if os.path.lexists(dst.child(e).path)]
    if old:
        remove_tree(dst, owned=owned_output, protect=protect, only=old, keep_folder=True,
                    ours_within=ours_within(dst))  # fmt: skip
    for entry in sorted(moving, key=lambda e: e == "zarr.json"):  # its zarr.json last
        _move(new, dst, entry, protect)
    fsync_dir(dst.path)


def _move(new: Location, dst: Location, entry: str, protect: Iterable[Location]) -> None:
    """Rename the staged ``entry`` into dst; one that cannot be renamed either (a staged run
    in a lower layer too, resumed) is copied, then removed from the staged folder: a copy cut
    short is an old entry to the next run, removed and copied again."""
    try:
        os.rename(new.child(entry).path, dst.child(entry).path)
        return
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # a user's file put there meanwhile
            _refuse_theirs_inside(dst, [entry])  # (it said "[Errno 39] Directory not empty")
        if exc.errno != errno.EXDEV or not os.path.isdir(new.child(entry).path):
            raise
    _copy_tree(new.child(entry).path, dst.child(entry).path)
    for root, _dirs, files in os.walk(dst.child(entry).path):  # durable before the original goes
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)
    fsync_dir(dst.path)
    copied = _copied(dst, entry)  # (a staged entry with files gone is not one to copy again)
    os.close(os.open(copied.path, os.O_WRONLY | os.O_CREAT, 0o644))
    fsync_dir(os.path.dirname(copied.path))
    _drop_staged(new, entry, protect)


def _copy_tree(src: str, dst: str) -> None:
    """``shutil.copytree``, failing with the first file's error (ENOSPC: one line naming the
    file; its ``shutil.Error`` listed every file it could not copy as a Python list)."""
    failed: list[OSError] = []

    def copy(source: str, target: str, **kwargs) -> object:
        if failed:  # (the disk is full: the rest would fail alike)
            raise failed[0]
        try:
            return shutil.copy2(source, target, **kwargs)
        except OSError as exc:
            failed.append(exc)
            raise

    try:
        shutil.copytree(src, dst, symlinks=True, copy_function=copy)
    except shutil.Error:
        if failed:
            raise failed[0] from None
        raise


def _copied(dst: Location, entry: str) -> Location:
    """The marker, in dst's state folder, of a staged entry copied whole into dst (for the
    staged run dst's record names: one of an earlier replacement is not this one's)."""
    run_id = (_swapping(dst) or {}).get("run_id")
    return OutputState(dst).folder.child(f"copied-{run_id}-{entry}")


def _drop_staged(new: Location, entry: str, protect: Iterable[Location]) -> None:
    remove_tree(new, owned=owned_output, protect=protect, only=[entry], keep_folder=True,
                ours_within=ours_within(new))  # fmt: skip


def drop_staged_state(new: Location, protect: Iterable[Location]) -> None:
    """Step 4: the staged folder's state, its markers first (none may outlive its data) and
    then its record (a record with no markers left is a run to fuse again: killed between
    the two, the next run would have), then the folder, only if nothing else is left in it.
    A kill later leaves dst complete, its record naming no staged run: dropped then."""
    state = new.child(STATE_DIR)
    if state.exists():
        remove_state(state, state.listdir(), protect=protect, keep_folder=False)
    with contextlib.suppress(OSError):
        os.rmdir(new.path)


def _swapping(dst: Location) -> dict | None:
    found = (run_record(dst) or {}).get(SWAPPING) if dst.is_local else None
    return found if isinstance(found, dict) and isinstance(found.get("from"), str) else None


def replacing(dst: Location) -> Location | None:
    """The staged output dst's record says is being moved into dst, where it is still there
    with that run's record; or None."""
    swapping = _swapping(dst)
    if swapping is None:
        return None
    name, prefix = swapping["from"], f".{dst.name}{STAGING}"
    if not name.casefold().startswith(prefix.casefold()) or "/" in name:
        return None
    if not name.startswith(prefix) and not os.path.lexists(
        dst.sibling(prefix + name[len(prefix) :]).path
    ):  # dst spelled Out.zarr on exFAT, its staged output .out.zarr...: the filesystem finds
        # it under dst's spelling too; on one that tells case, Out.zarr is a copy of out.zarr
        # (cp -a while it was replaced) and took out.zarr's staged output away
        return None
    new = dst.sibling(name)
    if (run_record(new) or {}).get("run_id") != swapping.get("run_id"):
        return None
    return new


def resume_replacement(dst: Location, *, protect: Iterable[Location]) -> bool:
    """Finish, under dst's lock and the staged folder's, a replacement entry by entry that a
    run cut short left (the module docstring); False where there is none. Where a live run
    holds either lock (it is at it), ``DestinationLockedError``: it returned False, and a
    --resume then read dst's record, the old output's ("was started with different
    depth_map")."""
    if _swapping(dst) is None or abandoned(dst) is not None:
        return False  # (its lock not taken: a stale one's takeover printed a line above
        # the refusal, and removed it)
    what = f"dst {dst.spec!r}"
    locks = [DestinationLock(OutputState(dst).lock, what)]
    try:
        locks[0].acquire()
        new = replacing(dst)  # still, under the lock?
        if new is not None:
            locks.append(DestinationLock(OutputState(new).lock, what))
            locks[1].acquire()
            _carry_on(new, dst, protect)
            locks.pop().release()
            drop_staged_state(new, protect)
        elif _swapping(dst) is None or classify(dst) != "complete":
            return False  # (its staged output gone meanwhile: abandoned, refused)
        state = OutputState(dst).folder  # its record: dst is complete
        remove_state(state, [n for n in state.listdir() if n != "lock"], protect=protect)
    finally:
        try:
            release_all(reversed(locks))
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(OutputState(dst).folder.path)
    if new is not None:
        log.warning("finished replacing %s by the output of an overwrite cut short while it "
                    "replaced it entry by entry (%s)", dst.spec, new.url)  # fmt: skip
    return True


def abandoned(dst: Location) -> str | None:
    """Why ``dst``, left unfinished by a replacement entry by entry cut short, cannot be
    resumed where the staged output it was taking in is gone (a user removed it): it holds
    what was left of the old output, no image (``--resume`` with the new parameters said
    they differed from the old output's, and ``info`` called it resumable); or None."""
    swapping = _swapping(dst)
    if swapping is None or replacing(dst) is not None or classify(dst) != "unfinished":
        return None
    new = dst.sibling(swapping["from"])
    if "/" not in swapping["from"] and (run_record(new) or {}).get("run_id") == swapping.get(
        "run_id"
    ):  # there, for dst's former name: dst was renamed (it said the new output "is gone")
        former = swapping["from"][1:].partition(STAGING)[0]
        return (
            f"dst {dst.spec!r} was being replaced by a new output entry by entry (an overwrite "
            f"of {former!r} cut short; its folder cannot be renamed), and was renamed since: "
            f"what had not moved yet is in {new.url!r}, named for {former!r}; rename dst back "
            f"to {former!r} and rerun the same command with resume=True to finish the "
            "replacement, or start over with overwrite=True"
        )
    return (
        f"dst {dst.spec!r} was being replaced by a new output entry by entry (an overwrite cut "
        f"short; its folder cannot be renamed), and the new output it was taking in, "
        f"{dst.sibling(swapping['from']).url!r}, is gone: dst holds parts of the two outputs, no "
        "image, nothing to resume; start over with overwrite=True"
    )


def left(dst: Location) -> str | None:
    """What a run stopped while replacing dst entry by entry left, for its error; or None
    where it had not begun (the previous output in dst is then unchanged)."""
    new = replacing(dst)
    if new is None:
        return None
    return (
        f"dst {dst.spec!r} was being replaced by the new output entry by entry (its folder "
        f"cannot be renamed); what had not moved yet is in {new.url!r}: rerun the same command "
        "with resume=True to finish the replacement"
    )
