"""What a reader returns: a :class:`Source`, the stack to fuse, and what identifies it.

A :class:`Source` is the level to fuse (an array-like: ``shape``, ``dtype``, ``__getitem__``
of slices), its axes, how it is stored and read (``unit_shape``: a chunk, or a shard, along
each axis; ``read_shape``: what a run's reads are planned by), its physical metadata (scale,
units, translation, channels) and, for resumes, how to list the files it is made of.
Every reader also refuses, from metadata alone, a stack larger than fstack_dask reads
(:func:`check_extent`).

Axes are strings with one letter per array dimension: ``z`` is the focus axis, ``y`` and
``x`` the image plane, ``c`` the optional channel axis and any other letter (e.g. ``t``) an
independent batch axis.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._locations import Location, resolve
from .._params import wider_than_float64

__all__ = [
    "MAX_CHANNELS",
    "MAX_LENGTH",
    "MAX_VOXELS",
    "Source",
    "check_dtype_and_extent",
    "check_extent",
    "not_a_file",
]


_METADATA_FILES = ("zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata")


# The largest stack fstack_dask reads (docs/safety.md, "Bad input"). Far beyond any real one (a
# 10^6 x 10^6 x 21 whole-slide stack has 2.1e13 voxels), so that metadata claiming more is
# damaged or not a focus stack: 2**31 - 1 along an axis is what int32-indexed tools (Fiji,
# Bio-Formats) can hold, 2**53 voxels keeps every count exact in a float64 (JSON readers of
# zarr.json), and one OME channel entry is written per channel.
MAX_LENGTH = 2**31 - 1


MAX_VOXELS = 2**53


MAX_CHANNELS = 2**16


@dataclass(frozen=True, eq=False)
class Source:
    """An opened input focus stack (one resolution level).

    Attributes
    ----------
    array : zarr.Array or array-like
        The data: ``shape``, ``dtype``, ``ndim`` and ``__getitem__`` with a tuple of slices.
    axes : str
        One letter per dimension of ``array``.
    unit_shape : tuple of int
        What one stored data file holds along each axis (a chunk, or a shard when the array
        is sharded): resumes map the files to it, and messages name its files.
    inner_shape : tuple of int or None
        A sharded array's chunks, which zarr reads and decodes alone (a read of part of a
        shard decodes only the chunks it covers); None where the array is not sharded.
    by_inner_chunks : bool
        Runs plan their reads by ``inner_shape`` rather than by whole shards (see
        :attr:`read_shape`).
    description : str
        How messages name it, e.g. ``"src 'stack.zarr'"``.
    location : Location or None
        Where it is stored (None for data in memory).
    kind : str
        ``"zarr"``, ``"ome-zarr"``, ``"tiff"``, ...
    scale, units, translation : dict
        Physical pixel size, unit and offset per axis letter (only what is known).
    channels : list of dict or None
        Per channel: ``label``, ``color`` (``"RRGGBB"``), ``window``, as OME's ``omero``.
    rgb : bool
        The format stores colour samples (used by ``channels="auto"``).
    separate_channels : bool
        The format says ``c`` holds separate channels, not colour samples (used by
        ``channels="auto"``: see :class:`.stack_meta.OpenedStack`).
    ome_version : str or None
        OME-NGFF version of an OME-Zarr source.
    level : int
        The pyramid level opened (0: full resolution).
    notes, warnings : tuple of str
        How the input was read (the plane files used), and what may make the result other
        than the user meant; the run logs the first and warns with the second where it is
        planned (never in worker processes, which open the source again).
    """

    array: Any
    axes: str
    unit_shape: tuple[int, ...]
    description: str
    inner_shape: tuple[int, ...] | None = None
    by_inner_chunks: bool = False
    location: Location | None = None
    kind: str = "zarr"
    scale: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    translation: dict[str, float] = field(default_factory=dict)
    channels: list[dict[str, Any]] | None = None
    rgb: bool = False
    separate_channels: bool = False  # the format says c holds channels, not colour
    ome_version: str | None = None
    level: int = 0
    metadata_files: tuple[Location, ...] = ()
    data_root: Location | None = None  # the folder holding the data files (zarr: the array)
    files: tuple[str, ...] = ()  # or the data files themselves (TIFF, plane files)
    cached_reads: bool = True  # False: the reader caches itself, or the data is in memory
    metadata_text: str = ""  # what identifies a non-Zarr source's metadata
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape)

    @property
    def read_shape(self) -> tuple[int, ...]:
        """What one read decodes along each axis: blocks are aligned to it, and each is
        decoded about once (a shard, or its chunks where the run reads by them)."""
        if self.by_inner_chunks and self.inner_shape is not None:
            return self.inner_shape
        return self.unit_shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def size(self, letter: str) -> int:
        return self.shape[self.axes.index(letter)]

    @property
    def in_memory(self) -> bool:
        """Reads need no unit cache: the data is in memory, or the reader caches itself."""
        return isinstance(self.array, np.ndarray) or not self.cached_reads

    def close(self) -> None:
        """Close the files this process opened to read the source (a later read opens them
        again). An array the caller passed in (an h5py dataset, say) is theirs: left open.
        (Kept open, a refused run's file stayed open for as long as Jupyter kept its
        traceback.)"""
        close = getattr(self.array, "close", None)
        if callable(close) and type(self.array).__module__.startswith("fstack_dask."):
            close()

    def protected(self) -> list[Location]:
        """What a dst must never overlap: the store, or each of the source's files."""
        if self.files:
            return [resolve(f, name="src") for f in self.files]
        return [self.location] if self.location is not None else []

    def missing_units(self, names: Iterable[str]) -> tuple[int, int]:
        """(missing, stored) chunk (or shard) files of a Zarr array source, among its data
        files ``names`` (relative to ``data_root``); (0, 0) for other sources. A missing one
        reads as the fill value, as Zarr means it, and is also what an interrupted copy
        leaves."""
        encode = getattr(getattr(self.array, "metadata", None), "encode_chunk_key", None)
        if encode is None or self.data_root is None:
            return 0, 0
        grid = getattr(self.array, "shards", None) or self.array.chunks
        stored = math.prod(-(-n // g) for n, g in zip(self.array.shape, grid, strict=True))
        key = encode((0,) * len(grid))  # c/0/0/0, 0.0.0, ...: its coordinates' places
        pattern = re.compile("".join(r"\d+" if ch == "0" else re.escape(ch) for ch in key))
        found = sum(1 for name in names if pattern.fullmatch(name.replace(os.sep, "/")))
        if not found and self.data_root.protocol == "http":  # an object store over HTTP
            return 0, 0  # lists no folder: no word on which chunks are stored
        return max(0, stored - found), stored

    # -- identity, for resumes and for worker processes -------------------------------

    def identity(self) -> dict[str, Any]:
        """What tells this source from another without reading its data: where it is, its
        format, shape, dtype, axes, units of reading, level and metadata.

        A resume compares it with the interrupted run's; a worker process or cluster worker
        that opened the source again compares its own with the one the run was planned
        from (:class:`~.open.Reopen`)."""
        return {
            "location": self.location.url if self.location is not None else None,
            "kind": self.kind,
            "shape": list(self.shape),
            "dtype": str(self.dtype),
            "axes": self.axes,
            "unit_shape": list(self.unit_shape),
            "level": int(self.level),
            "metadata_sha256": self.metadata_digest(),
            "metadata_content_sha256": self.metadata_digest(where=False),
        }

    def metadata_digest(self, *, where: bool = True) -> str:
        """sha256 of the metadata files (the array's and its OME group's): with their paths,
        or (``where=False``) with their paths below the source's location only, the same for
        the same files reached through another mount (a requeued job on a node that mounts the
        project space elsewhere, a container's bind mount)."""
        h = hashlib.sha256(self.metadata_text.encode())
        root = self.location.path.rstrip("/") if self.location is not None else ""
        for loc in self.metadata_files:
            path = loc.path
            if not where and root and path.startswith(root):
                path = path[len(root) :]
            h.update(path.encode("utf-8", "surrogateescape"))
            try:
                h.update(loc.read_bytes())
            except FileNotFoundError:
                h.update(b"<missing>")
        return h.hexdigest()

    def data_files(
        self, links: list[str] | None = None
    ) -> Iterator[tuple[str, int, int, int, int]]:
        """(name relative to ``data_root``, size, mtime in ns, ctime in ns, inode) of every
        data file (ctime and inode 0 where the store has none).

        The ctime and the inode tell a file rewritten with its old size and mtime (``cp -p``,
        ``touch -r``) from the one a run read: no user call can set them back. ``links``
        gets the real path of each folder a symbolic link in a local store leads to: the
        source is there too, and no dst may overlap it (for a link to a file: the folder the
        file lies in)."""
        for path in self.files:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            yield path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino
        root = self.data_root
        if root is None:
            return
        if root.is_local:
            yield from _local_data_files(root.path, links, where=self.description)
            return
        fs = root.fs
        for path, info in sorted(fs.find(root.path, detail=True).items()):
            name = path[len(root.path.rstrip("/")) + 1 :]
            if name.rsplit("/", 1)[-1] in _METADATA_FILES:
                continue
            stamp = _stamp(info)
            if hasattr(stamp, "timestamp"):
                stamp = int(stamp.timestamp() * 1e9)
            elif not isinstance(stamp, (int, float)):
                stamp = _as_int(stamp)
            yield name, int(info.get("size") or 0), int(stamp), 0, _object_version(info)

    def unit_of_file(self, name: str) -> tuple[int, ...] | None:
        """The unit (chunk or shard grid index) a data file holds, or None if unknown."""
        meta = getattr(self.array, "metadata", None)
        if meta is None:
            return None
        name = name.replace(os.sep, "/")
        if getattr(meta, "zarr_format", 3) == 2:
            sep = meta.dimension_separator or "."
            parts = name.split(sep)
        else:
            encoding = meta.chunk_key_encoding
            sep = encoding.separator
            if encoding.name == "default":
                if not name.startswith("c"):
                    return None
                name = name[2:] if name.startswith("c" + sep) else name[1:]
            parts = name.split(sep) if name else []
        try:
            index = tuple(int(p) for p in parts)
        except ValueError:
            return None
        return index if len(index) == len(self.shape) else None


def check_dtype_and_extent(dtype: Any, shape: tuple[int, ...], axes: str, where: str) -> None:
    """Refuse samples that are not integers or floats (bool, complex, strings, objects) and
    an axis of length 0, whatever reader opened them (an in-memory array skipped these
    checks: an empty z axis wrote a complete image of zeros, a bool array a bool image, an
    adversarial run); then :func:`check_extent`."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        raise TypeError(f"{where} has dtype {dtype}; expected an integer or floating-point dtype")
    if (why := wider_than_float64(dtype)) is not None:
        raise TypeError(f"{where} {why}")
    for letter, length in zip(axes, shape, strict=True):
        if length == 0:
            raise ValueError(
                f"{where} has length 0 along axis {letter!r} (shape {tuple(shape)}); "
                f"expected at least one element per axis"
            )
    check_extent(tuple(int(n) for n in shape), axes, where)


def check_extent(shape: tuple[int, ...], axes: str, where: str) -> None:
    """Refuse a shape beyond what fstack_dask reads (``MAX_LENGTH`` along an axis,
    ``MAX_CHANNELS`` channels, ``MAX_VOXELS`` in all): such metadata is damaged.

    Parameters
    ----------
    shape : tuple of int
        The source's shape, as its metadata states it.
    axes : str
        One letter per dimension.
    where : str
        How messages name the source, e.g. ``"src 'stack.zarr'"``.

    Raises
    ------
    ValueError
        Naming ``where``, the axis (or the voxel count) and the bound.
    """
    for letter, length in zip(axes, shape, strict=True):
        if length > MAX_LENGTH:
            raise ValueError(
                f"{where} has length {length} along axis {letter!r} (shape {shape}); "
                f"fstack_dask reads at most 2**31 - 1 = {MAX_LENGTH} along an axis (damaged "
                "metadata?)"
            )
    if "c" in axes and shape[axes.index("c")] > MAX_CHANNELS:
        raise ValueError(
            f"{where} has {shape[axes.index('c')]} channels along axis 'c' (shape {shape}); "
            f"fstack_dask reads at most 2**16 = {MAX_CHANNELS} channels (damaged metadata, or "
            "the wrong axes?)"
        )
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        raise ValueError(
            f"{where} has shape {shape}, {voxels:.3g} voxels; fstack_dask reads at most "
            f"2**53 = {MAX_VOXELS:.3g} voxels (damaged metadata?)"
        )


def _local_data_files(
    base: str, links: list[str] | None = None, *, where: str = "src"
) -> Iterator[tuple[str, int, int, int, int]]:
    """``Source.data_files`` of a local store, in ``os.walk``'s top-down sorted order.

    ``os.scandir`` entries, each stat'ed through its folder: a store has a file per chunk
    (millions of them, for big stacks), and this is 2.5x faster than ``os.walk`` plus an
    ``os.stat`` of each joined path (``benchmarks/listing.py``). Symbolic links to folders
    are followed (a store assembled from others by links reads its chunks through them), each
    folder listed once, and their real paths added to ``links``; for a link to a file, the
    real path of the folder it lies in.

    A data file that is not a regular file (a named pipe, a device such as a link to
    ``/dev/zero``, a socket) is refused here, naming it: reading one never ends, or never
    stops (an adversarial run, 2026-12-05).
    """
    folders = [(base, "")]
    seen: set[tuple[int, int]] = set()
    with contextlib.suppress(OSError):
        top = os.stat(base)
        seen.add((top.st_dev, top.st_ino))
    while folders:
        folder, rel = folders.pop()
        files, subfolders = [], []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir():
                        if links is not None and entry.is_symlink():
                            links.append(os.path.realpath(entry.path))
                        st = entry.stat()
                        if (st.st_dev, st.st_ino) not in seen:  # a link loop is listed once
                            seen.add((st.st_dev, st.st_ino))
                            subfolders.append((entry.path, rel + entry.name + os.sep))
                    elif entry.name not in _METADATA_FILES and not entry.name.endswith(".partial"):
                        files.append(entry)
                        if links is not None and entry.is_symlink():  # the folder it lies in
                            links.append(os.path.dirname(os.path.realpath(entry.path)))
        except FileNotFoundError:
            continue
        for entry in sorted(files, key=lambda e: e.name):
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(
                    f"{where}: {rel + entry.name!r} is {not_a_file(st.st_mode)}, not a regular "
                    "file; a store's chunks must be files"
                )
            yield rel + entry.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino
        folders.extend(sorted(subfolders, reverse=True))


def not_a_file(mode: int) -> str:
    """What a file of ``mode`` (``st_mode``, followed through links) is, where not a file."""
    kinds = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISDIR, "a folder"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _as_int(text: Any) -> int:
    return int(hashlib.sha256(str(text).encode()).hexdigest()[:15], 16)


def _stamp(info: Mapping[str, Any]) -> Any:
    """An object's modification time as its store lists it. On GCS (which lists a
    ``generation``) its creation time, which each rewrite renews: gcsfs's ``mtime`` is the
    object's ``updated``, which a change of its metadata alone moves too, and every such
    file was read again as a suspect (what a086063 meant to end with the generation)."""
    if info.get("generation") and info.get("ctime"):
        return info["ctime"]
    return info.get("mtime") or info.get("LastModified") or info.get("ETag") or 0


def _object_version(info: Mapping[str, Any]) -> int:
    """An object's version as its store lists it (S3's and Azure's ETag, GCS's generation),
    in the inode's column: it tells a rewrite of the same size within the second that S3's
    LastModified cannot (a review, 2026-12-06). GCS's generation before its ETag, which a
    change of the object's metadata alone changes too. 0 where the store lists none."""
    tag = next((info[k] for k in ("generation", "ETag", "etag", "md5Hash") if info.get(k)), None)
    return 0 if tag is None else _as_int(tag)
