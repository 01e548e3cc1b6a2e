"""What a run keeps in its output folder: ownership, the run record, done-markers, the source's
fingerprint, and the checks that decide what may be resumed, replaced or deleted.

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
``2024/`` or ``notes.txt``) is kept.

The run record stores what identifies the source and ``source-files.npz`` its data files'
fingerprint (:mod:`.fingerprint`); each done-marker holds a digest of the samples its block
read. A resume can thus tell whether the source changed since the run began, which finished
blocks a change would affect, and, by reading those blocks again, whether their content
really changed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._locations import Location
from .._version import FORMAT
from .write import fsync_dir

__all__ = [
    "OutputState",
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


def new_output_id(params: Mapping[str, Any]) -> str:
    """The id of an output created with ``params``: their digest, not a random id, so that
    two runs of the same job write the same bytes (a resume after the source's files were
    touched, too). It need not be unique, only absent where attributes were copied."""
    body = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def write_output_id(location: Location, output_id: str) -> None:
    """Write the id file of the output about to be created at ``location`` (before its
    provenance names the id)."""
    folder = location.child(ID_FILE[0])
    folder.fs.makedirs(folder.path, exist_ok=True)
    _write_atomic(
        location.child(*ID_FILE), json.dumps({"kind": ID_KIND, "output_id": output_id}).encode()
    )


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
        if n not in entries and not (n.startswith("zarr.") and ZARR_PARTIAL.search(n))
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
# "lock.0a.tmp\n" was taken for a leftover and deleted with the claim
_CLAIM_LEFTOVER = re.compile(r"(lock|run\.json|source-files\.npz)\.[0-9a-f.]+\.tmp")


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
    for name in names:
        entry = state.child(name)
        if name == "done":
            if not entry.isdir() or entry.listdir():
                return False
        elif name == "lock":
            body = _read_json(entry)
            if not (isinstance(body, dict) and "token" in body):
                return False
        elif name == FILES_FILE:
            if not _is_npz(entry):
                return False
        elif not _CLAIM_LEFTOVER.fullmatch(name):
            return False
    return True


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


@dataclass(frozen=True)
class OutputState:
    """The state folder of one output (or of its staging folder)."""

    output: Location

    @property
    def folder(self) -> Location:
        return self.output.child(STATE_DIR)

    @property
    def lock(self) -> Location:
        return self.folder.child("lock")

    @property
    def done_folder(self) -> Location:
        return self.folder.child("done")

    # -- the record --------------------------------------------------------------------

    def write_record(self, record: Mapping[str, Any], files: Any = None) -> None:
        """Write ``run.json`` (and the source's file list) atomically and durably."""
        fs = self.folder.fs
        fs.makedirs(self.done_folder.path, exist_ok=True)
        body = json.dumps({"kind": RUN_KIND, **record}, indent=1).encode()
        if files is not None:
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **files)
            _write_atomic(self.folder.child(FILES_FILE), buffer.getvalue())
        _write_atomic(self.folder.child(RUN_FILE), body)

    def record(self) -> dict[str, Any] | None:
        return run_record(self.output)

    def files(self) -> dict[str, np.ndarray] | None:
        try:
            raw = self.folder.child(FILES_FILE).read_bytes()
        except FileNotFoundError:
            return None
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    # -- done-markers ------------------------------------------------------------------

    def mark_done(
        self,
        name: str,
        digest: str = "",
        stored: list[str] | None = None,
        s_min: float | None = None,
        filled: bool = False,
        sizes: Sequence[int] | None = None,
    ) -> None:
        """Record a finished block (after its data is durable), durably, with the digest of
        the samples it read (``fingerprint.input_digest``; empty for pyramid blocks) on its first
        line, the chunk keys it stored (where known) on its second, and on a third the
        smallest selectivity ``S`` of its pixels (``s_min``, exact: a later run of the same
        output needs its image's smallest ``S`` to fill undefined ones); then ``filled`` (a
        line of its own) where its pixels depend on that smallest ``S``, and the stored files'
        sizes (local outputs: a copy cut short leaves a chunk file shorter; ``sizes``: as
        :func:`.write.make_durable` found them, else a stat of each)."""
        marker = self.done_folder.child(name)
        text = digest if stored is None else f"{digest}\n{' '.join(stored)}"
        extra = [] if s_min is None else [f"s_min {s_min.hex()}"]
        if filled:
            extra.append("filled")
        if marker.is_local and stored:
            if sizes is None or len(sizes) != len(stored):
                sizes = [os.stat(os.path.join(self.output.path, k)).st_size for k in stored]
            extra.append(f"sizes {' '.join(map(str, sizes))}")
        if extra:  # from the third line on: the second holds the stored keys
            text = (text if stored is not None else f"{text}\n") + "\n" + "\n".join(extra)
        body = text.encode()
        if marker.is_local:
            # the umask decides, as for the output's other files (0o644 made a group's
            # lock and markers 644 under umask 002, where its files are 664)
            fd = os.open(marker.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                if os.write(fd, body) != len(body):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), marker.path)
                os.fsync(fd)
            except BaseException:  # a disk full left an empty marker: no marker, not done
                with contextlib.suppress(OSError):
                    os.unlink(marker.path)
                raise
            finally:
                os.close(fd)
            fsync_dir(self.done_folder.path)
        else:
            marker.fs.pipe_file(marker.path, body)

    def _marker_lines(self, name: str) -> list[str]:
        try:
            text = self.done_folder.child(name).read_bytes().decode("ascii", "replace")
        except (FileNotFoundError, NotADirectoryError):
            return []
        return text.split("\n")

    def marker_digest(self, name: str) -> str | None:
        """The input digest a done-marker holds (None: none recorded, or no marker)."""
        lines = self._marker_lines(name)
        return (lines[0].strip() or None) if lines else None

    def marker_s_min(self, name: str) -> float | None:
        """The smallest ``S`` a block's done-marker records (NaN: none defined; None: no
        marker, or one written before markers recorded it)."""
        for line in self._marker_lines(name)[2:]:
            if line.startswith("s_min "):
                return float.fromhex(line[len("s_min ") :].strip())
        return None

    def marker_filled(self, name: str) -> bool:
        """Whether a block's pixels were fused with its image's smallest ``S`` (markers
        written before 2026-12-06 do not say: False)."""
        return "filled" in (line.strip() for line in self._marker_lines(name)[2:])

    def drop_markers_without_data(self, torn: list[str] | None = None) -> list[str]:
        """Remove the done-markers of blocks whose stored chunk files are gone or shorter or
        longer than they were written (an unfinished output copied in part, a copy cut
        short), so that those blocks are fused again; returns their names. Local outputs,
        and markers that list their keys (from 2026-12-05; sizes from 2026-12-06), only.

        With ``torn``, the markers a crash cut short (:func:`_torn`) go too, named there: of
        runs begun since markers hold a digest and an ``s_min`` (2026-12-05: an earlier
        run's markers are empty). (One pass: each marker is read once, 10^5 on NFS.)"""
        if not self.output.is_local:
            return []
        if torn is not None and "undefined_selectivity" not in (
            (self.record() or {}).get("params") or {}
        ):
            torn = None
        dropped = []
        for name in sorted(self.done()):
            lines = self._marker_lines(name)
            if torn is not None and _torn(name, lines):
                torn.append(name)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.done_folder.child(name).path)
                continue
            keys = lines[1].split() if len(lines) > 1 else []
            sizes = next((ln.split()[1:] for ln in lines[2:] if ln.startswith("sizes ")), None)
            if sizes is None or len(sizes) != len(keys):
                sizes = [None] * len(keys)  # a marker from before sizes: only presence
            paths = (os.path.join(self.output.path, k) for k in keys)
            if not all(map(_holds, paths, sizes)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.done_folder.child(name).path)
                dropped.append(name)
        if dropped or torn:
            fsync_dir(self.done_folder.path)
        return dropped

    def drop_markers(self, names: Iterable[str]) -> None:
        """Remove these done-markers, durably: their blocks are fused again by a resume."""
        for name in names:
            marker = self.done_folder.child(name)
            with contextlib.suppress(FileNotFoundError):
                if marker.is_local:
                    os.unlink(marker.path)
                else:
                    marker.fs.rm(marker.path)
        if self.done_folder.is_local:
            fsync_dir(self.done_folder.path)

    def done(self) -> set[str]:
        try:
            return set(self.done_folder.listdir())
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def n_done(self) -> int:
        """Finished blocks of level 0 (pyramid levels' markers are named ``L1_...``)."""
        return sum(not n.startswith("L") for n in self.done())

    def remove_partial_files(
        self, entries: Iterable[str], ours: Callable[[str, str], bool]
    ) -> None:
        """Delete the temporary files of zarr writes that a kill interrupted: inside our
        ``entries`` only (and ``zarr.json``'s beside them), those ``ours(entry, path)`` claims
        (:func:`.removal.ours_within`), never a user's ``*.partial`` (a Zarr store of the
        user's kept inside a level: its own interrupted write's file went with a resume)."""
        if not self.output.is_local:
            return
        base = self.output.path
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(base):
                if name.startswith("zarr.") and ZARR_PARTIAL.search(name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(base, name))
        for entry in entries:
            top = os.path.join(base, entry)
            if entry == STATE_DIR or not os.path.isdir(top) or os.path.islink(top):
                continue
            for root, _dirs, files in os.walk(top):
                rel = os.path.relpath(root, top).replace(os.sep, "/")
                for name in files:
                    path = name if rel == "." else f"{rel}/{name}"
                    if ZARR_PARTIAL.search(name) and ours(entry, path):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(os.path.join(root, name))


def _torn(name: str, lines: list[str]) -> bool:
    """Whether a done-marker was cut short by a crash (a kill between its creation and its
    write, a power cut before its fsync: empty, or zeros): its block's digest and smallest
    ``S`` are lost, and the resume's fill took a larger smallest ``S`` than the image's (a
    review, 2026-12-06)."""
    if not lines:  # gone meanwhile
        return False
    text = "\n".join(lines)
    if not text or "\x00" in text or (not name.startswith("L") and not lines[0].strip()):
        return True
    for line in lines[2:]:
        if line.startswith("s_min "):
            try:
                float.fromhex(line[len("s_min ") :].strip())
            except ValueError:
                return True
    return False


def _holds(path: str, size: str | None) -> bool:
    """Whether the chunk file at ``path`` is there, with ``size`` bytes where it is known."""
    try:
        found = os.stat(path).st_size
    except OSError:
        return False
    return size is None or str(found) == size


def _write_atomic(location: Location, body: bytes) -> None:
    if not location.is_local:
        location.fs.pipe_file(location.path, body)
        return
    aside = f"{location.path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(aside, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(aside, location.path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)
    fsync_dir(os.path.dirname(location.path))


# --------------------------------------------------------------------- source identity
