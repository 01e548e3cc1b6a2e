"""What a run may do with ``dst``: the kind of folder it finds there, and the checks, before
anything is written, that decide the run's mode or refuse it.

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

These checks only read; :mod:`.destination` claims the folder and checks again under the lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

from .._errors import DestinationLockedError
from .._locations import Location
from . import folders, inplace, leftovers
from .folders import path_too_long
from .ownership import ID_FILE, classify, copied_provenance, foreign_entries
from .removal import Marked, sticky_blocked, theirs_in_objects, unremovable
from .staleness import live_lock, locked_message
from .state import OutputState

__all__ = ["IMAGE_SUFFIXES", "DestinationChecks"]


class DestinationChecks:
    """One ``dst`` as a run found it, and what the run may do with it (see the module
    docstring); :class:`~.destination.Destination` adds the claims and moves.

    ``entries`` are the top-level entries the run will write (its output's), checked against
    what a user may have put into an existing output.
    """

    def __init__(
        self, dst: Location, *, protect: Iterable[Location] = (), entries: Iterable[str] = ()
    ):
        self.dst = dst
        self.protect = list(protect)
        self.entries = tuple(entries)
        self.kind = classify(dst)
        # an overwrite killed mid-swap (on an object store dst may hold a part of a copy)
        if (self.kind == "absent" or (not dst.is_local and self.kind != "complete")) and (
            leftovers.restore(dst, protect=self.protect)
        ):
            self.kind = classify(dst)
        # a file or folder whose owner, group, mode and ACLs a new dst takes (a TIFF's
        # working store takes those of the TIFF it will replace)
        self.looks_like: str | None = None
        self.theirs_inside: list[str] = []  # a user's files inside our arrays
        self._listed: dict | None = None

    def _keys(self) -> dict:
        """dst's keys on an object store, listed once for the checks that read them all (two
        listings of an output of a million chunks were two thousand requests)."""
        if self._listed is None:
            self._listed = self.dst.fs.find(self.dst.path.rstrip("/"), detail=True)
        return self._listed

    def what(self) -> str:
        """``dst 'SPEC'``, and the folder's own path where that is not what the spec names
        (a TIFF dst's working store, ``.NAME.fstack-work``)."""
        if self.dst.path.rstrip("/").endswith(".fstack-work"):  # _runs.tiff_output.WORK
            return f"dst {self.dst.spec!r} (its working folder {self.dst.path!r})"
        return f"dst {self.dst.spec!r}"

    # -- before anything is written ------------------------------------------------------

    def check(self, *, overwrite: bool, resume: bool) -> str:
        """The mode this run will use, or an exception if ``dst`` must not be touched.

        Reads only. Modes: ``"new"``, ``"empty"``, ``"claimed"``, ``"replace"``, ``"resume"``,
        ``"staged"``, ``"resume-staged"``, ``"complete"`` (resume of a finished output).
        """
        what, kind = self.what(), self.kind
        if self.dst.is_bucket_root():
            # our output would mix with the bucket's other objects, and an overwrite's swap
            # made a bucket of its own beside it, then failed (a review, 2026-12-06)
            inside = f"{self.dst.protocol}://{self.dst.path.strip('/')}/fused.zarr"  # (not b/.)
            raise ValueError(
                f"{what} is a whole bucket; name a folder inside it for the output, e.g. {inside!r}"
            )
        _refuse_image_name(self.dst, what)
        too_long = path_too_long(self.dst)
        if too_long is not None:
            raise ValueError(f"{what} {too_long}; choose a shorter name or path")
        self.protect_also(self.protect)
        ours = ("complete", "unfinished", "claimed")
        # an overwrite's swap on an object store copies into dst under dst's lock: part of an
        # output, no zarr.json yet, is being written (a second run wrote into it: a review)
        watched = (*ours, "other") if not self.dst.is_local else ours
        info = live_lock(OutputState(self.dst).lock) if kind in watched else None
        if info is not None:
            raise DestinationLockedError(locked_message(what, info))
        if kind in ours:  # a lock watched for its heartbeat takes seconds: its run may be done
            self.kind = kind = classify(self.dst)
        if kind in ("complete", "unfinished"):
            self.kind = kind = self._replacement_cut_short(overwrite=overwrite, resume=resume)
        if kind == "file":
            raise FileExistsError(
                f"{what} is an existing file; choose a folder path for the output"
            )
        if kind == "other":
            raise FileExistsError(self._not_ours(overwrite=overwrite, resume=resume))
        if kind == "absent":
            self._refuse_swapping()
            parent = self.dst.parent_path()
            if self.dst.is_local and not os.path.isdir(parent):
                missing = "does not exist" if not os.path.lexists(parent) else "is not a folder"
                raise FileNotFoundError(
                    f"{what} cannot be created: its parent folder {parent!r} {missing}; create "
                    "it first (a typo in the path?)"
                )
            if self.dst.is_local and not os.access(parent, os.W_OK | os.X_OK):
                raise PermissionError(f"{what} cannot be created: {parent!r} is not writable")
            bucket = self.dst.missing_bucket()
            if bucket is not None:
                raise FileNotFoundError(
                    f"{what} cannot be created: its bucket {bucket!r} does not exist; create it "
                    "first (a typo in the URL?)"
                )
            return "new"
        if kind in ("empty", "claimed"):  # claimed: a killed run's claim, nothing more
            if self.dst.is_local and not os.access(self.dst.path, os.W_OK | os.X_OK):
                raise PermissionError(f"{what} is not writable")
            return kind
        if resume or overwrite:  # (a complete output's resume with nothing staged writes nothing)
            if kind == "unfinished" or overwrite or self.staged_run() is not None:
                self._refuse_unwritable(removing=overwrite)
        if kind == "unfinished":
            gone = None if overwrite else inplace.abandoned(self.dst)
            if gone is not None:
                raise FileNotFoundError(gone)
            if resume:
                return "resume"
            if overwrite:
                self._refuse_collisions()
                self._refuse_theirs_inside()
                return "replace"
            raise FileExistsError(
                f"{what} holds an unfinished fstack_dask run; continue it with resume=True, "
                "or start over with overwrite=True"
            )
        # complete
        if resume:
            staged = self.staged_run()
            if staged is None:
                return "complete"
            self._refuse_unswappable()
            self._refuse_unmovable()
            return "resume-staged"
        if overwrite:
            self._refuse_collisions()
            self._refuse_unswappable()
            self._refuse_theirs_inside()
            self._refuse_unmovable()
            return "staged"
        raise FileExistsError(f"{what} already exists; choose another path or pass overwrite=True")

    def _replacement_cut_short(self, *, overwrite: bool, resume: bool) -> str:
        """Finish, for ``resume`` or ``overwrite``, what an overwrite killed while it replaced
        dst entry by entry (where it cannot be renamed) left; the kind of dst then. A plain
        run is refused first, touching nothing (it finished the replacement, then exited 2,
        "already exists"; where dst was whole, it took over the stale lock and tidied dst's
        state folder first)."""
        if not (resume or overwrite):
            if inplace.replacing(self.dst) is not None:
                raise FileExistsError(f"{inplace.left(self.dst)}; nothing was changed")
            return self.kind
        if inplace.resume_replacement(self.dst, protect=self.protect):
            return classify(self.dst)
        return self.kind

    def protect_also(self, places: Iterable[Location]) -> None:
        """Refuse a dst that overlaps one of ``places`` (the source), and keep them protected
        from every removal."""
        for place in places:
            if self.dst.overlaps(place):
                inside = (
                    "is the source or lies inside it"
                    if place.contains(self.dst)
                    else ("contains the source")
                )
                raise ValueError(
                    f"{self.what()} {inside} ({place.spec!r}); expected an output location "
                    "outside the input"
                )
            if place not in self.protect:
                self.protect.append(place)

    def _not_ours(self, *, overwrite: bool, resume: bool) -> str:
        what = self.what()
        action = "resume into" if resume else "replace" if overwrite else "write into"
        zarr = any(self.dst.child(n).exists() for n in ("zarr.json", ".zgroup", ".zarray"))
        detail = "a Zarr store" if zarr else "a folder with other content"
        if copied_provenance(self.dst):  # xarray's to_zarr(attrs=ds.attrs) of an output, say
            # or a copy of ours without hidden files (rsync --exclude='.*'): say which file
            detail = (
                "a Zarr store with the attributes of an fstack_dask output copied in, without "
                f"its id file {'/'.join(ID_FILE)!r} (a copy that left out hidden files lacks "
                "it too)"
            )
        elif not zarr:  # what to move out (a file a user left in a TIFF's working folder)
            with contextlib.suppress(OSError):
                names = sorted(self.dst.listdir())
                more = f" and {len(names) - 3} more" if len(names) > 3 else ""
                detail += f" ({', '.join(map(repr, names[:3]))}{more})" if names else ""
        end = "choose another dst"
        if self.dst.path.rstrip("/").endswith(".fstack-work"):  # _runs.tiff_output.WORK
            end = "move out what it holds, or choose another dst"
        return (
            f"{what} exists and is {detail}, not an fstack_dask output; refusing to {action} "
            f"it (only fstack_dask outputs and empty folders are ever replaced): {end}"
        )

    def _refuse_unswappable(self) -> None:
        """Refuse, before anything is computed, an overwrite whose swap would fail."""
        why = folders.unswappable(self.dst)
        if why is not None:
            raise ValueError(
                f"{self.what()} {why}; an overwrite writes the new output beside dst and "
                "swaps the two: remove the old output yourself, or choose another dst"
            )

    def _refuse_unmovable(self) -> None:
        """Refuse, before anything is computed, an overwrite on an object store whose swap
        could not move a user's object out of dst (:func:`.folders.unmovable_objects`): it
        was refused only at the swap, after the whole fusion had run."""
        why = folders.unmovable_objects(self.dst, keys=self._keys)
        if why is not None:
            raise FileExistsError(
                f"{self.what()} {why}; an overwrite moves dst's objects aside: move it out of "
                "dst first (nothing was written)"
            )

    def _refuse_unwritable(self, *, removing: bool) -> None:
        """Refuse, before anything is written, an output this user may not write into (or,
        ``removing``, not remove: an overwrite removes the old output after its swap)."""
        why = folders.unwritable(self.dst, self.entries)
        if isinstance(why, Marked):  # as a marked dst that cannot be swapped: exit 2 (a dst
            # marked +i exited 1, where +a, refused as unswappable, exited 2)
            raise ValueError(f"{self.what()} {why} (nothing was written)")
        if why is None and not removing and self.kind == "unfinished" and self.dst.is_local:
            # a colleague's sticky dst: the resume computed every block, then could not
            # replace their zarr.json and said to rerun with --resume, which failed so again
            sticky = sticky_blocked(self.dst.path, ("zarr.json",))
            why = None if sticky is None else f"cannot be finished: this user {sticky}"
        if why is None and removing:
            theirs: list[str] = theirs_in_objects(self.dst, keys=self._keys)  # (object store)
            missing = unremovable(self.dst, theirs)
            self.theirs_inside = sorted(theirs) if missing is None else []
            advice = (
                "clear the mark"
                if isinstance(missing, Marked)
                else "ask its owner to let you remove it (chmod -R g+w, for a group's folder)"
            )
            why = None if missing is None else (
                f"cannot be replaced: this user {missing}; {advice} or choose another dst"
            )  # fmt: skip
            if isinstance(missing, Marked):  # exit 2, as a mark on dst itself (one deeper
                raise ValueError(f"{self.what()} {why} (nothing was written)")  # exited 1)
        if why is not None:
            raise PermissionError(f"{self.what()} {why} (nothing was written)")

    def _refuse_theirs_inside(self) -> None:
        """Refuse an overwrite of an output holding a user's files inside its arrays
        (``0/annotations/x.csv``, ``0/c/99``), as the walk of :meth:`_refuse_unwritable` found
        them: they stayed in the previous output, hidden beside dst (a warning, exit 0), or in
        dst's array around the new one's chunks, where one named like a chunk of its grid
        was overwritten or deleted by the new run."""
        theirs = self.theirs_inside
        if not theirs:
            return
        more = f" and {len(theirs) - 3} more" if len(theirs) > 3 else ""
        raise FileExistsError(
            f"{self.what()} holds {', '.join(map(repr, theirs[:3]))}{more} inside its arrays, "
            "which fstack_dask did not write; an overwrite replaces those arrays: move them out "
            "of dst first (nothing was written)"
        )

    def _refuse_collisions(self) -> None:
        """Refuse when a user's entry in our output has the name of one this run writes."""
        clash = sorted(set(foreign_entries(self.dst)) & set(self.entries))
        if clash:
            raise FileExistsError(
                f"{self.what()} holds {', '.join(map(repr, clash))}, which fstack_dask did not "
                "write, where this run would write its own; move it out of dst first (nothing "
                "was written)"
            )

    def _refuse_swapping(self) -> None:
        """Refuse a missing dst that an overwrite is swapping now: between the two renames
        of a swap without RENAME_EXCHANGE (NFS) dst is missing, its lock moved aside with
        the old output (a second run created dst then and wrote into it, and the swap failed
        "the previous output in dst is unchanged" with the old one hidden beside it)."""
        for folder in self.staging_folders():
            if folder.name.startswith(f".{self.dst.name}{folders.STAGING}old-"):
                info = live_lock(OutputState(folder).lock)
                if info is not None:
                    raise DestinationLockedError(locked_message(self.what(), info))

    def staging_folders(self) -> list[Location]:
        """Our staging folders beside ``dst`` (:func:`.leftovers.staging_folders`)."""
        return leftovers.staging_folders(self.dst)

    def staged_run(self) -> Location | None:
        """An interrupted ``overwrite`` run beside a complete ``dst``, if one can be resumed."""
        return leftovers.staged_run(self.dst)


# Names of single-image formats: a Zarr folder with such a name opens in no image viewer.
# (.tif/.tiff are not here: those names are for OME-TIFF output.)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jp2", ".gif", ".bmp", ".webp", ".heic")


def _refuse_image_name(dst: Location, what: str) -> None:
    """Refuse a dst named like a PNG or JPEG file: the run writes a folder, which no PNG or
    JPEG reader opens, and the user wanted a picture."""
    path = dst.path.rstrip("/")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in IMAGE_SUFFIXES:
        stem = os.path.basename(path)[: -len(suffix)] or "fused"
        raise ValueError(
            f"{what} names a {suffix[1:].upper()} file, but fstack_dask writes OME-Zarr (or "
            f"OME-TIFF for a dst ending in .ome.tif): choose a name such as "
            f"{stem + '.ome.zarr'!r}, and see the README's 'Reading the result' for viewing "
            "or saving it as a picture"
        )
