"""The one way fstack_dask deletes anything: :func:`remove_tree`, which checks again."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .location import Location
from .places import mount_id, statx_attributes


def _never_removed() -> list[Location]:
    """The filesystem root, the home and working folders: never removed, nor their parents."""
    places = ["/", os.path.expanduser("~"), os.getcwd()]
    return [Location(p, "file", os.path.realpath(p), {}) for p in places]


def remove_tree(
    location: Location,
    *,
    owned: Callable[[Location], str | None],
    protect: Iterable[Location] = (),
    only: Iterable[str] | None = None,
    keep_folder: bool = False,
    ours_within: Callable[[str, str], bool] | None = None,
) -> list[str]:
    """Delete ``location`` (or only its entries named in ``only``), after checking again.

    The one way fstack_dask deletes anything. Right before removing, ``owned(location)``
    must return None (it returns the reason otherwise: this is what makes the removal of
    something that is not ours impossible even if it changed since the caller looked), and
    the location must neither be, nor contain, nor lie inside... the filesystem root, the home
    or working folder (nor contain them), nor any ``protect`` location.

    Parameters
    ----------
    location : Location
        The folder to remove.
    owned : callable
        Ownership test, ``owned(location) -> None`` if it may be removed, else a reason.
    protect : iterable of Location
        Places that must survive (the source): refused if ``location`` overlaps any.
    only : iterable of str, optional
        Remove only these entries of the folder, in this order, then the folder itself if it
        is left empty (unless ``keep_folder``); entries not named are kept (files a user put
        there).
    keep_folder : bool
        With ``only``: keep the folder even when it is left empty (it was there before).
    ours_within : callable, optional
        With ``only``, on a local filesystem: ``ours_within(entry, path)`` says whether a file
        inside a named entry (``path`` relative to it, ``/``-separated) is ours; the others,
        and the folders holding them, are kept (a user's file put inside an output's array).

    Returns
    -------
    list of str
        The entries that were kept (not ours); empty if the whole folder went.

    Raises
    ------
    PermissionError
        If a check fails; nothing is removed then.
    """
    for place in _never_removed():
        if location.contains(place):
            raise PermissionError(
                f"refusing to delete {location.url!r}: it is or contains {place.path!r}"
            )
    for place in protect:
        if location.overlaps(place):
            raise PermissionError(
                f"refusing to delete {location.url!r}: it overlaps {place.spec!r}, which must "
                "be kept"
            )
    reason = owned(location)
    if reason is not None:
        raise PermissionError(f"refusing to delete {location.url!r}: {reason}")
    if location.is_local:
        try:
            mounted = mounts_within(location.path)
        except PermissionError as exc:
            raise PermissionError(
                f"refusing to delete {location.url!r}: {exc}; remove it yourself, or run where "
                "/proc is mounted"
            ) from None
        if mounted:  # a walk would go down into it: another filesystem, or a folder bound there
            raise PermissionError(
                f"refusing to delete {location.url!r}: {mounted[0]!r} in it is a mount point "
                "(another filesystem, or a folder bound there, perhaps the source); unmount it "
                "first"
            )
    if not location.exists():
        return []
    fs = location.fs
    if only is None:
        if location.is_local and os.path.isdir(location.path) and not os.path.islink(location.path):
            _rmtree(location.path)
        elif location.is_local:  # a file (e.g. an output's zarr.json) or a symlink
            _unlink(location.path)
        else:
            fs.rm(location.path, recursive=True)
        return []
    order = list(dict.fromkeys(only))
    listed = location.listdir()
    kept = [entry for entry in listed if entry not in set(order)]
    for entry in [e for e in order if e in listed]:
        target = location.child(entry)
        if target.is_local:
            if os.path.isdir(target.path) and not os.path.islink(target.path):
                if ours_within is None:
                    _rmtree(target.path)
                else:
                    kept += [
                        f"{entry}/{rel}" for rel in _remove_ours(target.path, entry, ours_within)
                    ]
            else:
                _unlink(target.path)
        elif ours_within is None or not fs.isdir(target.path):
            fs.rm(target.path, recursive=True)
        else:
            kept += [f"{entry}/{rel}" for rel in _remove_ours_remote(fs, target.path, entry,
                                                                      ours_within)]  # fmt: skip
    if not kept and not keep_folder:
        if location.is_local:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(location.path)
        else:
            kept += _remove_what_is_left(fs, location.path)
    return kept


def _remove_ours(top: str, entry: str, ours: Callable[[str, str], bool]) -> list[str]:
    """Delete the files under ``top`` that ``ours`` claims, then the folders left empty;
    returns the files kept (links are never ours: we write none)."""
    kept = []
    for root, dirs, files in os.walk(top, topdown=False, onerror=_unless_gone):
        rel_root = os.path.relpath(root, top).replace(os.sep, "/")
        prefix = "" if rel_root == "." else rel_root + "/"
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        for name in sorted(files) + sorted(links):
            path = os.path.join(root, name)
            if name in files and not os.path.islink(path) and ours(entry, prefix + name):
                _unlink(path)
            else:
                kept.append(prefix + name)
        if root != top or not kept:
            try:
                os.rmdir(root)
            except OSError as exc:  # a kept file (or folder) inside; else (EIO) a failure,
                # not a folder of someone else's ("kept [...]: fstack_dask did not write them");
                # one already gone was removed (by another run removing the same output)
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EACCES, errno.EPERM,
                                     errno.ENOENT):  # fmt: skip
                    raise
    return kept


def _remove_ours_remote(fs, top: str, entry: str, ours: Callable[[str, str], bool]) -> list[str]:
    """:func:`_remove_ours` on an fsspec filesystem (object stores have no folders to keep:
    a kept file keeps its prefix). A folder's marker (``0/c/``, the empty key the AWS console
    and other tools make for a folder) is a folder: it goes where nothing kept lies under it,
    as a local folder left empty does."""
    top = top.rstrip("/")
    sizes = _sizes(fs, top)
    found = [(path, path[len(top) + 1 :]) for path in sorted(sizes)]
    files = [(path, rel) for path, rel in found if not is_marker(path, sizes[path])]
    # (a key ending in '/' that holds bytes is a user's object: no run writes one)
    kept = [rel for path, rel in files if path.endswith("/") or not ours(entry, rel)]
    mine = [path for path, rel in files if not path.endswith("/") and ours(entry, rel)]
    mine += [path for path, rel in found if is_marker(path, sizes[path])  # (top's own: rel "")
             and not any(k.startswith(rel) for k in kept)]  # fmt: skip
    remove_keys(fs, mine, sizes)
    if not kept:
        kept = _remove_what_is_left(fs, top)
    return kept


def _remove_what_is_left(fs: Any, top: str) -> list[str]:
    """Once our objects under ``top`` went: its folders' markers, and its empty folders where
    a store has them (memory://). An object found there now was put there meanwhile: a user's,
    kept with its prefix, as a local folder's rmdir keeps a file put in it (a recursive
    delete of ``top`` took it). Returns those kept, relative to ``top``."""
    top = top.rstrip("/")
    fs.invalidate_cache(top)
    left = _sizes(fs, top)
    late = [path[len(top) + 1 :] for path in sorted(left) if not is_marker(path, left[path])]
    if late:
        return late
    remove_keys(fs, sorted(left), left)
    fs.invalidate_cache(top)
    if fs.exists(top):  # folders with nothing in them (a store that has folders)
        fs.rm(top, recursive=True)
    return []


def is_marker(key: str, size: Any) -> bool:
    """Whether the object store's key, of ``size`` bytes, is a folder's marker: an empty key
    ending in ``/``, as the AWS console, rclone and other tools make for a folder
    (``out.zarr/0/``). One that holds bytes (S3 allows it) is a user's object, not a folder:
    it was taken for a marker and deleted with our output."""
    return key.endswith("/") and size == 0


def _sizes(fs: Any, top: str) -> dict[str, Any]:
    """Every key under ``top`` and its size, in one listing."""
    return {key: info.get("size") for key, info in fs.find(top, detail=True).items()}


def remove_keys(fs: Any, keys: Iterable[str], sizes: Mapping[str, Any]) -> None:
    """Delete these objects; folders' markers too, which ``fs.rm`` of a list leaves. A key
    ending in ``/`` is deleted only where ``sizes`` (a listing's) says it is a marker, and
    never through ``fs.rm``, which strips its ``/`` and deletes the key without it (another
    object) or none."""
    keys = list(keys)
    files = [key for key in keys if not key.endswith("/")]
    if files:
        fs.rm(files)
    for key in keys:
        if is_marker(key, sizes.get(key)):
            fs.rm_file(key)


# Two runs may remove the same output of ours at once (a resume that finds a complete TIFF
# working store while the run that placed the TIFF still removes it): what the other removed
# is removed.


def _unless_gone(exc: OSError) -> None:
    """A folder that could not be listed (EIO) fails the removal (os.walk skipped it, and its
    rmdir then read as "a kept file inside"); one already gone was removed, and one we may
    not read (a user's, locked) is kept, as before."""
    if not isinstance(exc, (FileNotFoundError, PermissionError)):
        raise exc


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _rmtree(path: str) -> None:
    def gone_is_removed(function: Callable, where: str, exc: BaseException) -> None:
        if isinstance(exc, FileNotFoundError):
            return
        if isinstance(exc, OSError) and exc.errno and exc.filename != where:
            # (rmtree's calls relative to a folder's fd name the entry alone: a warning said
            # "Permission denied: '0_0'", the folder left out)
            raise type(exc)(exc.errno, exc.strerror, where) from exc
        raise exc

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=gone_is_removed)
    else:
        shutil.rmtree(path, onerror=lambda f, where, info: gone_is_removed(f, where, info[1]))


def mounts_within(path: str, *, itself: bool = False) -> list[str]:
    """The mount points below local ``path``, and ``path`` if it is one and ``itself``
    (Linux: ``/proc/self/mountinfo``; else an empty list). A bind mount of a folder of the
    same filesystem is one too, which ``os.path.ismount`` does not see (a seventh adversarial
    run bound the source inside an output that ``--overwrite`` then removed, the source's
    files with it). Where the table cannot be read, or lists no mount at all (a hardened
    container masks it), each folder is asked (``statx``) whether a mount starts there, and
    where that cannot be asked either, PermissionError: no mount seen is then not no mount
    (a ninth adversarial run: the source's chunk folder bound over an old output's ``0/c``
    had its files deleted as the level's chunks, exit 0)."""
    lines = _mount_table()
    if lines is None:
        return _mount_roots(path, itself)
    base = path.rstrip("/") or "/"
    found = []
    for line in lines:
        fields = line.split(b" ")
        if len(fields) < 5:
            continue
        point = os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), fields[4]))
        if point.startswith(base + "/") or (itself and point == base):
            found.append(point)
    return sorted(found)


def _mount_table() -> list[bytes] | None:
    """The lines of ``/proc/self/mountinfo`` (bytes, split at b"\\n" alone: the kernel
    escapes only space, tab, newline and backslash, and a text read took a "\\r", or
    str.splitlines a U+2028, in a mount point's name for a line's end); none elsewhere than
    on Linux; None on Linux where it cannot be read or is empty."""
    linux = sys.platform.startswith("linux")
    try:
        with open("/proc/self/mountinfo", "rb") as fh:
            table = fh.read()
    except OSError:
        return None if linux else []
    return None if linux and not table.strip() else table.split(b"\n")


_MOUNT_ROOT = 0x2000  # STATX_ATTR_MOUNT_ROOT (Linux 5.8)


def _mount_roots(path: str, itself: bool) -> list[str]:
    """The folders under ``path`` (and ``path``, if ``itself``) where a mount starts, as
    ``statx`` tells each (bind mounts too); PermissionError where it cannot."""
    found = [path.rstrip("/") or "/"] if itself and _is_mount_root(path) else []
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, _files in os.walk(path, onerror=_unless_gone):
            for name in list(dirs):
                where = os.path.join(root, name)
                if not os.path.islink(where) and _is_mount_root(where):
                    found.append(where)
                    dirs.remove(name)  # (not into it)
    return sorted(found)


def _is_mount_root(path: str) -> bool:
    try:
        found = statx_attributes(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        reason = f"statx failed: {exc.strerror}"
    else:
        reason = "this system has no statx"
        if found is not None and found[1] & _MOUNT_ROOT:
            return bool(found[0] & _MOUNT_ROOT)
        if found is not None:
            reason = "statx does not say where a mount starts here"
    try:  # a mount starts where the mount id changes (statx refused by an older container
        # runtime's seccomp profile, which allows this call: a fresh TIFF run left its working
        # store behind)
        return mount_id(path) != mount_id(os.path.dirname(path.rstrip("/")) or "/")
    except FileNotFoundError:
        return False
    except OSError as exc:
        reason += f", nor name_to_handle_at ({exc.strerror})"
    raise PermissionError(
        f"cannot read the mount table /proc/self/mountinfo, and {reason}, so cannot tell "
        f"whether {path!r} is a mount point (another filesystem, or a folder bound there, "
        "perhaps the source's)"
    )
