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
without modification times: :func:`fingerprinted`), every finished block is read again.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .._locations import reach, resolve
from .._outputs.destination import Destination
from .._outputs.state import (
    OutputState,
    changed_files,
    files_digest,
    identity_differences,
    input_unchanged,
    provenance,
    source_files,
)
from .._sources.fetch import UnitCache, fetch_block
from .._sources.source import Source
from .fusion import Fusion, with_block
from .plan import Plan

__all__ = [
    "Prior",
    "check_complete_source",
    "check_resumable",
    "check_source_files",
    "examine",
    "fingerprinted",
    "source_identity",
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


def examine(
    fusion: Fusion,
    dst: str | os.PathLike[str],
    *,
    dst_storage_options: dict[str, Any] | None,
    overwrite: bool,
    resume: bool,
    chunks: Any,
    levels: int | None,
) -> Prior:
    """Check ``dst`` and, for a resume, that it continues this very run (reads only).

    A resume with the block size and levels left automatic takes the interrupted run's.
    """
    dst_loc = resolve(dst, name="dst", storage_options=dst_storage_options, writable=True)
    reach(dst_loc, name="dst")
    source = fusion.source
    destination = Destination(dst_loc, protect=source.protected(), entries=fusion.spec.entries)
    mode = destination.check(overwrite=overwrite, resume=resume)
    links: list[str] = []  # folders a local store's links lead to: the source is there too
    files = source_files(source.data_files(links))
    destination.protect_also(resolve(p, name="src") for p in sorted(set(links)))
    listed = set(files["names"].tolist())  # data_files skips what it cannot find
    absent = [f for f in source.files if f not in listed]  # an HDF5 VDS's, say
    if absent:
        log.warning("%s: %d of its files are missing (%s), and read as the fill value",
                    source.description, len(absent), _few(absent))  # fmt: skip
    missing, stored = source.missing_units(files["names"].tolist())
    if missing:  # Zarr's meaning, and an interrupted copy's mark (a third adversarial run)
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
        folder = stored_folder(destination, mode)
        if mode != "complete" and provenance(folder) is not None:
            check_source_files(OutputState(folder), f"dst {dst_loc.spec!r}", source,
                               fusion.plan(1)[0], files)  # fmt: skip
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
    return record


def check_resumable(destination, stored, params, identity, mode) -> None:
    """Refuse a resume with other parameters or another source (reads only)."""
    what = f"dst {destination.dst.spec!r}"
    if stored.get("source") is not None:
        changes = identity_differences(stored["source"], identity)
        before = stored["source"].get("files_sha256")
        if mode == "complete" and not changes and before not in (None, identity["files_sha256"]):
            raise ValueError(
                f"{what} is complete, but the source's files were rewritten since it was "
                "computed (their sizes or modification times differ): it may not be this "
                "source's result; nothing to resume: fuse into another dst, or recompute it "
                "with overwrite=True and resume=False"
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
    differs = [k for k in COMPARED if k in old and old.get(k) != params.get(k)]
    if differs:
        shown = "; ".join(f"{k} was {old.get(k)!r}, now {params.get(k)!r}" for k in differs)
        raise ValueError(
            f"{what} was {'written' if mode == 'complete' else 'started'} with different "
            f"{', '.join(differs)} ({shown}); resume with "
            "the same parameters, or start over with overwrite=True and resume=False"
        )


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


def check_source_files(state: OutputState, what: str, source: Source, plan: Plan, files) -> None:
    """Refuse a resume when the data a finished block read has changed (see the module
    docstring); reads the source again only for the finished blocks of changed files."""
    old = state.files()
    if old is None:
        return
    changed = changed_files(old, files)
    shown = fingerprinted(source, files)
    if not changed and shown:
        return
    done = {n for n in state.done() if not n.startswith("L")}
    suspects: dict[str, str] = {}  # finished block -> a changed file it read
    if not shown:  # no file can say what changed: every finished block is read again
        suspects = dict.fromkeys(done, "")
        log.info(
            "the source's files cannot show every change of its data (%s): reading the %d "
            "finished block(s) again", _unshown(source), len(done),
        )  # fmt: skip
    for name in changed:
        unit = source.unit_of_file(name)
        if unit is None:  # a file every block may read (a TIFF, a plane file)
            for block in done:
                suspects.setdefault(block, name)
            continue
        extent = {
            a: (u * s, min((u + 1) * s, n))
            for a, u, s, n in zip(source.axes, unit, source.unit_shape, source.shape, strict=True)
        }
        rows, cols = plan.blocks_reading(extent["y"], extent["x"])
        lead_ranges = [range(*extent[a]) for a in plan.layout.lead_axes]
        for lead in itertools.product(*lead_ranges):
            for j in rows:
                for i in cols:
                    block = plan.name((*lead, j, i))
                    if block in done:
                        suspects.setdefault(block, name)
    if suspects:
        log.debug(
            "source files changed since the run began (%s): reading the %d finished block(s) "
            "that read them again", _few(changed), len(suspects),
        )  # fmt: skip
    cache = UnitCache(0, plan.halo)
    for block, name in sorted(suspects.items()):
        recorded = state.marker_digest(block)
        if recorded is not None:
            index = tuple(int(k) for k in block.split("_"))
            try:
                samples = fetch_block(source, plan.region(index), cache)
                unchanged = input_unchanged(recorded, samples)
            except Exception:  # unreadable now: it is not what the block read
                unchanged = False
            if unchanged:
                continue
        because = f"the source file {name!r}" if name else "the source's data"
        raise ValueError(
            f"cannot resume {what}: {because} changed since the run began, and finished "
            f"block {block} was computed from its old content; start over with "
            "overwrite=True and resume=False"
        )
    log.info(
        "source %s since the run began; the blocks already done read the same samples as "
        "before, and only blocks not yet done read the rest",
        f"files changed ({_few(changed)})" if changed else "unchanged, as far as its data shows",
    )  # fmt: skip


def fingerprinted(source: Source, files: dict[str, Any]) -> bool:
    """Whether the sizes and times of the source's data files show every change of its data
    (what a resume relies on to read again only the finished blocks of changed files).

    Not for a dask-backed or Zarr array in memory (its token is its graph's or store's name,
    not its data: only a NumPy array's hashes its samples), nor for a store whose files have no
    modification time (zip archives, HTTP: only their sizes would be compared)."""
    if source.files or source.data_root is not None:
        return bool(np.all(files["stamps"] != 0))
    return isinstance(source.array, np.ndarray)


def _unshown(source: Source) -> str:
    if source.files or source.data_root is not None:
        return "some have no modification time"
    return f"{source.kind} data in memory"


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")


def source_identity(source: Source, files: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run records of its source: :meth:`Source.identity`, a digest of its data if
    in memory, and of its files' list (``files``: listed now, where not given)."""
    files = source_files(source.data_files()) if files is None else files
    return {**source.identity(), "content": _content_token(source),
            "files_sha256": files_digest(files)}  # fmt: skip


def _content_token(source: Source) -> str | None:
    if source.data_root is not None:
        return None  # its files are fingerprinted one by one
    from dask.base import tokenize

    return tokenize(source.array)
