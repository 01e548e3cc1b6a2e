"""Removing an output of ours: which of its files are ours, and in which order they go.

Inside our entries only what a run writes is ours: the state folder, the id file, and for
each array (a level, or a map's level) its ``zarr.json`` and chunk keys within its chunk
grid, up to the levels the output's record lists; a user's file or Zarr array put inside is
kept, and a warning names it. An output goes in two passes: the done-markers first (none may
outlive its data), then the data, then what shows the folder ours and the lock a remover may
hold, so that a run killed while removing leaves a folder the next run still knows as ours.
Every deletion goes through :func:`~fstack_dask._locations.remove_tree`, which checks again.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable, Iterable

from .._locations import (
    Location,
    is_marker,
    marks_reader,
    owner_and_mode,
    permission_missing,
    remove_tree,
    sticky_keeps,
)
from .ownership import (
    ID_FILE,
    RUN_FILE,
    STATE_DIR,
    ZARR_PARTIAL,
    _read_json,
    owned_output,
    provenance,
    recorded_entries,
    run_record,
    state_written,
)
from .state import OutputState

__all__ = [
    "Marked",
    "clear_output",
    "copy_of",
    "ours_within",
    "remove_entries",
    "remove_output",
    "remove_state",
    "sticky_blocked",
    "theirs_in_objects",
    "unremovable",
    "written_by_us",
]

log = logging.getLogger(__name__)

_ID_WRITES = re.escape(ID_FILE[1]) + r"(\.[0-9a-f]{32}\.tmp)?"  # the id file, or its .tmp
_ARRAY_KEY = re.compile(r"zarr\.json|c(/(0|[1-9][0-9]*))+")  # Zarr v3's default chunk keys: c/0/1/2
# a level's name as we give it, str(n): not "01" (int() is 1) nor "\u0663" (isdigit())
_LEVEL = re.compile(r"0|[1-9][0-9]*")


def _written(path: str) -> str:
    """The key a temporary file of zarr's was written for: ``c/0/1.<hex>.partial`` is
    ``c/0/1``'s, and ``zarr.<hex>.partial`` (``Path.with_suffix`` of ``zarr.json``) is
    ``zarr.json``'s (taken for a user's file, it stayed in the output for good)."""
    key = ZARR_PARTIAL.sub("", path)
    if key != path and key.rpartition("/")[2] == "zarr":
        return f"{key}.json"
    return key


def written_by_us(entry: str, path: str) -> bool:
    """Whether the file at ``path`` inside our output's ``entry`` is one a run writes: anything
    in the state folder; in a level (an array) or a map (a group of levels), the keys Zarr
    writes for them (``zarr.json``, chunk files ``c/0/1``, zarr's temporary files of either),
    and the output's id file. A user's file put inside (notes in an array's folder, a Zarr
    store of the user's at ``0/annotations/cells.zarr``) is not, and is never removed."""
    if entry == STATE_DIR:
        return state_written(path)
    path = _written(path)
    if entry == ID_FILE[0] and re.fullmatch(_ID_WRITES, path):
        return True
    if _LEVEL.fullmatch(entry):  # a level: one array
        return bool(_ARRAY_KEY.fullmatch(path))
    # a map: a group of levels (a user's Zarr array nested anywhere deeper is not ours)
    level, _, key = path.partition("/")
    return path == "zarr.json" or bool(_LEVEL.fullmatch(level) and _ARRAY_KEY.fullmatch(key))


def ours_within(location: Location) -> Callable[[str, str], bool]:
    """:func:`written_by_us`, narrowed to the output at ``location``: a level or a map's level
    only up to the levels its record lists, a chunk key only within its array's chunk grid
    (``depth/7/zarr.json`` or ``0/c/99``, named like ours, are a user's: a seventh
    adversarial run saw them deleted). An array whose metadata is gone is judged by name."""
    params = provenance(location) or (run_record(location) or {}).get("params") or {}
    try:
        levels = int(params.get("levels") or 0)
    except (TypeError, ValueError):
        levels = 0
    grids: dict[str, tuple[int, ...] | None] = {}

    def grid(array: str) -> tuple[int, ...] | None:
        if array not in grids:  # read before the first of its files goes
            meta = _read_json(location.child(*array.split("/"), "zarr.json")) or {}
            try:
                chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
                grids[array] = tuple(-(-int(n) // int(c)) for n, c in
                                     zip(meta["shape"], chunks, strict=True))  # fmt: skip
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                grids[array] = None
        return grids[array]

    def ours(entry: str, path: str) -> bool:
        if entry == STATE_DIR or not written_by_us(entry, path):
            return entry == STATE_DIR and state_written(path)
        path = _written(path)
        if entry == ID_FILE[0] and re.fullmatch(_ID_WRITES, path):
            return True
        array, key = entry, path
        if not _LEVEL.fullmatch(entry):  # a map: its levels' arrays
            if path == "zarr.json":
                return True
            level, _, key = path.partition("/")
            array = f"{entry}/{level}"
        if int(array.rpartition("/")[2]) > levels:
            return False
        if key == "zarr.json":
            return True
        indices, shape = key.split("/")[1:], grid(array)
        if shape is None:
            return True
        return len(indices) == len(shape) and all(
            int(i) < n for i, n in zip(indices, shape, strict=True)
        )

    return ours


def remove_entries(
    folder: Location,
    names: Iterable[str],
    *,
    protect: Iterable[Location],
    keep_folder: bool,
    owned: Callable[[Location], str | None] = owned_output,
) -> list[str]:
    """Remove these entries of our output at ``folder`` (only our files within them); returns
    what was kept, and warns of it."""
    names = [n for n in names if folder.child(n).exists()]
    kept = remove_tree(folder, owned=owned, protect=protect, only=names,
                       keep_folder=keep_folder, ours_within=ours_within(folder))  # fmt: skip
    theirs = [k for k in kept if k != STATE_DIR]  # (ours: a clear keeps it on purpose)
    if theirs:
        # folder.url, not .spec: a staging folder carries the spec of dst.
        log.warning("kept %s in %s: fstack_dask did not write them", theirs, folder.url)
    return kept


def _in_state(entry: str, path: str) -> bool:
    return state_written(f"{entry}/{path}")


def remove_state(
    state: Location,
    names: Iterable[str],
    *,
    protect: Iterable[Location],
    keep_folder: bool = True,
) -> list[str]:
    """Remove these entries of the state folder ``state``, only what a run writes there
    (:func:`.ownership.state_written`): the markers first, then the record (none may
    outlive its data); returns what was kept, and warns of what is a user's."""
    if not state.exists():
        return []
    listed = set(state.listdir())
    order = {"done": 0, RUN_FILE: 1}
    only = sorted((n for n in names if n in listed and state_written(n)),
                  key=lambda n: order.get(n, 2))  # fmt: skip
    kept = remove_tree(state, owned=lambda _loc: None, protect=protect, only=only,
                       keep_folder=keep_folder, ours_within=_in_state)  # fmt: skip
    theirs = [k for k in kept if not state_written(k)]
    if theirs:
        log.warning("kept %s in %s: fstack_dask did not write them", theirs, state.url)
    return kept


def remove_output(
    folder: Location, *, protect: Iterable[Location], keep_folder: bool = False
) -> list[str]:
    """Remove the entries our record lists in ``folder``, and the folder when nothing else is
    left (unless ``keep_folder``), in two passes (the module docstring); returns the entries
    that were kept."""
    if not folder.exists():
        return []
    entries = recorded_entries(folder)
    if entries is None:
        raise PermissionError(f"refusing to delete {folder.url!r}: it is not an fstack_dask output")
    # (a fifth adversarial run: the id file went first, and a run killed then left a folder
    # every later run refused)
    proofs = {f"{STATE_DIR}/{RUN_FILE}", f"{STATE_DIR}/lock", "/".join(ID_FILE)}
    ours = ours_within(folder)
    first = remove_tree(folder, owned=owned_output, protect=protect,
                        only=sorted(entries - {"zarr.json"}), keep_folder=True,
                        ours_within=lambda entry, path: f"{entry}/{path}" not in proofs
                        and ours(entry, path))  # fmt: skip
    then = remove_tree(folder, owned=owned_output, protect=protect,
                       only=[STATE_DIR, ID_FILE[0], "zarr.json"], keep_folder=keep_folder,
                       ours_within=ours)  # fmt: skip
    # (entries beside ours, and the proofs, are listed by the second pass, if left; an
    # entry of ours is listed there too when the first kept a user's file inside it)
    inside = {k for k in first if "/" in k and k not in proofs}
    kept = sorted(inside | {k for k in then if not any(n.startswith(f"{k}/") for n in inside)})
    if kept:
        log.warning("kept %s in %s: fstack_dask did not write them", kept, folder.url)
    return kept


def unremovable(folder: Location, found: list[str] | None = None) -> str | None:
    """What keeps this user from removing the files our local output at ``folder`` holds of
    ours (a colleague's folder inside it, 755: an overwrite left the old output half
    removed), for one line; or None. A walk of stat calls alone, no reads; on an object
    store, which has no such permissions, none. (A user's folder beside our entries that
    cannot be moved into the new output is kept with the old one, and a warning says so.)
    The same walk appends to ``found`` what inside our arrays fstack_dask did not write
    (``0/annotations``, ``0/c/99``), where it goes through the whole output (``why`` None)."""
    entries = recorded_entries(folder) if folder.is_local else None
    if entries is None:
        return None
    why = sticky_blocked(folder.path, {*entries, "zarr.json"})  # a colleague's sticky dst
    if why is not None:
        return why
    ours = ours_within(folder)
    marks = marks_reader(folder.path)  # (a mark inside was met only once the new output was
    # in place: the old one left beside dst, the run's time spent on a warning)
    for entry in sorted({*entries, "zarr.json"}):
        top = os.path.join(folder.path, entry)
        if os.path.isdir(top) and not os.path.islink(top):
            why = _blocking(top, entry, "", ours, False, marks, found)[1]
            if why is not None:
                return why
        elif marks is not None and os.path.isfile(top) and not os.path.islink(top):
            locked = marks(top)  # (dst's own zarr.json marked: swapped, then left beside dst)
            if locked is not None:
                return Marked(f"may not remove its files: {locked}")
    return None


def theirs_in_objects(folder: Location, *, keys: Callable[[], dict] | None = None) -> list[str]:
    """What inside the arrays of our output at ``folder`` on an object store fstack_dask did
    not write (``0/annotations``, ``0/c/99/0``), as :func:`unremovable`'s walk finds it on a
    local disk: one listing of its keys (10,000 keys: ten requests to S3; on moto a few
    seconds, where the overwrite then copies each key, each a request). An overwrite went on
    over them: the previous output hidden beside dst with them, or, of an unfinished
    output, a user's key named like a chunk of the new grid overwritten. ``keys``: what
    gives that listing, where the caller lists dst once for several checks."""
    entries = None if folder.is_local else recorded_entries(folder)
    if entries is None:
        return []
    base, ours = folder.path.rstrip("/") + "/", ours_within(folder)
    found: set[str] = set()
    listing = keys() if keys is not None else folder.fs.find(folder.path, detail=True)
    for key, info in listing.items():
        entry, _, path = key[len(base) :].partition("/") if key.startswith(base) else ("", "", "")
        if entry in entries and entry != "zarr.json" and key == base + entry:
            # an object named as a folder of ours (``0``, ``.fstack_dask``), beside its keys: a
            # user's, which the removal of that folder's prefix deleted with it, exit 0
            found.add(entry)
            continue
        if entry not in entries or entry == STATE_DIR or not path:
            continue
        if path.endswith("/") and not is_marker(path, info.get("size")):
            found.add(f"{entry}/{path}")  # an object holding bytes, not a folder's marker
            continue
        if is_marker(path, info.get("size")) and _may_hold_ours(entry, path.rstrip("/")):
            continue  # the marker of a folder of ours (0/c/, the AWS console's): ours
        parts = path.split("/")
        folders = ("/".join(parts[:n]) for n in range(1, len(parts)))
        theirs = next((rel for rel in folders if not _may_hold_ours(entry, rel)), None)
        if theirs is not None or not ours(entry, path):
            found.add(f"{entry}/{theirs or path}")
    return sorted(found)


_CHUNK_FOLDER = re.compile(r"c(/(0|[1-9][0-9]*))*")  # a folder of Zarr v3's chunk keys


def _may_hold_ours(entry: str, rel: str) -> bool:
    """Whether the folder ``rel`` in our ``entry`` may hold files a run writes (as
    :func:`written_by_us` judges them): a user's folder inside a level (``0/annotations``,
    a colleague's, 700) was refused as "may not list" by an overwrite that keeps it anyway."""
    if not rel or entry == STATE_DIR:
        return rel in ("", "done")  # (a user's folder in the state folder: kept)
    if not _LEVEL.fullmatch(entry):  # a map: its levels' arrays
        level, _, rel = rel.partition("/")
        if not _LEVEL.fullmatch(level):
            return False
        if not rel:
            return True
    return bool(_CHUNK_FOLDER.fullmatch(rel))


class Marked(str):
    """What keeps our files from being removed that is a ``chattr`` mark (``+i``, ``+a``),
    which binds root too: cleared by ``chattr``, not by asking the owner."""


def _blocking(path: str, entry: str, rel: str, ours: Callable[[str, str], bool], count: bool,
              marks: Callable[[str], str | None] | None = None,
              found: list[str] | None = None):  # fmt: skip
    """(whether the folder at ``path`` is left empty once our files go, what blocks them).
    Its files are judged only where that matters (``count``: its parent may not be written;
    or it may not be written itself, or is marked; ``found``: a user's are collected there,
    by name alone): a walk of a writable output stats no file but asks ``marks`` of each
    (one ``statx``)."""
    if found is not None and entry == STATE_DIR:  # (a user's there moves with an overwrite)
        found = None
    if not _may_hold_ours(entry, rel):  # a user's folder (0/annotations): kept, whatever it is
        if found is not None:
            found.append(f"{entry}/{rel}")
        return False, None
    if not os.access(path, os.R_OK | os.X_OK):
        return False, permission_missing(path)
    writable = os.access(path, os.W_OK | os.X_OK)
    folder = os.stat(path)
    sticky = writable and _sticky_theirs(path)  # (os.access says "writable" there)
    marked = None if marks is None else marks(path)  # (os.access says "writable" to +a)
    look = count or not writable or sticky or marked is not None
    emptied, removes = True, False
    with os.scandir(path) as listing:
        for item in listing:
            name = f"{rel}/{item.name}" if rel else item.name
            theirs = sticky and sticky_keeps(folder, item.stat(follow_symlinks=False).st_uid)
            if (
                found is not None
                and not item.is_dir(follow_symlinks=False)
                and (item.is_symlink() or not ours(entry, name))
            ):
                found.append(f"{entry}/{name}")
            if item.is_dir(follow_symlinks=False):
                gone, why = _blocking(item.path, entry, name, ours, not writable, marks, found)
                if why is not None:
                    return False, why
                gone = gone and not theirs  # (its rmdir fails: it is kept, empty)
            elif not look and (marks is None or marks(item.path) is None):
                continue
            else:  # (a link is never ours)
                gone = not item.is_symlink() and ours(entry, name)
                if gone and theirs:
                    return False, _sticky_refusal(item.path, path)
                locked = marks(item.path) if gone and marks is not None else None
                if locked is not None:
                    return False, Marked(f"may not remove its files: {locked}")
            removes, emptied = removes or gone, emptied and gone
    if marked is not None and (removes or emptied):  # (emptied: its parent removes it)
        return False, Marked(f"may not remove its folders: {marked}")
    if removes and not writable:
        return False, permission_missing(path)
    return emptied, None


def _sticky_theirs(path: str) -> bool:
    """Whether the folder at ``path`` has the sticky bit (a /tmp-like shared folder) and is
    not this user's: there only a file's owner may remove it, whatever the folder's mode
    says (an overwrite removed what it could, then failed on a colleague's chunk file), or a
    process with CAP_FOWNER over its owner (``sticky_keeps``)."""
    st = os.stat(path)
    return bool(st.st_mode & stat.S_ISVTX) and st.st_uid != os.geteuid()


def sticky_blocked(folder: str, names: Iterable[str]) -> str | None:
    """What keeps this user from removing or replacing the entries ``names`` of the local
    ``folder`` where it has the sticky bit and is not this user's (each entry is then by its
    owner alone: os.access says "writable"), for one line; or None."""
    if not os.path.isdir(folder) or not _sticky_theirs(folder):
        return None
    st = os.stat(folder)
    for name in sorted(names):
        path = os.path.join(folder, name)
        if os.path.lexists(path) and sticky_keeps(st, os.lstat(path).st_uid):
            return _sticky_refusal(path, folder)
    return None


def _sticky_refusal(file: str, folder: str) -> str:
    st = os.stat(file, follow_symlinks=False)
    kind = "folder" if stat.S_ISDIR(st.st_mode) else "file"
    what, where = owner_and_mode(st), owner_and_mode(os.stat(folder), folder)
    return (
        f"may not remove the {kind} {file!r} ({what}) from the folder {folder!r} ({where}), "
        f"which has the sticky bit: only the {kind}'s owner may remove it there"
    )


def clear_output(folder: Location, *, protect: Iterable[Location]) -> None:
    """Empty our output of what its record says we wrote, keeping the folder and the state
    folder (which holds this run's lock)."""
    entries = recorded_entries(folder)
    if entries is None:
        raise PermissionError(f"refusing to clear {folder.spec!r}: it is not ours")
    # The markers vouch for data about to be removed: they go first, so that a marker
    # never outlives its block's data (a later run would skip that block).
    remove_state(OutputState(folder).folder, ["done"], protect=protect)
    remove_entries(folder, sorted(entries - {STATE_DIR}), protect=protect, keep_folder=True)


_CHECKSUMS = ("ETag", "md5Hash", "crc32c")  # what S3's and GCS's listings say of an object


def copy_of(folder: Location, original: Location) -> str | None:
    """None where every object under ``folder`` (on an object store) is a copy of the object
    at the same place in ``original``: the same size and checksum (S3's ETag, GCS's MD5), so
    that removing it loses nothing; else the reason it is not. A lock is no data: a copy of
    one need not match. (A copy made aside by an overwrite killed before it finished had no
    root ``zarr.json``, was never known as ours, and stayed for good: an adversarial run.)"""
    if folder.is_local:
        return "not on an object store (a local swap renames, it never copies)"
    fs = folder.fs
    copies = fs.find(folder.path, detail=True)
    originals = fs.find(original.path, detail=True)
    base, orig = folder.path.rstrip("/") + "/", original.path.rstrip("/") + "/"
    for key, info in copies.items():
        rel = key[len(base) :] if key.startswith(base) else None
        if rel is None:
            return f"{key!r} is not inside it"
        if rel == f"{STATE_DIR}/lock":
            continue
        match = originals.get(orig + rel)
        if match is None or match.get("size") != info.get("size"):
            return f"{rel!r} differs from {original.url!r}'s"
        sums = [name for name in _CHECKSUMS if info.get(name) and match.get(name)]
        if not sums or any(info[name] != match[name] for name in sums):
            return f"{rel!r} cannot be shown to be a copy of {original.url!r}'s"
    return None
