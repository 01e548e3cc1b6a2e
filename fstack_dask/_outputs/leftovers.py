"""What an overwrite leaves beside ``dst`` when it is cut short, and what becomes of it.

An overwrite writes the new output into a staging folder beside dst,
``.NAME.fstack-staging-`` and 12 hex digits, and swaps the two once it is complete; the
previous output is then beside dst (``...-staging-old-`` and 12 hex digits on an object
store, where the swap copies) until it is removed. A run killed on the way leaves:

=====================================  ===========================================================
beside dst                             the next run into dst
=====================================  ===========================================================
a staging folder with its run record   ``resume``: continues it (:func:`staged_run`); otherwise
                                       removed (:func:`remove_stale`)
the previous output, complete          entries a user had put into it go back into dst, then it
                                       is removed (:func:`recover`); one that cannot be moved is
                                       named in a warning and the folder kept
the previous output, and no dst        renamed back to dst (:func:`restore`): killed between the
(two-rename swap, killed between)      two renames of a swap without RENAME_EXCHANGE (NFS); on an
                                       object store dst may hold copies of some of the staged
                                       objects (the copy and its undo failed): they go first
on an object store, a partial copy     removed where every object is a copy of dst's at the same
of dst (killed while copying aside)    place, else kept
an empty staging folder (killed as     removed by the next overwrite (:func:`remove_stale`)
it was created)
=====================================  ===========================================================

A local one this user may not change (a colleague's) is left as it is, with a warning.
Only folders with the names runs give are considered: a user's output at
``.NAME.fstack-staging-nhsize5`` is not one (an eighth adversarial run).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable

from .._locations import Location, change_locked, owner_and_mode, remove_tree
from . import folders
from .folders import STAGING
from .lock import DestinationLock
from .ownership import (
    ID_FILE,
    STATE_DIR,
    claim_entry,
    classify,
    foreign_entries,
    provenance,
    provenance_attribute,
    recorded_entries,
    run_record,
    state_written,
)
from .removal import copy_of, remove_output, theirs_in_objects, unremovable
from .staleness import live_lock
from .state import OutputState

__all__ = [
    "give_back",
    "keep_theirs_inside",
    "put_aside",
    "recover",
    "remove_remains",
    "remove_stale",
    "restore",
    "staged_run",
    "staging_folders",
]

log = logging.getLogger(__name__)


def staging_folders(dst: Location) -> list[Location]:
    """The staging folders of overwrites beside ``dst``: only the names runs give them,
    ``.NAME.fstack-staging-`` and 12 hex digits, or ``old-`` and 12."""
    prefix = f".{dst.name}{STAGING}"
    ours = re.compile(re.escape(prefix) + r"(old-)?[0-9a-f]{12}")
    parent = Location(dst.spec, dst.protocol, dst.parent_path(), dst.storage_options)
    try:
        names = parent.listdir()
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [n for n in names if ours.fullmatch(n)]
    if dst.is_local:  # a case-insensitive filesystem (exFAT: a microscope's USB drive) and dst
        # spelled Out.zarr: the staging folders of runs into out.zarr, hidden beside it, were
        # not seen ("already complete; nothing to resume" beside an interrupted overwrite)
        found += [n for n in names if _same_but_spelled(parent, n, prefix, names, ours)]
    # each by its name as dst spells it, which the filesystem takes for the same folder
    return [f for f in (parent.child(prefix + n[len(prefix):]) for n in found)
            if _readable(f, dst)]  # fmt: skip


def _same_but_spelled(parent: Location, name: str, prefix: str, names: list[str],
                      ours: re.Pattern) -> bool:  # fmt: skip
    """Whether ``name`` is a staging folder of dst's spelled otherwise (``.out.zarr...`` for a
    dst spelled ``Out.zarr``) on a filesystem that takes both spellings for one folder: only
    the filesystem says so, finding dst's spelling that its listing lacks (on one that tells
    case, ``.OUT.zarr...`` is another output's)."""
    spelled = prefix + name[len(prefix) :]
    if spelled == name or spelled in names or not ours.fullmatch(spelled):
        return False
    if name[: len(prefix)].casefold() != prefix.casefold():
        return False
    # (not its inode: exfat-fuse gives each spelling its own)
    return os.path.lexists(os.path.join(parent.path, spelled))


_told: set[str] = set()  # the folders a warning named already (once a process)


def _readable(folder: Location, dst: Location) -> bool:
    """Whether this run may look into and change the local staging ``folder``: a colleague's
    (their overwrite of the same dst, killed; mode 700) refused every --resume and --overwrite
    with "permission denied: this user may not enter the folder ..." (mode 755 with a run
    record: a --resume of the complete dst tried to continue it, "may not create 'lock...'").
    A run does not need it: it is left as it is, never removed, and a warning says so once."""
    if not folder.is_local or os.access(folder.path, os.R_OK | os.W_OK | os.X_OK):
        return True
    if folder.path not in _told:
        _told.add(folder.path)
        try:
            whose = f" ({owner_and_mode(os.stat(folder.path), folder.path)})"
        except OSError:
            whose = ""
        log.warning("%s%s, an overwrite's staging folder beside %s, may not be changed by "
                    "this user; this run does not need it and leaves it as it is (its owner may "
                    "remove it)", folder.url, whose, dst.spec)  # fmt: skip
    return False


def staged_run(dst: Location, *, locked_too: bool = False) -> Location | None:
    """An interrupted ``overwrite`` run beside a complete ``dst``, if one can be resumed
    (``locked_too``: or one whose lock looks held, not watched for up to a minute as a run
    does before taking it over; ``info`` shows the lock's age)."""
    for folder in sorted(staging_folders(dst), key=lambda f: f.name):
        if run_record(folder) is None:
            continue
        if not locked_too and live_lock(OutputState(folder).lock) is not None:
            continue
        attrs = provenance(folder)
        if attrs is not None and not folder.child("0", "zarr.json").exists():
            continue  # its removal was cut short (the record goes last): not resumable
        if attrs is None and not folder.is_local and copy_of(folder, dst) is None:
            # what an object store's swap killed after its whole copy into dst left (its
            # zarr.json goes first): the first --resume took it for a run, removed it as a
            # copy of dst (recover) and failed: "the interrupted overwrite is gone"
            continue
        return folder
    return None


def remove_stale(dst: Location, *, protect: Iterable[Location], keep: Location | None) -> None:
    """Remove interrupted overwrites beside dst but ``keep`` (only their recorded entries),
    and empty staging folders: a run killed right after creating one (under dst's lock, which
    the caller now holds) left it beside dst for good."""
    for folder in staging_folders(dst):
        if folder == keep:
            continue
        if folder.is_local:
            _empty_cut_short(folder)
            with contextlib.suppress(OSError):  # (only an empty one: rmdir)
                os.rmdir(folder.path)
                continue
        if live_lock(OutputState(folder).lock) is not None:
            continue
        if run_record(folder) is not None:
            with contextlib.suppress(Exception):
                remove_output(folder, protect=protect)
        elif remove_remains(folder):
            continue
        elif folder.is_local and provenance(folder) is None:
            _warn_kept_claim(folder, dst)


def remove_remains(folder: Location) -> bool:
    """Remove what a removal of one of our outputs killed between its last two deletions left
    in ``folder`` (a staging folder, a TIFF's working store: folders named as only runs name
    them), and the folder: the root ``zarr.json`` with our provenance, and the id file's folder
    ``0``, empty (the id file went just before). Without its id file the ``zarr.json`` was
    taken for a user's copy of our attributes: kept for good, said of as "which fstack_dask
    did not write" by every overwrite, and a TIFF dst refused to every run ("move out what it
    holds"). Local folders only; True where they were removed."""
    if not folder.is_local or os.path.islink(folder.path):
        return False  # (a link, to scratch say, leads to a folder that may be a user's)
    try:
        names = sorted(os.listdir(folder.path))
        empty = ID_FILE[0] not in names or (
            not os.path.islink(folder.child(ID_FILE[0]).path)
            and not os.listdir(folder.child(ID_FILE[0]).path)
        )
    except OSError:
        return False
    if names not in (["zarr.json"], [ID_FILE[0], "zarr.json"]) or not empty:
        return False
    if provenance_attribute(folder) is None or os.path.islink(folder.child("zarr.json").path):
        return False
    with contextlib.suppress(OSError):
        if ID_FILE[0] in names:
            os.rmdir(folder.child(ID_FILE[0]).path)
        os.unlink(folder.child("zarr.json").path)
        os.rmdir(folder.path)
        log.info("removed %s, what the removal of an output cut short left", folder.url)
        return True
    return False


def _empty_cut_short(folder: Location) -> None:
    """Empty the state folder of a local staging folder whose run was killed while claiming
    it, before its run record (:func:`.ownership.classify`'s "claimed": SIGKILL while taking its
    lock): it kept the staging folder beside dst for good. Not a live lock; the done folder
    only while empty (rmdir)."""
    if classify(folder) != "claimed" or live_lock(OutputState(folder).lock) is not None:
        return
    state = os.path.join(folder.path, STATE_DIR)
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(state), key=lambda n: n == "lock"):  # the lock last
            if not claim_entry(folder.child(STATE_DIR), name):  # (a user's, put there since
                continue  # the folder was judged: it was unlinked with the rest)
            path = os.path.join(state, name)
            os.rmdir(path) if name == "done" else os.unlink(path)
        os.rmdir(state)


def _warn_kept_claim(folder: Location, dst: Location) -> None:
    """Name a staging folder beside dst, neither a run nor an output, that a user's file
    keeps there (``.fstack_dask/notes.txt`` put into the claim of an overwrite killed as it
    began): it stayed hidden, unnamed."""
    theirs = [n for n in folder.listdir() if n != STATE_DIR]
    with contextlib.suppress(OSError):
        state = folder.child(STATE_DIR)
        theirs += [f"{STATE_DIR}/{n}" for n in state.listdir() if not claim_entry(state, n)]
    log.warning("%s, a staging folder an overwrite of %s cut short left beside it, is kept: "
                "it holds %s, which fstack_dask did not write; move that out of it, then remove "
                "it: rm -r %r", folder.url, dst.spec,
                ", ".join(map(repr, sorted(theirs)[:3])) or "what fstack_dask did not write",
                folder.url)  # fmt: skip


def recover(dst: Location, *, protect: Iterable[Location]) -> None:
    """Finish what an overwrite killed after its swap left behind: the previous output beside
    dst (complete, without run record), whose entries a user had put into it go back into dst
    and whose own entries are removed; and on an object store a partial copy of dst."""
    if not dst.exists() or recorded_entries(dst) is None:
        return
    for folder in staging_folders(dst):
        attrs = provenance(folder)
        if attrs is None and not folder.is_local and copy_of(folder, dst) is None:
            # the previous output's copy aside, cut short (dst itself was kept whole)
            with contextlib.suppress(Exception):
                remove_tree(folder, owned=lambda f: copy_of(f, dst), protect=protect)
                log.info("removed %s, a partial copy of dst left by an interrupted overwrite",
                         folder.url)  # fmt: skip
            continue
        if attrs is None or attrs.get("complete") is not True or run_record(folder):
            continue  # a staged run: resumable, or being finished by its run
        if live_lock(OutputState(folder).lock) is not None:
            continue
        if give_back(folder, dst, restored=True, protect=protect) or keep_theirs_inside(folder):
            continue  # kept whole, and said so again by every run until it is moved
        with contextlib.suppress(Exception):
            remove_output(folder, protect=protect)


def restore(dst: Location, *, protect: Iterable[Location] = ()) -> bool:
    """Put back a dst that an overwrite moved aside (``...-staging-old-``) and was killed
    before moving the new output in: the old output, complete and ours, was hidden and dst
    missing (locally), or on an object store holding only copies of some of the staged
    output's or the old output's objects (the swap's copy failed, and so did its undo: a
    network fault). Only where exactly one such folder is there, the staged output beside
    it; then a resume swaps the staged output in, as after any interrupted overwrite."""
    found = _restorable(dst)
    if found is None:
        return False
    if not dst.is_local:
        return _restore_copied(dst, protect)
    old = found[0]
    if any(old.overlaps(place) for place in protect):  # (the source kept inside the hidden
        # previous output was moved into dst with it)
        return False
    try:  # never over a dst created meanwhile (a rename would replace an empty folder)
        if not folders.renameat2(old.path, dst.path, folders.RENAME_NOREPLACE):
            os.rename(old.path, dst.path)
    except OSError:
        return False
    log.warning("restored %s from %s, where an overwrite cut short while swapping had left "
                "it", dst.spec, old.url)  # fmt: skip
    return True


def put_aside(dst: Location) -> tuple[Location, list[Location]] | None:
    """The previous output that :func:`restore` would put back into the missing dst, and the
    staged outputs beside it (an overwrite cut short between its two renames), or None."""
    return _restorable(dst)


def _restorable(dst: Location, *, locked: bool = False) -> tuple[Location, list[Location]] | None:
    """The old output :func:`restore` puts back into dst and the staged outputs beside it,
    or None (``locked``: this run holds dst's lock)."""
    if os.path.lexists(dst.path) if dst.is_local else provenance(dst) is not None:
        return None
    found = staging_folders(dst)
    old = [f for f in found if f.name.startswith(f".{dst.name}{STAGING}old-")]
    if len(old) != 1:
        return None
    # Between the two renames the staged output is still beside it; without it, the swap was
    # done and dst removed since (by the user: a fresh run put the old output back, then
    # refused dst as existing)
    staged = [f for f in found if f not in old and run_record(f) is not None]
    if not staged:
        return None
    attrs = provenance(old[0])
    if attrs is None or attrs.get("complete") is not True or run_record(old[0]) is not None:
        return None
    if any(live_lock(OutputState(f).lock) is not None
           for f in (*([] if locked else [dst]), *old, *staged)):  # fmt: skip
        return None  # (an overwrite swapping now: its locks, dst's too, are still fresh)
    return old[0], staged


def _restore_copied(dst: Location, protect: Iterable[Location]) -> bool:
    """:func:`restore` on an object store, under dst's lock (two runs restoring at once: the
    second removed the first's copies as "copies of the old output", then moved what was
    left of it, nothing, into dst: the old output was lost): what dst holds goes where each
    of its objects is a copy of one at the same place in the staged output, or in the old
    one (nothing else is ever removed), then the old output is moved back."""
    lock = DestinationLock(OutputState(dst).lock, f"dst {dst.spec!r}")
    try:
        lock.acquire()  # (a stale one, the killed run's, is taken over)
    except Exception:  # (another run restores it, or swaps: it is left to that run)
        return False
    try:
        found = _restorable(dst, locked=True)  # as found before the lock, still?
        if found is None:
            return False
        old, staged = found
        originals = [f for f in (*staged, old) if copy_of(dst, f) is None]
        if not originals:
            return False
        mine = f"{STATE_DIR}/lock"  # (its own lock stays till the old output is back)
        remove_tree(dst, owned=lambda f: copy_of(f, originals[0]), protect=protect,
                    only=dst.listdir(), keep_folder=True,
                    ours_within=lambda entry, path: f"{entry}/{path}" != mine)  # fmt: skip
        stale = OutputState(old).lock  # a copy would date it now, live again (a swap before
        # 2026-12-06 copied dst's lock aside; one now leaves it in dst)
        if stale.exists():
            stale.fs.rm_file(stale.path)
        folders.move(old, dst)
    except Exception:
        return False
    finally:
        lock.release()
    log.warning("restored %s from %s, where an overwrite cut short while swapping had left "
                "it", dst.spec, old.url)  # fmt: skip
    return True


def _how_to_move(entry: Location, exc: OSError) -> str:
    """What lets ``entry`` be moved: its ``chattr`` mark cleared (``chmod u+w`` was all a
    marked file was told, which moves it no more), or its folder made writable."""
    if not isinstance(exc, PermissionError):
        return ""
    locked = change_locked(entry.path) if entry.is_local else None
    if locked is not None:
        return f" once no longer marked ({locked})"
    return " (a read-only folder moves once it may be written: chmod u+w)"


def give_back(old: Location, dst: Location, *, restored: bool = False,
              protect: Iterable[Location] = ()) -> list[str]:  # fmt: skip
    """Move the entries a user put into our previous output at ``old`` back into ``dst``;
    returns those that could not be moved, each named in a warning. (One that could not, a
    read-only folder, failed every later overwrite: an eighth adversarial run.) One that is,
    holds or lies in a ``protect`` place (this run's source) is not moved."""
    stuck = []
    for name in [*foreign_entries(old), *_theirs_in_state(old)]:
        src, to = old.child(*name.split("/")), dst.child(*name.split("/"))
        if to.exists():  # (a user's of that name put into dst meanwhile: it was left
            # hidden, unnamed, and the previous output removed around it)
            stuck.append(name)
            log.warning("%r, which was in %s, is left in %s with the previous output, which "
                        "is kept: dst holds another of that name; move it yourself from %r",
                        name, dst.spec, old.url, src.url)  # fmt: skip
            continue
        if any(src.overlaps(place) for place in protect):  # (a source kept in
            # the previous output was moved into dst while the run read it)
            stuck.append(name)
            log.warning("%r, which was in %s, is this run's source: it is left in %s with the "
                        "previous output", name, dst.spec, old.url)  # fmt: skip
            continue
        try:
            if to.is_local and name.startswith(f"{STATE_DIR}/"):  # (dst's may be gone)
                os.makedirs(os.path.dirname(to.path), exist_ok=True)
            folders.move(src, to)
        except OSError as exc:
            stuck.append(name)
            log.warning(
                "%r, which was in %s, could not be moved back into it (%s): it is in %s with "
                "the previous output, which is kept; move it yourself: mv %r %r%s",
                name, dst.spec, exc.strerror or exc, old.url, src.url, to.url,
                _how_to_move(src, exc),
            )  # fmt: skip
            continue
        if restored:
            log.warning("restored %s into %s (left by an interrupted overwrite)", name, dst.spec)
    return stuck


def _theirs_in_state(old: Location) -> list[str]:
    """What a user put into the state folder of our output at ``old`` (``.fstack_dask/notes.txt``,
    ``.fstack_dask/done/notes.txt``), as paths in the output: an overwrite that swapped the
    output left it in the previous one, hidden beside dst (warned, kept for good)."""
    state = old.child(STATE_DIR)
    if _linked(state):  # a link to a user's folder elsewhere: its files are theirs, there (an
        # overwrite moved them out of it into the new output's state folder)
        return []
    try:
        names = state.listdir()
    except (FileNotFoundError, NotADirectoryError):
        return []
    theirs = [f"{STATE_DIR}/{n}" for n in sorted(names) if not state_written(n)]
    if "done" in names and state.child("done").isdir() and not _linked(state.child("done")):
        done = state.child("done").listdir()
        theirs += [f"{STATE_DIR}/done/{n}" for n in sorted(done) if not state_written(f"done/{n}")]
    return theirs


def keep_theirs_inside(old: Location) -> list[str]:
    """What a user put inside the arrays of our previous output at ``old``
    (``0/annotations/x.csv``; an overwrite of an output holding such files is refused before
    it runs, so put there while it ran): the previous output is kept whole, named in a
    warning (its chunks were removed around them, the files left in a hidden folder named
    only as "kept ... : fstack_dask did not write them"; on an object store too)."""
    found: list[str] = theirs_in_objects(old)  # (a walk of names where local)
    if old.is_local:
        unremovable(old, found)
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        log.warning("%s%s, which fstack_dask did not write, are inside the arrays of the previous "
                    "output, kept whole in %s beside the new one: move them out of it, then "
                    "remove it: rm -r %r", ", ".join(map(repr, found[:3])), more, old.url,
                    old.url)  # fmt: skip
    return found


def _linked(location: Location) -> bool:
    return location.is_local and os.path.islink(location.path)
