"""Resuming: is this the same run, on the same source, and which blocks are left?

A resume continues only the run its state folder describes: the same parameters, and a
source with the same identity (location, format, shape, dtype, axes, chunking, metadata).
The source's data files are compared one by one (size and modification time): a file that
changed since the run began is accepted only if no finished block has read it (a repaired
corrupt chunk, say), so a resume can never mix two versions of the data.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from ._destination import Destination
from ._plan import Plan
from ._read import Source
from ._state import OutputState, changed_files, identity_differences, provenance

__all__ = ["check_resumable", "check_source_files", "source_identity", "stored_record"]

log = logging.getLogger(__name__)

COMPARED = (
    "src_axes", "src_shape", "level", "nhsize", "focus", "alpha", "sth", "channels", "chunks",
    "depth_map", "selectivity_map", "depth_unit", "levels", "device",
)  # fmt: skip


def stored_folder(destination: Destination, mode: str):
    """The output folder a resume continues (dst, or an interrupted overwrite's staging)."""
    if mode in ("resume", "complete"):
        return destination.dst
    if mode == "resume-staged":
        return destination.staged_run()
    return None


def stored_record(destination: Destination, mode: str) -> dict[str, Any] | None:
    if mode == "resume":
        folder = destination.dst
    elif mode == "resume-staged":
        folder = destination.staged_run()
    elif mode == "complete":
        folder = destination.dst
    else:
        return None
    state = OutputState(folder)
    record = state.record()
    if record is None and mode == "complete":
        attrs = provenance(folder) or {}
        return {"params": attrs, "source": None}
    if record is None:
        raise ValueError(
            f"dst {destination.dst.spec!r} holds an fstack_dask output without its run record; "
            "it cannot be resumed: start over with overwrite=True"
        )
    return record


def check_resumable(destination, stored, params, identity, mode) -> None:
    """Refuse a resume with other parameters or another source (reads only)."""
    what = f"dst {destination.dst.spec!r}"
    if mode != "complete" and stored.get("source") is not None:
        changes = identity_differences(stored["source"], identity)
        if changes:
            raise ValueError(
                f"cannot resume {what}: the source changed since the run began "
                f"({'; '.join(changes)}); start over with overwrite=True and resume=False"
            )
    old = stored.get("params") or {}
    differs = [k for k in COMPARED if k in old and old.get(k) != params.get(k)]
    if differs:
        raise ValueError(
            f"{what} was started with different {', '.join(differs)}; resume with the same "
            "parameters, or start over with overwrite=True and resume=False"
        )


def check_source_files(state: OutputState, what: str, source: Source, plan: Plan, files) -> None:
    """Refuse a resume when a source file changed that a finished block has read."""
    old = state.files()
    if old is None:
        return
    changed = changed_files(old, files)
    if not changed:
        return
    done = state.done()
    for name in changed:
        unit = source.unit_of_file(name)
        if unit is None:
            if done:
                raise ValueError(
                    f"cannot resume {what}: the source file {name!r} changed "
                    "since the run began; start over with overwrite=True and resume=False"
                )
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
                    if plan.name((*lead, j, i)) in done:
                        raise ValueError(
                            f"cannot resume {what}: the source file {name!r} "
                            f"changed since the run began, and finished block "
                            f"{plan.name((*lead, j, i))} was computed from it; start over with "
                            "overwrite=True and resume=False"
                        )
    log.info(
        "source files changed since the run began (%s); only blocks not yet done read them",
        ", ".join(changed[:3]) + (" ..." if len(changed) > 3 else ""),
    )


def source_identity(source: Source) -> dict[str, Any]:
    return {
        "location": source.location.url if source.location is not None else None,
        "kind": source.kind,
        "shape": list(source.shape),
        "dtype": str(source.dtype),
        "axes": source.axes,
        "unit_shape": list(source.unit_shape),
        "level": int(source.level),
        "metadata_sha256": source.metadata_digest(),
        "content": _content_token(source),
    }


def _content_token(source: Source) -> str | None:
    if source.data_root is not None:
        return None  # its files are fingerprinted one by one
    from dask.base import tokenize

    return tokenize(source.array)
