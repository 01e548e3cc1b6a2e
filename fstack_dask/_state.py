"""What a run keeps in its output folder: ownership, the run record, done-markers, the source's
fingerprint, and the checks that decide what may be resumed, replaced or deleted.

An output folder is *ours* when its ``zarr.json`` carries our provenance attribute (a complete
or an unfinished output), or when it holds our run record ``.fstack_dask/run.json`` (a run
killed while creating the output). Nothing else is ever resumed into, replaced or deleted:
an empty ``.fstack_dask/`` folder, or any Zarr store without our provenance, is not ours.

The run record stores what identifies the source (canonical location, shape, dtype, axes,
read units, a digest of its metadata files) and ``source-files.npz`` the size and
modification time of each of its data files, so that a resume can tell whether the source
changed since the run began, and which finished blocks a change would affect.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._locations import Location
from ._write import fsync_dir

__all__ = ["OutputState", "classify", "owned_output"]

STATE_DIR = ".fstack_dask"
RUN_FILE = "run.json"
FILES_FILE = "source-files.npz"
METHOD = "Pertuz et al. 2013 noise-robust selective all-in-focus fusion"
RUN_KIND = "fstack_dask run"


def _read_json(location: Location) -> Any:
    try:
        return json.loads(location.read_bytes())
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, ValueError):
        return None


def provenance(location: Location) -> dict[str, Any] | None:
    """Our provenance attribute of the output at ``location``, or None if it has none."""
    meta = _read_json(location.child("zarr.json"))
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    ours = attrs.get("fstack_dask") if isinstance(attrs, dict) else None
    if isinstance(ours, dict) and ours.get("method") == METHOD:
        return ours
    return None


def run_record(location: Location) -> dict[str, Any] | None:
    record = _read_json(location.child(STATE_DIR, RUN_FILE))
    if isinstance(record, dict) and record.get("kind") == RUN_KIND:
        return record
    return None


def classify(location: Location) -> str:
    """``"absent"``, ``"file"``, ``"empty"``, ``"complete"`` / ``"unfinished"`` (ours), or
    ``"other"`` (exists, and is not ours)."""
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
    return "other"


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

    def mark_done(self, name: str) -> None:
        """Record a finished block (after its data is durable), durably."""
        marker = self.done_folder.child(name)
        if marker.is_local:
            fd = os.open(marker.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(self.done_folder.path)
        else:
            marker.fs.pipe_file(marker.path, b"")

    def done(self) -> set[str]:
        try:
            return set(self.done_folder.listdir())
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def n_done(self) -> int:
        return len(self.done())

    def remove_partial_files(self) -> None:
        """Delete the temporary files of zarr writes that a kill interrupted."""
        if not self.output.is_local:
            return
        for root, dirs, files in os.walk(self.output.path):
            if root == self.output.path:
                dirs[:] = [d for d in dirs if d != STATE_DIR]
            for name in files:
                if name.endswith(".partial"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(root, name))


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


def source_files(entries: Iterable[tuple[str, int, int]]) -> dict[str, np.ndarray]:
    """The (name, size, mtime) list of a source's data files, as compact arrays."""
    names, sizes, stamps = [], [], []
    for name, size, stamp in entries:
        names.append(name)
        sizes.append(size)
        stamps.append(stamp)
    return {
        "names": np.array(names, dtype=str),
        "sizes": np.array(sizes, dtype=np.int64),
        "stamps": np.array(stamps, dtype=np.int64),
    }


def changed_files(old: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray]) -> list[str]:
    """Names of data files added, removed, or with another size or modification time."""

    def table(files: Mapping[str, np.ndarray]) -> dict[str, tuple[int, int]]:
        stamps = zip(files["sizes"].tolist(), files["stamps"].tolist(), strict=True)
        return dict(zip(files["names"].tolist(), stamps, strict=True))

    before, after = table(old), table(new)
    changed = [n for n, v in after.items() if before.get(n) != v]
    changed += [n for n in before if n not in after]
    return sorted(changed)


def identity_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between two source identities, as phrases for a message."""
    out = []
    for key, what in (
        ("location", "location"),
        ("kind", "format"),
        ("shape", "shape"),
        ("dtype", "dtype"),
        ("axes", "axes"),
        ("unit_shape", "chunking"),
        ("level", "level"),
        ("metadata_sha256", "metadata"),
        ("content", "content"),
    ):
        if stored.get(key) != current.get(key):
            if key in ("metadata_sha256", "content"):
                out.append(f"its {what} changed")
            else:
                out.append(f"its {what} was {stored.get(key)!r} and is now {current.get(key)!r}")
    return out
