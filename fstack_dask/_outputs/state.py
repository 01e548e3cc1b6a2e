"""What a run writes into its output's state folder: the output's id, the run record, the
source's file list and the done-markers, durably; and what a resume reads back from them.
Which folders and entries are ours is in :mod:`.ownership`.

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
import stat
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._locations import Location
from .ownership import (
    FILES_FILE,
    ID_FILE,
    ID_KIND,
    MARKER,
    RUN_FILE,
    RUN_KIND,
    STATE_DIR,
    ZARR_PARTIAL,
    run_record,
)
from .write import fsync_dir

__all__ = [
    "OutputState",
]


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
        """The blocks' done-markers (by name: a user's notes.txt put into ``done/`` is none,
        and made the count of blocks left one less; and, where local, files: a user's folder
        named like one failed every --resume, "Is a directory", "10 of 9 blocks done")."""
        try:
            if self.done_folder.is_local:  # (the kind of each entry comes with the listing)
                with os.scandir(self.done_folder.path) as entries:
                    names = [e.name for e in entries if e.is_file(follow_symlinks=False)]
            else:
                names = self.done_folder.listdir()
        except (FileNotFoundError, NotADirectoryError):
            return set()
        return {n for n in names if MARKER.fullmatch(n)}

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
                path = os.path.join(base, name)
                # (not a user's zarr.notes.<hex>..., nor a folder or a link so named: zarr
                # writes plain files, and a folder made every resume fail, "Is a directory")
                if ZARR_PARTIAL.sub("", name) == "zarr" and _plain_file(path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
        for entry in entries:
            top = os.path.join(base, entry)
            if entry == STATE_DIR or not os.path.isdir(top) or os.path.islink(top):
                continue
            for root, _dirs, files in os.walk(top):
                rel = os.path.relpath(root, top).replace(os.sep, "/")
                for name in files:
                    path = name if rel == "." else f"{rel}/{name}"
                    full = os.path.join(root, name)
                    if ZARR_PARTIAL.search(name) and ours(entry, path) and _plain_file(full):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(full)


def _plain_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


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
