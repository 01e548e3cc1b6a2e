"""The destination's life: deciding what a run may do with ``dst``, preparing the folder it
writes into, and leaving ``dst`` in a clean state however the run ends.

=====================  =============================================================
dst is                 a run
=====================  =============================================================
absent                 creates it (its parent folder must exist)
an empty folder        writes into it
our unfinished output  continues it with ``resume``; starts over in place with
                       ``overwrite`` (there is no good output to protect)
our complete output    writes the new output *beside* it with ``overwrite`` and swaps
                       the two only once the new one is complete, so a failed run
                       leaves the old output intact; ``resume`` has nothing to do
anything else          is refused: a file, a folder with other content, any Zarr store
                       without our provenance
=====================  =============================================================

Every removal goes through :func:`~fstack_dask._locations.remove_tree`, which checks
ownership again right before deleting and removes only the entries our writer creates.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from ._locations import Location, remove_tree
from ._lock import DestinationLock, DestinationLockedError, live_lock, locked_message
from ._state import STATE_DIR, OutputState, classify, owned_output, provenance, run_record

__all__ = ["Destination", "Target", "our_entries"]

log = logging.getLogger(__name__)

STAGING = ".fstack-staging-"


def our_entries(names: Iterable[str]) -> list[str]:
    """The entries of an output folder that our writer creates (the rest is kept)."""
    return [
        n for n in names if n in ("zarr.json", "depth", "selectivity", STATE_DIR) or n.isdigit()
    ]


@dataclass
class Target:
    """Where a run writes, and what it must do when it ends."""

    output: Location  # the folder the arrays go into (dst, or a staging folder beside it)
    dst: Location
    mode: str  # "new", "empty", "replace", "resume", "staged"
    created: Location | None = None  # a folder this run created (removed if nothing finished)
    locks: list[DestinationLock] = field(default_factory=list)
    needs_create: bool = True

    @property
    def state(self) -> OutputState:
        return OutputState(self.output)

    @property
    def staged(self) -> bool:
        return self.output != self.dst


class Destination:
    """The checks and moves around one ``dst``; see the module docstring."""

    def __init__(self, dst: Location, *, protect: Iterable[Location] = ()):
        self.dst = dst
        self.protect = list(protect)
        self.kind = classify(dst)

    def what(self) -> str:
        return f"dst {self.dst.spec!r}"

    # -- before anything is written ------------------------------------------------------

    def check(self, *, overwrite: bool, resume: bool) -> str:
        """The mode this run will use, or an exception if ``dst`` must not be touched.

        Reads only. Modes: ``"new"``, ``"empty"``, ``"replace"``, ``"resume"``,
        ``"staged"``, ``"resume-staged"``, ``"complete"`` (resume of a finished output).
        """
        what, kind = self.what(), self.kind
        for place in self.protect:
            if self.dst.overlaps(place):
                inside = (
                    "is the source or lies inside it"
                    if place.contains(self.dst)
                    else ("contains the source")
                )
                raise ValueError(
                    f"{what} {inside} ({place.spec!r}); expected an output location outside "
                    "the input"
                )
        info = live_lock(OutputState(self.dst).lock) if kind in ("complete", "unfinished") else None
        if info is not None:
            raise DestinationLockedError(locked_message(what, info))
        if kind == "file":
            raise FileExistsError(
                f"{what} is an existing file; choose a folder path for the output"
            )
        if kind == "other":
            detail = (
                "a Zarr store"
                if self.dst.child("zarr.json").exists()
                or self.dst.child(".zgroup").exists()
                or self.dst.child(".zarray").exists()
                else "a folder with other content"
            )
            action = "resume into" if resume else "replace" if overwrite else "write into"
            raise FileExistsError(
                f"{what} exists and is {detail}, not an fstack_dask output; refusing to "
                f"{action} it (only fstack_dask outputs and empty folders are ever replaced): "
                "choose another dst"
            )
        if kind == "absent":
            parent = self.dst.parent_path()
            fs = self.dst.fs
            if self.dst.is_local and not os.path.isdir(parent):
                missing = "does not exist" if not os.path.lexists(parent) else "is not a folder"
                raise FileNotFoundError(
                    f"{what} cannot be created: its parent folder {parent!r} {missing}; create "
                    "it first (a typo in the path?)"
                )
            if self.dst.is_local and not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(f"{what} cannot be created: {parent!r} is not writable")
            del fs
            return "new"
        if kind == "empty":
            if self.dst.is_local and not os.access(self.dst.path, os.W_OK | os.X_OK):
                raise PermissionError(f"{what} is not writable")
            return "empty"
        if kind == "unfinished":
            if resume:
                return "resume"
            if overwrite:
                return "replace"
            raise FileExistsError(
                f"{what} holds an unfinished fstack_dask run; continue it with resume=True, "
                "or start over with overwrite=True"
            )
        # complete
        if resume:
            staged = self.staged_run()
            return "resume-staged" if staged is not None else "complete"
        if overwrite:
            return "staged"
        raise FileExistsError(f"{what} already exists; choose another path or pass overwrite=True")

    def staging_folders(self) -> list[Location]:
        """Our staging folders beside ``dst`` (from ``overwrite`` runs)."""
        prefix = f".{self.dst.name}{STAGING}"
        parent = Location(self.dst.spec, self.dst.protocol, self.dst.parent_path(),
                          self.dst.storage_options)  # fmt: skip
        try:
            names = parent.listdir()
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [parent.child(n) for n in names if n.startswith(prefix)]

    def staged_run(self) -> Location | None:
        """An interrupted ``overwrite`` run beside a complete ``dst``, if one can be resumed."""
        for folder in sorted(self.staging_folders(), key=lambda f: f.name):
            if run_record(folder) is not None and live_lock(OutputState(folder).lock) is None:
                return folder
        return None

    # -- taking dst ------------------------------------------------------------------------

    def take(self, mode: str) -> Target:
        """Create or claim the folder the run writes into and take the lock(s)."""
        what = self.what()
        target = Target(self.dst, self.dst, mode)
        try:
            if mode == "new":
                _make_folder(self.dst, what)
                target.created = self.dst
                self._lock(target, self.dst)
            elif mode in ("empty", "replace", "resume", "complete"):
                self._lock(target, self.dst)
                if self.kind != classify(self.dst) and mode != "empty":
                    raise DestinationLockedError(f"{what} changed while this run started")
                if mode == "replace":
                    self.remove_our_entries(self.dst, keep_state=True)
                if mode in ("resume", "complete"):
                    target.needs_create = provenance(self.dst) is None
                    if target.needs_create:  # killed while creating: start the structure again
                        self.remove_our_entries(self.dst, keep_state=True)
            elif mode in ("staged", "resume-staged"):
                self._lock(target, self.dst)
                staging = self.staged_run() if mode == "resume-staged" else None
                self.remove_stale_staging(keep=staging)
                if mode == "resume-staged":
                    if staging is None:
                        raise FileExistsError(f"{what}: the interrupted overwrite is gone")
                    target.output = staging
                    self._lock(target, staging)
                    target.needs_create = provenance(staging) is None
                    if target.needs_create:
                        self.remove_our_entries(staging, keep_state=True)
                else:
                    staging = self.dst.sibling(f".{self.dst.name}{STAGING}{uuid.uuid4().hex[:12]}")
                    _make_folder(staging, what)
                    target.output, target.created = staging, staging
                    self._lock(target, staging)
            else:  # pragma: no cover - modes come from check()
                raise ValueError(f"unknown mode {mode!r}")
        except BaseException:
            self.release(target)
            if target.created is not None:
                with contextlib.suppress(Exception):
                    self.remove(target.created)
            raise
        return target

    def _lock(self, target: Target, folder: Location) -> None:
        lock = DestinationLock(OutputState(folder).lock, self.what())
        lock.acquire()
        target.locks.append(lock)

    @staticmethod
    def release(target: Target) -> None:
        for lock in reversed(target.locks):
            lock.release()
            folder = lock.lock.parent_path()
            if lock.lock.is_local:  # a state folder that held only the lock goes with it
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
        target.locks.clear()

    # -- removing ----------------------------------------------------------------------------

    def remove(
        self, folder: Location, *, keep_folder: bool = False, written_by_us: bool = False
    ) -> list[str]:
        """Remove our entries of ``folder``, and the folder when nothing else is left (unless
        ``keep_folder``); returns the entries that were not ours and were kept.

        ``written_by_us``: this run created the folder, or found it empty, so the entries
        with our names are its own even before they mark the folder as an output (a run
        that failed while writing its run record)."""
        if not folder.exists():
            return []
        names = our_entries(folder.listdir())
        owned = (lambda _loc: None) if written_by_us else owned_output
        kept = remove_tree(
            folder, owned=owned, protect=self.protect, only=names, keep_folder=keep_folder
        )
        if kept:
            # folder.url, not .spec: a staging folder carries the spec of dst.
            log.warning("kept %s in %s: fstack_dask did not write them", kept, folder.url)
        return kept

    def remove_our_entries(self, folder: Location, *, keep_state: bool) -> None:
        """Empty an output of what we wrote, keeping the folder (and our state if asked)."""
        reason = owned_output(folder)
        if reason is not None:
            raise PermissionError(f"refusing to clear {folder.spec!r}: {reason}")
        done = OutputState(folder).done_folder
        if keep_state and done.exists():
            # The markers vouch for data about to be removed: they go first, so that a marker
            # never outlives its block's data (a later run would skip that block).
            remove_tree(done, owned=lambda _loc: None, protect=self.protect)
        for name in our_entries(folder.listdir()):
            if keep_state and name == STATE_DIR:
                continue
            entry = folder.child(name)
            remove_tree(entry, owned=lambda _loc: None, protect=self.protect)

    def remove_stale_staging(self, keep: Location | None = None) -> None:
        for folder in self.staging_folders():
            if folder == keep:
                continue
            if live_lock(OutputState(folder).lock) is None and run_record(folder) is not None:
                with contextlib.suppress(Exception):
                    self.remove(folder)

    # -- ending ----------------------------------------------------------------------------

    def swap_in(self, target: Target) -> None:
        """Put a complete staged output in dst's place, then remove the old output."""
        for lock in target.locks:
            lock.stop_heartbeat()
        old = _exchange(target.output, self.dst)
        target.output = self.dst
        target.created = None
        # Files a user put into the old output stay where they were put.
        foreign = [n for n in old.listdir() if n not in our_entries([n])]
        for name in foreign:
            if not self.dst.child(name).exists():
                _move(old.child(name), self.dst.child(name))
        with contextlib.suppress(FileNotFoundError):
            self.remove(old)


def _make_folder(folder: Location, what: str) -> None:
    """Create ``folder`` exclusively (of two runs starting together, exactly one goes on)."""
    if not folder.is_local:
        folder.fs.makedirs(folder.path, exist_ok=True)
        return
    try:
        os.mkdir(folder.path)
    except FileExistsError:
        raise DestinationLockedError(
            f"{what} was created by another run starting at the same time; a second run "
            "into the same dst is refused"
        ) from None
    except OSError as exc:
        from ._errors import is_no_space

        if is_no_space(exc):
            raise
        raise PermissionError(f"{what} cannot be created: {exc.strerror or exc}") from exc


def _move(src: Location, dst: Location) -> None:
    if src.is_local:
        os.rename(src.path, dst.path)
    else:
        src.fs.mv(src.path, dst.path, recursive=True)


_RENAME_EXCHANGE = 2


def _exchange(new: Location, dst: Location) -> Location:
    """Swap two folders; returns where the old content of ``dst`` now is.

    On Linux one atomic ``renameat2(RENAME_EXCHANGE)``; elsewhere (or where the filesystem
    does not support it) two renames, with the old output moved aside first.
    """
    if new.is_local and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        fn = getattr(libc, "renameat2", None)
        if fn is not None:
            at_fdcwd = -100
            rc = fn(at_fdcwd, os.fsencode(new.path), at_fdcwd, os.fsencode(dst.path),
                    _RENAME_EXCHANGE)  # fmt: skip
            if rc == 0:
                from ._write import fsync_dir

                fsync_dir(os.path.dirname(dst.path))
                return new
    aside = dst.sibling(f".{dst.name}{STAGING}old-{uuid.uuid4().hex[:12]}")
    if new.is_local:
        os.rename(dst.path, aside.path)
        os.rename(new.path, dst.path)
    else:
        fs = dst.fs
        fs.mv(dst.path, aside.path, recursive=True)
        fs.mv(new.path, dst.path, recursive=True)
    return aside
