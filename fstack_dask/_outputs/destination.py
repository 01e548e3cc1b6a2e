"""The destination's life after its checks (:mod:`.destination_checks`): claiming the folder
a run writes into, and leaving ``dst`` in a clean state however the run ends.

Nothing is decided by a check that a later step trusts blindly. A folder is *claimed* by an
exclusive create: ``dst`` itself when it is new, the state folder ``.fstack_dask`` inside an
empty ``dst`` (and the folder is listed again once it is ours), the staging folder of an
overwrite; the lock is taken before an existing output is touched, and its kind is checked
again under the lock. What is removed is what the output's record says fstack_dask wrote
(:func:`~fstack_dask._outputs.ownership.recorded_entries`), through
:func:`~fstack_dask._locations.remove_tree`, which checks ownership again right before it
deletes. Anything else inside an output (a user's ``notes.txt`` or ``2024/``) is kept, moved
along with an overwrite, or, where this run would write an entry of that name, the run is
refused before it starts.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from .._errors import DestinationLockedError, interrupted_leaving, interruption_behind
from .._locations import Location, change_locked, remove_tree
from . import folders, inplace, leftovers
from .destination_checks import DestinationChecks
from .folders import STAGING
from .lock import DestinationLock, Lease, release_all
from .ownership import (
    STATE_DIR,
    claim_entry,
    classify,
    owned_output,
    provenance,
    run_record,
)
from .removal import clear_output, remove_entries, remove_output, remove_state
from .state import OutputState
from .write import fsync_dir

__all__ = ["Destination", "Target"]

log = logging.getLogger(__name__)


@dataclass
class Target:
    """Where a run writes, what it claimed, and what it must undo when it fails."""

    output: Location  # the folder the arrays go into (dst, or a staging folder beside it)
    dst: Location
    mode: str  # "new", "empty", "claimed", "replace", "resume", "staged", "resume-staged",
    # "complete"
    entries: tuple[str, ...] = ()  # the top-level entries this run writes
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: list[Location] = field(default_factory=list)  # folders this run created
    locks: list[DestinationLock] = field(default_factory=list)
    needs_create: bool = True

    @property
    def state(self) -> OutputState:
        return OutputState(self.output)

    @property
    def staged(self) -> bool:
        return self.output != self.dst

    @property
    def lease(self) -> Lease:
        """The lock of the folder this run writes into, for its tasks to check."""
        return self.locks[-1].lease

    def check_lease(self) -> None:
        for lock in self.locks:
            lock.check()


class Destination(DestinationChecks):
    """The checks and moves around one ``dst``; see the module docstring."""

    # -- taking dst ------------------------------------------------------------------------

    def take(self, mode: str) -> Target:
        """Claim the folder the run writes into and take the lock(s) (see the module
        docstring); on failure, undo exactly what this call created."""
        what = self.what()
        target = Target(self.dst, self.dst, mode, self.entries)
        try:
            if mode == "new":
                folders.make_folder(self.dst, what)
                target.created.append(self.dst)
                if self.dst.is_local and self.looks_like and os.path.exists(self.looks_like):
                    folders.take_on_looks(self.dst.path, self.looks_like)
                self._claim(target, self.dst)
            elif mode == "empty":
                self._claim(target, self.dst)
                others = [n for n in self.dst.listdir() if n != STATE_DIR]
                if others:  # it was empty when checked: something else is writing there
                    raise FileExistsError(
                        f"{what} was empty when this run started and now holds "
                        f"{', '.join(map(repr, others[:3]))}; refusing to write into it "
                        "(nothing was written)"
                    )
            elif mode == "claimed":  # a killed run's claim: take it over, then as if empty
                self._lock(target, self.dst)
                if classify(self.dst) != "claimed":
                    raise DestinationLockedError(f"{what} changed while this run started")
                target.created.append(self.dst.child(STATE_DIR))
                state = OutputState(self.dst).folder
                for name in state.listdir():  # (asked again: a user's put there meanwhile)
                    if name != "lock" and claim_entry(state, name):
                        remove_tree(state.child(name), owned=lambda _loc: None,
                                    protect=self.protect)  # fmt: skip
            elif mode in ("replace", "resume", "complete"):
                self._lock(target, self.dst)
                if self.kind != classify(self.dst):
                    raise DestinationLockedError(f"{what} changed while this run started")
                self.recover()
                if mode == "replace":
                    self._refuse_collisions()
                    self._clear_for_overwrite()
                if mode == "complete":  # none beside it is resumable: what is left goes
                    self.remove_stale_staging()
                if mode in ("resume", "complete"):
                    target.needs_create = provenance(self.dst) is None
                    if target.needs_create:  # killed while creating: start the structure again
                        self.clear(self.dst)
            elif mode in ("staged", "resume-staged"):
                self._lock(target, self.dst)
                self.recover()
                staging = self.staged_run() if mode == "resume-staged" else None
                self.remove_stale_staging(keep=staging)
                if mode == "resume-staged":
                    if staging is None:
                        raise FileExistsError(f"{what}: the interrupted overwrite is gone")
                    target.output = staging
                    self._lock(target, staging)
                    target.needs_create = provenance(staging) is None
                    if target.needs_create:
                        self.clear(staging)
                else:
                    self._refuse_collisions()
                    staging = self.dst.sibling(f".{self.dst.name}{STAGING}{uuid.uuid4().hex[:12]}")
                    folders.make_folder(staging, what)
                    target.created.append(staging)  # at once: a SIGTERM next left it for good
                    if staging.is_local:  # it will replace dst
                        folders.take_on_looks(staging.path, self.dst.path)
                    target.output = staging
                    self._claim(target, staging)
            else:  # pragma: no cover - modes come from check()
                raise ValueError(f"unknown mode {mode!r}")
        except BaseException:
            self.undo_take(target)
            raise
        return target

    def _claim(self, target: Target, folder: Location) -> None:
        """Create ``folder``'s state folder exclusively (of two runs, one goes on) and lock."""
        folders.make_folder(folder.child(STATE_DIR), self.what())
        target.created.append(folder.child(STATE_DIR))
        self._take_lock(target, folder)

    def _lock(self, target: Target, folder: Location) -> None:
        """Lock an existing output (its state folder is created if a finished run removed it)."""
        state = folder.child(STATE_DIR)
        if not state.exists():
            folders.make_folder(state, self.what())
            target.created.append(state)
        self._take_lock(target, folder)

    def _take_lock(self, target: Target, folder: Location) -> None:
        lock = DestinationLock(OutputState(folder).lock, self.what())
        lock.acquire()
        target.locks.append(lock)

    @staticmethod
    def release(target: Target) -> None:
        """Release every lock, whatever arrives meanwhile (:func:`.lock.release_all`)."""

        def tidy(lock: DestinationLock) -> None:
            with contextlib.suppress(OSError):  # a state folder that held only the lock goes
                folder = lock.lock.parent_path()
                if lock.lock.is_local:
                    os.rmdir(folder)
                elif _keeps_folders(lock.lock.fs) and not lock.lock.fs.ls(folder, detail=False):
                    lock.lock.fs.rmdir(folder)

        try:
            release_all(reversed(target.locks), tidy)
        finally:
            target.locks.clear()

    def undo_take(self, target: Target) -> None:
        """Remove what a failed :meth:`take` created: its locks, then its folders while they
        are empty (only ``rmdir``: whatever appeared inside them is kept)."""
        self.release(target)
        for folder in reversed(target.created):
            with contextlib.suppress(OSError):
                if folder.is_local:
                    os.rmdir(folder.path)
                elif not folder.listdir():
                    folder.fs.rmdir(folder.path)
        target.created.clear()

    # -- removing ----------------------------------------------------------------------------

    def _remove_entries(
        self, folder: Location, names: Iterable[str], *, keep_folder: bool, owned=owned_output
    ) -> list[str]:
        return remove_entries(folder, names, protect=self.protect, keep_folder=keep_folder,
                              owned=owned)  # fmt: skip

    def remove(self, folder: Location, *, keep_folder: bool = False) -> list[str]:
        """Remove our output at ``folder`` (:func:`.removal.remove_output`)."""
        return remove_output(folder, protect=self.protect, keep_folder=keep_folder)

    def remove_run(self, target: Target) -> list[str]:
        """Remove what a run that finished no block wrote into ``target.output``: the
        entries it declared, while the folder's record is still this run's, and its state;
        the folder itself only if this run created it and nothing else is left."""
        folder = target.output
        if not folder.exists():
            return []

        def ours(loc: Location) -> str | None:
            if (run_record(loc) or {}).get("run_id") == target.run_id:
                return None
            return "its run record is not this run's (another run or program wrote it)"

        claimed = folder.child(STATE_DIR) in target.created or target.mode == "replace"
        names = list(target.entries) if ours(folder) is None else []
        # A folder this run did not create stays, also when replacing our unfinished output:
        # whether its first run made it or the user did (an empty folder, or one reached by a
        # link) is not known, and an empty folder left costs nothing.
        keep = folder not in target.created
        if names:
            kept = self._remove_entries(folder, [*names, STATE_DIR], keep_folder=keep, owned=ours)
        elif claimed and folder.child(STATE_DIR).exists():  # the claim alone: no record yet
            state = folder.child(STATE_DIR)
            remove_state(state, state.listdir(), protect=self.protect, keep_folder=False)
            kept = folder.listdir()
        else:
            kept = folder.listdir()
        if not kept and not keep and folder.exists():
            with contextlib.suppress(OSError):
                os.rmdir(folder.path) if folder.is_local else folder.fs.rmdir(folder.path)
        return kept

    def clear(self, folder: Location) -> None:
        """Empty our output (:func:`.removal.clear_output`), keeping its state folder."""
        clear_output(folder, protect=self.protect)

    def _clear_for_overwrite(self) -> None:
        """:meth:`clear` dst's unfinished run, saying what is left where it stops part way (a
        file that may not be removed: immutable, or root_squash on NFS): it said "this user
        was refused access" of root's own file, and neither what was left nor how to go on."""
        try:
            self.clear(self.dst)
        except OSError as exc:
            why = " ".join(str(exc).split())
            if isinstance(exc.filename, str) and os.path.isabs(exc.filename):
                # the file's mark, or its folder's (append-only: a raw "Operation not
                # permitted" named the file alone)
                marks = (change_locked(p) for p in (exc.filename, os.path.dirname(exc.filename)))
                why = next((m for m in marks if m is not None), why)
            raise type(exc)(
                f"{self.what()} holds an unfinished run that could not be cleared for the "
                f"overwrite ({why}); what is left of it is kept, still known as ours: rerun with "
                "--overwrite once it may be removed"
            ) from exc

    def remove_stale_staging(self, keep: Location | None = None) -> None:
        """Remove interrupted overwrites beside dst (:func:`.leftovers.remove_stale`)."""
        leftovers.remove_stale(self.dst, protect=self.protect, keep=keep)

    def recover(self) -> None:
        """Finish what an interrupted overwrite left beside dst (:func:`.leftovers.recover`)."""
        leftovers.recover(self.dst, protect=self.protect)

    # -- ending ----------------------------------------------------------------------------

    def swap_in(self, target: Target) -> None:
        """Put a complete staged output in dst's place, then remove the old output.

        Once the two are exchanged the run has succeeded: a failure to tidy the old output
        away is a warning naming what is left and how to remove it, not a failed run."""
        target.check_lease()
        staging = target.output
        if self.dst.is_local:  # (on an object store the copy takes minutes: renewed till done)
            for lock in target.locks:
                lock.stop_heartbeat()
        stopped = None
        try:
            old = folders.exchange(staging, self.dst)
        except KeyboardInterrupt as exc:  # an object store's, once its copy was whole
            if getattr(exc, "aside", None) is None:
                raise
            old, stopped = exc.aside, exc  # type: ignore[attr-defined]
        except OSError as exc:  # nothing moved (a rename is whole or nothing)
            if exc.errno != errno.EXDEV or not self.dst.is_local:
                raise
            self._replace_in_place(target, exc)
            return
        if self.dst.is_local:  # each lock file moved with its folder
            for lock in target.locks:
                moved_to = self.dst if lock.lock.path.startswith(staging.path + "/") else old
                lock.moved_to(OutputState(moved_to).lock)
        else:  # each stayed where it was (folders.exchange): dst's is the run's lock now
            for lock in [x for x in target.locks if x.lock.path.startswith(staging.path + "/")]:
                lock.release()  # (the last object of the staging folder)
                target.locks.remove(lock)
        target.output = self.dst
        target.created = []
        if self.dst.is_local:  # the swap durable (both renames' too): an EIO fails the run
            try:
                fsync_dir(os.path.dirname(self.dst.path.rstrip(os.sep)) or os.sep)
            except OSError as exc:
                raise OSError(exc.errno, f"{exc.strerror} syncing the folder of dst after the "
                              "swap (a power cut may undo it): dst holds the new output, "
                              f"complete; the previous one is in {old.url!r}",
                              exc.filename) from None  # fmt: skip
        try:
            if stopped is not None:
                raise stopped
            # Files a user put into the old output stay where they were put.
            stuck = leftovers.give_back(old, self.dst)
            for lock in [x for x in target.locks if x.lock.path.startswith(old.path + "/")]:
                lock.release()
                target.locks.remove(lock)
            if not stuck and not leftovers.keep_theirs_inside(old):
                self.remove(old)
        except BaseException as exc:
            stop = interruption_behind(exc)  # (one wrapped too: it was warned of, exit 0)
            if stop is not None:  # not "rerun to continue": dst is complete
                left = (f"dst holds the new output, complete; the previous one is left in "
                        f"{old.url!r}: rerun the same command with resume=True to remove it "
                        "(what you had put into it goes back into dst), or remove it "
                        "yourself")  # fmt: skip
                raise interrupted_leaving(stop, left) from None
            if not isinstance(exc, Exception):
                raise
            left = ", ".join(old.listdir()) if old.exists() else ""
            log.warning(
                "the new output is in place, but the previous one, moved to %s, could not be "
                "removed (%s); it holds %s: remove it with: rm -r %r (move out first what you "
                "want to keep)", old.url, " ".join(str(exc).split()), left or "nothing", old.url,
            )  # fmt: skip

    def _replace_in_place(self, target: Target, exc: OSError) -> None:
        """The swap's fallback where dst's folder cannot be renamed (:mod:`.inplace`)."""
        staging = target.output
        inplace.warn(self.dst, exc)
        try:
            inplace.replace_in_place(staging, self.dst, protect=self.protect)
        except KeyboardInterrupt as stop:
            raise interrupted_leaving(stop, inplace.left(self.dst)) from None
        for lock in [x for x in target.locks if x.lock.path.startswith(staging.path + "/")]:
            lock.release()
            target.locks.remove(lock)
        target.output = self.dst
        target.created = []
        try:
            inplace.drop_staged_state(staging, self.protect)
        except Exception as why:  # the new output is in place: a warning, not a failure
            log.warning("the new output is in place, but %s could not be removed (%s): "
                        "remove it with: rm -r %r", staging.url, " ".join(str(why).split()),
                        staging.url)  # fmt: skip


def _keeps_folders(fs) -> bool:
    """Whether an empty folder outlives its last file there (``memory://``); on object stores
    a folder is its keys' prefix, gone with them (and ``rmdir`` may mean a bucket)."""
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "memory" in protocol
