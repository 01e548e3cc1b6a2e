"""Resuming: is this the same run, on the same source, and which blocks are left?

A resume continues only the run its state folder describes: the same parameters and
engine, and a source with the same identity (location, format, shape, dtype, axes,
chunking, metadata). A complete output is "already complete" only for the source it was
computed from. The source's data files are compared one by one by their size, modification
and change time and inode; the finished blocks that read a file that changed are read again,
and their samples' digest compared with the one their done-marker recorded: a block whose
input really changed refuses the resume (so a resume can never mix two versions of the
data), while a file only touched, copied back or re-saved with the same content is accepted.
Where the files cannot show every change (a dask or xarray array backed by anything, files
without modification times: :func:`~.source_changes.fingerprinted`), every finished block is
read again. The comparing and the reading again are ``source_changes``'s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .._locations import Location, reach, resolve
from .._outputs.destination import Destination
from .._outputs.fingerprint import (
    identity_differences,
    settled_files,
)
from .._outputs.ownership import newer_format, provenance
from .._outputs.state import OutputState
from .fusion import Fusion, with_block
from .source_changes import _few, check_source_files, source_identity

__all__ = [
    "Prior",
    "check_early",
    "check_complete_source",
    "check_resumable",
    "examine",
    "stored_record",
]

log = logging.getLogger(__name__)

COMPARED = (
    "src_axes", "src_shape", "level", "nhsize", "focus", "alpha", "sth", "channels", "chunks",
    "depth_map", "selectivity_map", "depth_unit", "levels", "device", "engine",
)  # fmt: skip


@dataclass(frozen=True)
class Prior:
    """What ``dst`` holds and what this run will do with it, decided before anything is
    written: the mode (see :class:`~fstack_dask._outputs.destination.Destination`), the
    fusion (a resume's block size and levels), the source's identity and file list."""

    destination: Destination
    mode: str
    fusion: Fusion
    identity: dict[str, Any]
    files: dict[str, Any]

    @property
    def resuming(self) -> bool:
        return self.mode in ("resume", "resume-staged", "complete")


def check_early(
    source: Any,
    dst: str | os.PathLike[str] | Location,
    *,
    dst_storage_options: dict[str, Any] | None,
    overwrite: bool,
    resume: bool,
) -> None:
    """:func:`examine`'s refusals that need no plan: ``dst`` exists without ``overwrite`` or
    ``resume``, is a file, a store not ours, cannot be created or reached. Called before
    ``"auto"`` reads its sample, which was read first (minutes of a remote stack);
    :func:`examine` checks everything again, with the plan."""
    dst_loc = resolve(dst, name="dst", storage_options=dst_storage_options, writable=True)
    reach(dst_loc, name="dst")
    Destination(dst_loc, protect=source.protected()).check(overwrite=overwrite, resume=resume)


def examine(
    fusion: Fusion,
    dst: str | os.PathLike[str] | Location,  # (a TIFF dst's working store: a Location)
    *,
    dst_storage_options: dict[str, Any] | None,
    overwrite: bool,
    resume: bool,
    chunks: Any,
    levels: int | None,
    threads: int,
    checked: Callable[[], None] | None = None,
) -> Prior:
    """Check ``dst`` and, for a resume, that it continues this very run (reads only;
    a changed source's finished blocks are read again on ``threads`` threads).

    A resume with the block size and levels left automatic takes the interrupted run's.
    ``checked()`` is called once ``dst`` is accepted, before a resume reads the source again:
    the run loads its kernel meanwhile, and a refused ``dst`` costs no import of numba.
    """
    dst_loc = resolve(dst, name="dst", storage_options=dst_storage_options, writable=True)
    reach(dst_loc, name="dst")
    source = fusion.source
    destination = Destination(dst_loc, protect=source.protected(), entries=fusion.spec.entries)
    mode = destination.check(overwrite=overwrite, resume=resume)
    links: list[str] = []  # folders a local store's links lead to: the source is there too
    files = settled_files(lambda: source.data_files(links))
    destination.protect_also(resolve(p, name="src") for p in sorted(set(links)))
    listed = set(files["names"].tolist())  # data_files skips what it cannot find
    absent = [f for f in source.files if f not in listed]  # an HDF5 VDS's, say
    if absent:
        log.warning("%s: %d of its files are missing (%s), and read as the fill value",
                    source.description, len(absent), _few(absent))  # fmt: skip
    missing, stored = source.missing_units(files["names"].tolist())
    if missing and missing == stored:  # not refused: Zarr stores no chunk of an array all
        # fill value (write_empty_chunks=False, its default): a blank stack is such a store
        log.warning("%s: none of its %d chunk files is stored: every sample reads as the fill "
                    "value %s, and the output is that constant (never written, or lost in an "
                    "interrupted copy?)", source.description, stored,
                    source.array.fill_value)  # fmt: skip
    elif missing:  # Zarr's meaning, and an interrupted copy's mark (a third adversarial run)
        log.warning("%s: %d of its %d chunk files are missing, and read as the fill value %s "
                    "(never written, or lost in an interrupted copy?)", source.description,
                    missing, stored, source.array.fill_value)  # fmt: skip
    stored = stored_record(destination, mode)
    if stored is not None and stored["params"].get("chunks"):
        old = stored["params"]
        block = tuple(old["chunks"]) if chunks is None else fusion.block
        fusion = with_block(fusion, block, old.get("levels", 0) if levels is None else levels)
        destination.entries = fusion.spec.entries
    if stored is not None and "undefined_selectivity" not in stored["params"]:
        # Begun before undefined S took its image's smallest S (2026-12-05): finished by the
        # rule it was begun with, -inf, so that no image mixes the two.
        params = {k: v for k, v in fusion.params.items() if k != "undefined_selectivity"}
        fusion = replace(fusion, params=params, fills={})
    identity = source_identity(source, files)
    if stored is not None:
        check_resumable(destination, stored, fusion.params, identity, mode)
    if checked is not None and mode != "complete":
        checked()
    if stored is not None:
        folder = stored_folder(destination, mode)
        if mode != "complete" and provenance(folder) is not None:
            check_source_files(OutputState(folder), f"dst {dst_loc.spec!r}", source, fusion,
                               files, threads=threads)  # fmt: skip
    return Prior(destination, mode, fusion, identity, files)


def stored_folder(destination: Destination, mode: str):
    """The output folder a resume continues (dst, or an interrupted overwrite's staging)."""
    if mode in ("resume", "complete"):
        return destination.dst
    if mode == "resume-staged":
        return destination.staged_run()
    return None


def stored_record(destination: Destination, mode: str) -> dict[str, Any] | None:
    folder = stored_folder(destination, mode)
    if folder is None:
        return None
    record = OutputState(folder).record()
    if record is None and mode == "complete":
        attrs = provenance(folder) or {}
        return {"params": attrs, "source": attrs.get("source_identity")}
    if record is None:
        raise ValueError(
            f"dst {destination.dst.spec!r} holds an fstack_dask output without its run record; "
            "it cannot be resumed: start over with overwrite=True"
        )
    newer = newer_format(record.get("params")) if mode != "complete" else None
    if newer is not None:  # before anything reads the record further
        raise ValueError(
            f"cannot resume dst {destination.dst.spec!r}: {newer}; resume it with "
            "that version, or start over with overwrite=True and resume=False"
        )
    return record


def check_resumable(destination, stored, params, identity, mode) -> None:
    """Refuse a resume with other parameters or another source (reads only)."""
    what = f"dst {destination.dst.spec!r}"
    if stored.get("source") is not None:
        changes = identity_differences(stored["source"], identity)
        if mode == "complete" and not changes and _rewritten(stored["source"], identity):
            raise ValueError(
                f"{what} is complete, but the source's files were rewritten since it was "
                "computed (their sizes, modification times or versions differ): it may not be this "
                "source's result; nothing to resume: fuse into another dst, or recompute it "
                "with overwrite=True and resume=False"
            )
        if changes and _read_otherwise(stored["source"], identity, changes):
            raise ValueError(
                f"{what} {'is complete' if mode == 'complete' else 'cannot be resumed'}: its "
                "source's files have the sizes and times they had, but their metadata reads "
                f"otherwise than when {'it was computed' if mode == 'complete' else 'the run'}"
                f"{'' if mode == 'complete' else ' began'} "
                "(this version of fstack_dask reads more of them, such as a stage position, "
                "which the output lacks, unless they were rewritten with their old times); "
                "recompute it with overwrite=True and resume=False"
            )
        if changes and mode == "complete":
            raise ValueError(
                f"{what} is complete, but was computed from another source "
                f"({'; '.join(changes)}); nothing to resume: fuse into another dst, or "
                "recompute it with overwrite=True and resume=False"
            )
        if changes:
            raise ValueError(
                f"cannot resume {what}: the source changed since the run began "
                f"({'; '.join(changes)}); start over with overwrite=True and resume=False"
            )
    elif mode == "complete":
        check_complete_source(what, stored.get("params") or {}, identity)
    old = stored.get("params") or {}
    numerics = params.get("numerics")
    if mode != "complete" and "numerics" in old and old["numerics"] != numerics:
        raise ValueError(
            f"cannot resume {what}: it was started by a version of fstack_dask that computes "
            f"other bits (numerics {old['numerics']!r}, this version's {numerics!r}), "
            "and one output would mix the two; finish it with that version, or start over with "
            "overwrite=True and resume=False"
        )
    differs = [k for k in COMPARED if k in old and old.get(k) != params.get(k)]
    if differs:
        shown = "; ".join(f"{k} was {old.get(k)!r}, now {params.get(k)!r}" for k in differs)
        raise ValueError(
            f"{what} was {'written' if mode == 'complete' else 'started'} with different "
            f"{', '.join(differs)} ({shown}); resume with "
            "the same parameters, or start over with overwrite=True and resume=False"
        )


def _read_otherwise(stored: dict[str, Any], identity: dict[str, Any], changes: list[str]) -> bool:
    """Whether only the metadata differs, of a file source whose files do not (names, sizes,
    modification times): most likely another version's reading of the same file (a CZI
    scene's offset, read since 2026-12-07), not another source, as the message said. A Zarr
    store's metadata files are not among the files compared: a change of them is a change
    of the source."""
    files = stored.get("files_sha256")
    return (
        changes == ["its metadata changed"]
        and stored.get("kind") not in ("zarr", "ome-zarr")
        and stored.get("location") is not None
        and files is not None
        and files == identity.get("files_sha256")
    )


def _rewritten(stored: dict[str, Any], identity: dict[str, Any]) -> bool:
    """Whether the source's files differ from those a complete output was computed from (an
    object's version only where both runs listed versions: older records lack them)."""
    return any(stored.get(key) not in (None, identity.get(key))
               and (key == "files_sha256" or identity.get(key) is not None)
               for key in ("files_sha256", "files_versions_sha256"))  # fmt: skip


def check_complete_source(what: str, params: dict[str, Any], identity: dict[str, Any]) -> None:
    """An output written before provenance kept the source's identity: compare its location."""
    stored = params.get("src")
    if stored is not None and identity.get("location") is not None:
        if stored != identity["location"]:
            raise ValueError(
                f"{what} is complete, but was computed from another source ({stored!r}, not "
                f"{identity['location']!r}); nothing to resume: fuse into another dst, or "
                "recompute it with overwrite=True and resume=False"
            )
