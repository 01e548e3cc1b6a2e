"""Moving whole folders for a destination: the exclusive create that claims one, renames, the
atomic exchange that puts a staged output in dst's place, and what a replaced folder keeps.

An overwrite replaces ``dst`` as a whole (the new output is written beside it and the two are
exchanged), so the folder at ``dst`` afterwards is another folder: :func:`take_on_looks` gives
it the old folder's permissions, group, setgid bit and ACLs, a user's private results staying
private (a third adversarial run, 2026-12-05, found 700 become 755). A mount point, or the
working folder, cannot be exchanged: :func:`unswappable` says so before a run starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import stat
import sys
import uuid
from collections.abc import Callable
from typing import Any

from .._errors import DestinationLockedError
from .._locations import (
    Location,
    change_locked,
    is_marker,
    mounts_within,
    owner_and_mode,
    read_only_mount,
    remove_keys,
    sticky_keeps,
)
from .ownership import STATE_DIR
from .removal import Marked

__all__ = [
    "exchange",
    "make_folder",
    "move",
    "renameat2",
    "take_on_looks",
    "unmovable_objects",
    "unswappable",
    "unwritable",
]

STAGING = ".fstack-staging-"
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
#: A folder's lock, which a move on an object store leaves where it is (see :func:`exchange`).
LOCK = f"{STATE_DIR}/lock"


def renameat2(src: str, dst: str, flags: int) -> bool:
    """Linux's ``renameat2``; False where the system or filesystem lacks it."""
    if not sys.platform.startswith("linux"):
        return False
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not here
        return False
    raise OSError(err, os.strerror(err), dst)


def make_folder(folder: Location, what: str) -> None:
    """Create ``folder`` exclusively (of two runs starting together, exactly one goes on)."""
    if not folder.is_local:
        if folder.exists():
            raise DestinationLockedError(
                f"{what} was claimed by another run starting at the same time; a second run "
                "into the same dst is refused"
            )
        folder.fs.makedirs(folder.path, exist_ok=True)
        return
    try:
        os.mkdir(folder.path)
    except FileExistsError:
        raise DestinationLockedError(
            f"{what} was created or claimed by another run or program while this run started; "
            "a second run into the same dst is refused (nothing was written)"
        ) from None
    except OSError as exc:
        from .._errors import is_no_space

        if is_no_space(exc):
            raise
        raise PermissionError(f"{what} cannot be created: {exc.strerror or exc}") from exc


def move(src: Location, dst: Location) -> None:
    if src.is_local:
        os.rename(src.path, dst.path)
    else:
        _move_objects(src.fs, src.path, dst.path)


def _move_objects(fs: Any, src: str, dst: str) -> None:
    """Move a file, or every object under a prefix, on an object store, which has no rename.

    Not ``fs.mv``: on S3 it fails on the folders' placeholder keys after copying everything
    (a sixth adversarial run: every overwrite failed there). All is copied before anything is
    deleted; a Zarr group's own ``zarr.json`` is copied last (the copy is a group only once
    whole) and deleted first (what is left of the original is no group). The folder's lock
    (:data:`LOCK`) stays where it is: it locks that place, and a copy would date it now.
    """
    if fs.isfile(src):
        fs.copy(src, dst)
        fs.rm_file(src)
        return
    src, dst = src.rstrip("/"), dst.rstrip("/")
    found = fs.find(src, detail=True)
    keys = [key[len(src) + 1 :] for key in sorted(found) if key.startswith(src + "/")]
    keys = [key for key in keys if key != LOCK]
    # A folder's marker (``0/``, the AWS console's; the folder's own, ``""``, too) is no
    # object to copy (s3fs's copy of one failed "The specified key does not exist", and so
    # every overwrite with one): the same empty marker is made at the copy's place.
    sizes = {key: info.get("size") for key, info in found.items()}
    markers = [k for k in keys if is_marker(f"{src}/{k}", sizes[f"{src}/{k}"])]
    theirs = _unmovable(src, found)
    if theirs:  # (checked before the run too, :func:`unmovable_objects`: this is for one put
        # there while it ran; s3fs copies and deletes the key without its '/')
        raise FileExistsError(
            f"{src!r} holds {_unmovable_what(src, theirs)}: move it out of dst, then rerun"
        )
    rest = [key for key in keys if key != "zarr.json" and key not in markers]
    root = [key for key in keys if key == "zarr.json"]
    for key in markers:
        fs.pipe_file(f"{dst}/{key}", b"")
    for batch in (rest, root):
        if batch:
            fs.copy([f"{src}/{k}" for k in batch], [f"{dst}/{k}" for k in batch])
    for batch in (root, rest + sorted(markers, key=len, reverse=True)):  # (a folder's last)
        remove_keys(fs, [f"{src}/{k}" for k in batch], sizes)


def _unmovable(top: str, found: dict[str, Any]) -> dict[str, Any]:
    """The objects in the listing ``found`` of ``top`` whose key ends in ``/`` and that hold
    bytes (S3 allows it), relative to ``top``, and their sizes: no folder's marker but a
    user's object, which no copy can move (s3fs strips the ``/``)."""
    top = top.rstrip("/") + "/"
    return {
        key[len(top) :]: info.get("size")
        for key, info in sorted(found.items())
        if key.startswith(top) and key.endswith("/") and not is_marker(key, info.get("size"))
    }


def _unmovable_what(top: str, theirs: dict[str, Any]) -> str:
    (first, size), more = next(iter(theirs.items())), len(theirs) - 1
    others = f" (and {more} more such)" if more else ""
    name = repr(first) if first else f"its own key {top.rstrip('/').rpartition('/')[2] + '/'!r}"
    return (f"{name}, an object whose key ends in '/' holding {size} bytes{others} (a user's, "
            "not a folder), which fstack_dask did not write and cannot move")  # fmt: skip


def unmovable_objects(dst: Location, *, keys: Callable[[], dict] | None = None) -> str | None:
    """What in ``dst`` on an object store an overwrite's swap could not move (a user's object
    whose key ends in ``/`` and holds bytes, beside our entries or in the state folder), for
    one line; or None. One listing of dst's keys, before anything is computed: the swap
    found it only once the whole fusion had run. (dst's own key ``out.zarr/`` holding bytes
    is listed as ``''``.) ``keys``: what gives that listing, where the caller lists dst once
    for several checks."""
    if dst.is_local:
        return None
    top = dst.path.rstrip("/")
    theirs = _unmovable(top, keys() if keys is not None else dst.fs.find(top, detail=True))
    return None if not theirs else f"holds {_unmovable_what(top, theirs)}"


def exchange(new: Location, dst: Location) -> Location:
    """Swap two folders; returns where the old content of ``dst`` now is.

    On Linux one atomic ``renameat2(RENAME_EXCHANGE)``; elsewhere (or where the filesystem
    does not support it) two renames, with the old output moved aside first. On an object
    store the swap copies, object by object, and each lock stays where it is: dst keeps its
    own, renewed by its run, till the new output is whole in it (a second run started while
    the copy ran, minutes for a large output, found dst unlocked and wrote into it).
    """
    if new.is_local and renameat2(new.path, dst.path, RENAME_EXCHANGE):
        return new  # (synced by the caller, which knows the swap is done: an EIO fails the run)
    aside = dst.sibling(f".{dst.name}{STAGING}old-{uuid.uuid4().hex[:12]}")
    if new.is_local:
        os.rename(dst.path, aside.path)
        try:
            os.rename(new.path, dst.path)
        except BaseException:
            # dst is never left missing (the old output hidden beside it): put it back; the
            # staged output stays where it was, for a resume
            os.rename(aside.path, dst.path)
            raise
    else:
        try:
            _move_objects(dst.fs, dst.path, aside.path)
        except BaseException:
            # Copied aside whole, then cut short deleting dst's objects (its zarr.json first):
            # Ctrl-C said "rerun ... --resume" of a dst every run refused as not ours. Moved
            # back at once by the next step's undo (a no-op while dst's zarr.json is there).
            with contextlib.suppress(Exception):  # (else the error told is the original one)
                if dst.fs.exists(f"{aside.path}/zarr.json"):
                    _put_back(dst.fs, aside.path, dst.path, new.path)
            raise
        try:
            _move_objects(dst.fs, new.path, dst.path)
        except BaseException as exc:
            # as locally: dst is not left a part of the new output (refused by every later
            # run as not ours) with the old one hidden beside it
            if not _put_back(dst.fs, aside.path, dst.path, new.path):
                raise
            # the copy was whole, the deletes of the staged copies failed: the swap is done
            # (the error said "the previous output in dst is unchanged" of the new output)
            with contextlib.suppress(Exception):
                lock = f"{new.path.rstrip('/')}/{LOCK}"  # (its run releases it)
                left = {k: i.get("size") for k, i in dst.fs.find(new.path, detail=True).items()}
                remove_keys(dst.fs, [key for key in sorted(left) if key != lock], left)
            if not isinstance(exc, Exception):  # Ctrl-C: the caller says what is where
                exc.aside = aside  # type: ignore[attr-defined]
                raise
    return aside


def _put_back(fs: Any, old: str, dst: str, new: str) -> bool:
    """Undo a move of ``new`` into ``dst`` that failed while copying (its objects are all still
    at ``new``: none is deleted before all are copied, and ``zarr.json`` is copied last), then
    move ``old`` back into ``dst``. Once ``dst/zarr.json`` is there the copy was whole: kept,
    and True returned. (dst's lock is no copy: never copied, it stays.)"""
    dst, new = dst.rstrip("/"), new.rstrip("/")
    if fs.exists(f"{dst}/zarr.json"):
        return True
    staged = {key[len(new) :] for key in fs.find(new)} - {f"/{LOCK}"}
    there = {key: info.get("size") for key, info in fs.find(dst, detail=True).items()}
    copies = [key for key in there if key[len(dst) :] in staged]
    remove_keys(fs, copies, there)
    _move_objects(fs, old, dst)
    return False


def take_on_looks(path: str, like: str) -> None:
    """Give the new local file or folder at ``path`` (a staging folder before the run writes
    into it; a finished TIFF) the owner, group, mode (setgid included) and extended
    attributes (ACLs among them) of ``like``, which it will replace, as far as this user may:
    files created inside a folder then inherit its group and default ACL. The owner keeps
    write and search permission on a folder: the run writes into it.
    """
    st = os.stat(like)
    for uid in (st.st_uid, -1):  # a user may give a file of theirs any group of theirs
        with contextlib.suppress(OSError):
            os.chown(path, uid, st.st_gid)
            break
    with contextlib.suppress(OSError):  # copystat skips what it may not copy (EPERM, ENOTSUP)
        shutil.copystat(like, path)
        os.utime(path)  # not the old times: a sync tool comparing mtimes would skip new data
    if os.path.isdir(path):  # (``like`` may be a file: a TIFF for its working store)
        mode = st.st_mode & 0o7777
        if not stat.S_ISDIR(st.st_mode):  # who may read the file may enter the folder
            mode |= (mode & 0o444) >> 2
        with contextlib.suppress(OSError):
            os.chmod(path, mode | 0o700)


def unwritable(dst: Location, entries: tuple[str, ...]) -> str | None:
    """Which folder of the existing local output ``dst`` that a run writes into (or removes
    from) this user may not write, described with its owner and mode, or None.

    Another user's output in a group-shared folder, written under umask 022: a ``--resume``
    or ``--overwrite`` failed with a raw ``Permission denied`` on a lock's temporary file, or
    "dst cannot be created" (a twentieth adversarial run).
    """
    if not dst.is_local:
        return None
    names = ("", ".fstack_dask", ".fstack_dask/done")
    names += tuple(x for e in entries for x in (e, f"{e}/c"))
    for name in names:
        path = os.path.join(dst.path, name) if name else dst.path
        if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
            locked = change_locked(path)
            if locked is not None:  # (it said "ask its owner", to root, the owner)
                return Marked(f"may not be written: {locked}; clear it or choose another dst")
            if read_only_mount(path):  # (no owner can help: it said "ask its owner")
                return (f"is on a read-only filesystem ({path!r} may not be written); "
                        "remount it read-write or choose another dst")  # fmt: skip
            st = os.stat(path)
            return (
                f"may not be written by this user: {path!r} is {owner_and_mode(st, path)}; ask its "
                "owner to let you write it (chmod -R g+w, for a group's folder) or choose "
                "another dst"
            )
    return None


#: More than the longest path a run writes below its output's folder (a state folder's
#: temporary record, a pyramid level's chunk key of a t, c, y, x image).
_DEEPEST = 160


def path_too_long(dst: Location) -> str | None:
    """Why the filesystem cannot hold ``dst``'s name, or the paths of the files a run writes
    in it, or None (a name of 242-255 bytes for a TIFF, whose working folder's name is 14
    bytes longer, and a path near PATH_MAX gave a raw "File name too long" mid-run: an HPC
    run, 2026-12-05)."""
    if not dst.is_local:
        return None
    path = dst.path.rstrip("/")
    parent = os.path.dirname(path)
    while parent and not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    try:
        most_name = os.pathconf(parent or "/", "PC_NAME_MAX")
        most_path = os.pathconf(parent or "/", "PC_PATH_MAX")
    except (OSError, ValueError):
        return None
    name = len(os.fsencode(os.path.basename(path)))
    if name > most_name:
        return f"has a name of {name} bytes, where its filesystem allows {most_name}"
    length = len(os.fsencode(path))
    if length + _DEEPEST > most_path:
        return (
            f"lies at a path of {length} bytes: the files a run writes in it would pass the "
            f"{most_path} bytes a path may have here"
        )
    return None


def unswappable(dst: Location) -> str | None:
    """Why an overwrite cannot exchange ``dst`` for the new output, or None."""
    if not dst.is_local:
        return None
    longest = len(os.fsencode(f".{dst.name}{STAGING}old-{'0' * 12}"))
    with contextlib.suppress(OSError, ValueError):  # (a dst whose own name is that long
        # was written, then every overwrite failed "cannot be created": an eighth adversarial run)
        most = os.pathconf(os.path.dirname(dst.path), "PC_NAME_MAX")
        if longest > most:
            return (
                f"has a name too long for the folders an overwrite writes beside it (up to "
                f"{longest} bytes, where its filesystem allows {most})"
            )
    # (a folder of the same filesystem bound there, as containers bind an output folder, is
    # not one to ismount: the run computed it all, then failed "Device or resource busy" and
    # said to rerun with --resume, which failed so again)
    try:  # (the table unreadable: a mount inside went unseen, and its files as our chunks)
        points = mounts_within(dst.path, itself=True)
    except PermissionError as exc:
        return f"cannot be checked for mount points inside it: {exc}"
    if os.path.ismount(dst.path) or dst.path.rstrip("/") in points:
        return "is a mount point, which cannot be replaced by another folder"
    mounted = [os.path.relpath(m, dst.path) for m in points if m != dst.path.rstrip("/")] or [
        n for n in sorted(os.listdir(dst.path)) if os.path.ismount(dst.child(n).path)
    ]  # (ismount where there is no /proc: it does not see a folder bound there)
    if mounted:  # it could not be moved back into the new output
        return f"holds a mount point ({mounted[0]!r}), which cannot be moved to the new output"
    for place in (dst.path, os.path.dirname(dst.path)):  # (os.access says "writable" to
        # an append-only folder: the run computed it all, then failed "Operation not
        # permitted" and said to rerun with --resume, which failed so again)
        locked = change_locked(place)
        if locked is not None:
            return f"cannot be moved: {locked}"
    if not os.access(os.path.dirname(dst.path), os.W_OK | os.X_OK):  # (it said "dst cannot
        # be created": an eighth adversarial run)
        return f"lies in {os.path.dirname(dst.path)!r}, which this user may not write"
    # a sticky folder: only its owner moves it (root too, in a user namespace where the
    # owner is not mapped: the run computed it all, then failed "Operation not permitted")
    if sticky_keeps(os.stat(os.path.dirname(dst.path)), os.stat(dst.path).st_uid):
        return "belongs to another user in a sticky folder, which only its owner may move"
    cwd = os.path.realpath(os.getcwd())
    if cwd == dst.path or cwd.startswith(dst.path.rstrip("/") + "/"):
        return "is (or holds) the working folder, which would be swapped away"
    return None
