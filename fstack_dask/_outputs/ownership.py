"""Which folders are our outputs, and which of their entries are ours: the provenance
attribute, the output's id, the run record read back, and the checks that decide what may
be resumed, replaced or deleted.

An output folder is *ours* when its ``zarr.json`` carries our provenance attribute (a complete
or an unfinished output) with the output's id that the id file ``0/.fstack_dask-output``
holds too, or when it holds our run record ``.fstack_dask/run.json`` (a run killed while
creating the output). Nothing else is ever resumed into, replaced or deleted: an empty
``.fstack_dask/`` folder, or any Zarr store without our provenance, is not ours. Nor is a
store whose group attributes were copied from an output of ours (``xarray``'s
``to_zarr(..., attrs=ds.attrs)``, ``zarr.create_group(attributes=...)``): Zarr writers copy
attributes and arrays, not files that are neither, so the id file is missing there. It lies
in the full-resolution array's folder because Zarr lists a group's folder (and warns of any
entry there that is not a Zarr node) but never an array's. (Outputs written before ids,
2026-12, carry none and are known by their provenance alone.)

Ownership is by record, never by name: the provenance and the run record list the entries
the run writes (``zarr.json``, its levels ``0``..``N``, ``depth``, ``selectivity``, and the
state folder); only those are ever removed, and anything else inside an output (a user's
``2024/`` or ``notes.txt``) is kept. What a run writes there is in :mod:`.state`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .._locations import Location
from .._version import FORMAT

__all__ = [
    "classify",
    "owned_output",
    "recorded_entries",
]

STATE_DIR = ".fstack_dask"
RUN_FILE = "run.json"
ID_FILE = ("0", ".fstack_dask-output")  # the output's id, in its full-resolution array
ID_KIND = "fstack_dask output"
FILES_FILE = "source-files.npz"
METHOD = "Pertuz et al. 2013 noise-robust selective all-in-focus fusion"
RUN_KIND = "fstack_dask run"
# zarr's LocalStore writes a key through a temporary '<stem>.<32 hex digits>.partial' file
# (at the very end: \Z, as "$" also matches before a last newline, and a user's
# 'zarr.json.<hex>.partial\n' was deleted by a resume's clean-up)
ZARR_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial\Z")
# What a run writes into the state folder, by name (as everywhere else: a user's notes.txt
# put into it went with it when a run finished): the lock, the record, the source's file
# list, their temporary files, a replacement's copied-markers; done-markers are block names.
# The lock's temporary file was "lock.<pid>.<hex>" from 2026-11-24 to 12-04: one a kill left
# was kept as a user's, and the state folder with it for good.
_OLD_LOCK_ASIDE = r"lock\.[0-9]+\.[0-9a-f]{32}"
_STATE_FILE = re.compile(
    rf"(lock|run\.json|source-files\.npz)(\.[0-9a-f]{{32}}\.tmp)?|{_OLD_LOCK_ASIDE}"
    r"|copied-[0-9a-f]{32}-[^/]+"
)
MARKER = re.compile(r"(L[1-9][0-9]*_)?(0|[1-9][0-9]*)(_(0|[1-9][0-9]*))*")


def state_written(path: str) -> bool:
    """Whether ``path`` (``/``-separated, inside an output's state folder) is one a run
    writes: :data:`_STATE_FILE`, the ``done`` folder and the block markers in it."""
    folder, sep, name = path.partition("/")
    if folder == "done":
        return not sep or bool(MARKER.fullmatch(name))
    return bool(_STATE_FILE.fullmatch(path))


def _read_json(location: Location) -> Any:
    try:
        return json.loads(location.read_bytes())
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError, RecursionError):
        return None


def provenance_attribute(location: Location) -> dict[str, Any] | None:
    """The provenance attribute in ``location``'s ``zarr.json``, ours or copied from ours."""
    meta = _read_json(location.child("zarr.json"))
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    ours = attrs.get("fstack_dask") if isinstance(attrs, dict) else None
    if isinstance(ours, dict) and ours.get("method") == METHOD:
        return ours
    return None


def output_id(location: Location) -> str | None:
    """The id in the output's id file, or None."""
    body = _read_json(location.child(*ID_FILE))
    if isinstance(body, dict) and body.get("kind") == ID_KIND:
        found = body.get("output_id")
        return found if isinstance(found, str) else None
    return None


def provenance(location: Location) -> dict[str, Any] | None:
    """Our provenance attribute of the output at ``location``, or None if it has none, or if
    the attribute names an output id that the output's own id file does not hold (attributes
    copied into a store that is not ours)."""
    ours = provenance_attribute(location)
    if ours is None or "output_id" not in ours:  # none, or an output from before ids
        return ours
    named = ours["output_id"]  # a copy may carry null: it must match an id file's string
    return ours if isinstance(named, str) and named and output_id(location) == named else None


def copied_provenance(location: Location) -> bool:
    """Whether ``location``'s ``zarr.json`` carries our provenance without being our output."""
    return provenance(location) is None and provenance_attribute(location) is not None


def run_record(location: Location) -> dict[str, Any] | None:
    record = _read_json(location.child(STATE_DIR, RUN_FILE))
    if isinstance(record, dict) and record.get("kind") == RUN_KIND:
        return record
    return None


def newer_format(params: Any) -> str | None:
    """Why this version cannot read the output whose record (or provenance) holds ``params``:
    a run begun by a newer version keeps its records in a format this one does not know
    (records without a format hold the first); or None."""
    # ("records_format": a TIFF's embedded record says "format": "ome-tiff", another thing)
    found = params.get("records_format", 1) if isinstance(params, Mapping) else 1
    if isinstance(found, int) and not isinstance(found, bool) and found <= FORMAT:
        return None
    version = params.get("version") if isinstance(params, Mapping) else None
    return (
        f"it was begun by fstack_dask {version or '(an unknown version)'}, which keeps its "
        f"records in a format this version does not know (format {found!r}; this version reads "
        f"format {FORMAT} and older)"
    )


def entries_of(params: Mapping[str, Any]) -> list[str]:
    """The top-level entries an output with these parameters has (its record, or for outputs
    written before records listed them, what its levels and maps imply)."""
    listed = params.get("entries")
    if isinstance(listed, list) and all(isinstance(e, str) for e in listed):
        return list(listed)
    try:
        levels = int(params.get("levels") or 0)
    except (TypeError, ValueError):
        levels = 0
    maps = [m for m in ("depth", "selectivity") if params.get(f"{m}_map")]
    return ["zarr.json", *(str(k) for k in range(levels + 1)), *maps]


def recorded_entries(location: Location) -> set[str] | None:
    """The entries of the output at ``location`` that fstack_dask wrote, by its own record
    (provenance and run record), with the state folder; None if it is not our output."""
    ours = provenance(location)
    record = run_record(location)
    if ours is None and record is None:
        return None
    entries = {STATE_DIR}
    if ours is not None:
        entries.update(entries_of(ours))
    if record is not None and isinstance(record.get("params"), dict):
        entries.update(entries_of(record["params"]))
    return entries


def foreign_entries(location: Location) -> list[str]:
    """Entries of our output at ``location`` that fstack_dask did not write."""
    entries = recorded_entries(location) or set()
    return [
        n
        for n in location.listdir()
        # zarr's temporary file of zarr.json ("zarr.<hex>.partial"), not a user's zarr.notes...
        # nor a user's folder so named (left out of the new output by an overwrite)
        if n not in entries and (ZARR_PARTIAL.sub("", n) != "zarr" or location.child(n).isdir())
    ]


def classify(location: Location) -> str:
    """``"absent"``, ``"file"``, ``"empty"``, ``"complete"`` / ``"unfinished"`` (ours),
    ``"claimed"`` (only what a run killed while claiming it left), or ``"other"`` (exists,
    and is not ours)."""
    if not location.exists():
        return "absent"
    if not location.isdir():
        return "file"
    if not location.listdir():
        return "empty"
    attrs = provenance(location)
    if attrs is not None:
        return "complete" if attrs.get("complete") is True else "unfinished"
    if run_record(location) is not None:
        return "unfinished"
    if _only_a_claim(location):
        return "claimed"
    return "other"


# matched whole (fullmatch): "$" also matches before a last newline, and a user's
# "lock.0a.tmp\n" was taken for a leftover and deleted with the claim; an earlier release's
# lock aside too (a claim it left was "not an fstack_dask output" for good)
_CLAIM_LEFTOVER = re.compile(
    rf"(lock|run\.json|source-files\.npz)\.[0-9a-f.]+\.tmp|{_OLD_LOCK_ASIDE}"
)


def _only_a_claim(location: Location) -> bool:
    """Whether ``location`` holds nothing but the state folder of a run killed while it
    claimed the folder (before its run record): its lock, an empty ``done/``, the source's
    file list (written just before the record: a run killed or terminated between the two
    was refused by every later run, --resume included: an adversarial run, 2026-12-06),
    temporary files of its own writes, or nothing at all."""
    if location.listdir() != [STATE_DIR]:
        return False
    state = location.child(STATE_DIR)
    try:
        names = state.listdir()
    except (FileNotFoundError, NotADirectoryError):
        return False
    return all(claim_entry(state, name) for name in names)


def claim_entry(state: Location, name: str) -> bool:
    """Whether the entry ``name`` of the state folder ``state`` is one a run killed while it
    claimed the folder leaves (:func:`_only_a_claim`): asked again of each entry right before
    it is removed, as a user may have put a file there since the folder was judged."""
    entry = state.child(name)
    if name == "done":
        return entry.isdir() and not entry.listdir()
    if name == "lock":
        body = _read_json(entry)
        return isinstance(body, dict) and "token" in body
    if name == FILES_FILE:
        return _is_npz(entry)
    return bool(_CLAIM_LEFTOVER.fullmatch(name))


def _is_npz(location: Location) -> bool:
    """Whether ``location`` is a file that NumPy's ``savez`` could have written (a zip)."""
    try:
        # the magic alone, not a list of a million files (not a named pipe's wait either)
        return location.read_bytes(first=4) == b"PK\x03\x04"
    except (OSError, ValueError):
        return False


def owned_output(location: Location) -> str | None:
    """For :func:`~fstack_dask._locations.remove_tree`: None if ``location`` is ours."""
    kind = classify(location)
    if kind in ("complete", "unfinished", "absent", "empty"):
        return None
    if kind == "file":
        return "it is a file, not an fstack_dask output"
    return "it is not an fstack_dask output (no fstack_dask provenance or run record)"
