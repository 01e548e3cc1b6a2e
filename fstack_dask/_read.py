"""Opening focus stacks: Zarr arrays and OME-Zarr images, as one :class:`Source`.

A :class:`Source` is the level to fuse (an array-like: ``shape``, ``dtype``, ``__getitem__``
of slices), its axes, how it is best read (``unit_shape``: a chunk, or a shard, along each
axis), its physical metadata (scale, units, translation, channels) and, for resumes, how to
list the files it is made of. Nothing here reads pixel data; ``_fetch`` does that.

Axes are strings with one letter per array dimension: ``z`` is the focus axis, ``y`` and
``x`` the image plane, ``c`` the optional channel axis and any other letter (e.g. ``t``) an
independent batch axis.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._locations import Location, resolve
from ._ome import find_multiscales, parse_multiscale, parse_omero
from ._params import parse_axes

__all__ = ["MAX_CHANNELS", "MAX_LENGTH", "MAX_VOXELS", "Source", "check_extent", "open_zarr"]

_METADATA_FILES = ("zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata")
_SUPPORTED_KINDS = "iuf"

# The largest stack fstack_dask reads (README, "Bad input"). Far beyond any real one (a
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
        What one efficient read covers along each axis (a chunk, or a shard when the array
        is sharded): blocks are aligned to it and each unit is decoded about once.
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
    ome_version : str or None
        OME-NGFF version of an OME-Zarr source.
    level : int
        The pyramid level opened (0: full resolution).
    """

    array: Any
    axes: str
    unit_shape: tuple[int, ...]
    description: str
    location: Location | None = None
    kind: str = "zarr"
    scale: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    translation: dict[str, float] = field(default_factory=dict)
    channels: list[dict[str, Any]] | None = None
    rgb: bool = False
    ome_version: str | None = None
    level: int = 0
    metadata_files: tuple[Location, ...] = ()
    data_root: Location | None = None  # the folder holding the data files (zarr: the array)
    files: tuple[str, ...] = ()  # or the data files themselves (TIFF, plane files)
    cached_reads: bool = True  # False: the reader caches itself, or the data is in memory
    metadata_text: str = ""  # what identifies a non-Zarr source's metadata

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def size(self, letter: str) -> int:
        return self.shape[self.axes.index(letter)]

    @property
    def in_memory(self) -> bool:
        """Reads need no unit cache: the data is in memory, or the reader caches itself."""
        return isinstance(self.array, np.ndarray) or not self.cached_reads

    def protected(self) -> list[Location]:
        """What a dst must never overlap: the store, or each of the source's files."""
        if self.files:
            return [resolve(f, name="src") for f in self.files]
        return [self.location] if self.location is not None else []

    # -- identity, for resumes -------------------------------------------------------

    def metadata_digest(self) -> str:
        """sha256 of the metadata files (the array's and its OME group's)."""
        h = hashlib.sha256(self.metadata_text.encode())
        for loc in self.metadata_files:
            h.update(loc.path.encode())
            try:
                h.update(loc.read_bytes())
            except FileNotFoundError:
                h.update(b"<missing>")
        return h.hexdigest()

    def data_files(self) -> Iterator[tuple[str, int, int, int, int]]:
        """(name relative to ``data_root``, size, mtime in ns, ctime in ns, inode) of every
        data file (ctime and inode 0 where the store has none).

        The ctime and the inode tell a file rewritten with its old size and mtime (``cp -p``,
        ``touch -r``) from the one a run read: no user call can set them back."""
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
            yield from _local_data_files(root.path)
            return
        fs = root.fs
        for path, info in sorted(fs.find(root.path, detail=True).items()):
            name = path[len(root.path.rstrip("/")) + 1 :]
            if name.rsplit("/", 1)[-1] in _METADATA_FILES:
                continue
            stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or 0
            if hasattr(stamp, "timestamp"):
                stamp = int(stamp.timestamp() * 1e9)
            elif not isinstance(stamp, (int, float)):
                stamp = int(hashlib.sha256(str(stamp).encode()).hexdigest()[:15], 16)
            yield name, int(info.get("size") or 0), int(stamp), 0, 0

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


# ------------------------------------------------------------------------------ opening


def open_zarr(
    src: Any,
    *,
    axes: str | None = None,
    level: int = 0,
    storage_options: Mapping[str, Any] | None = None,
) -> Source:
    """Open a focus stack from a Zarr array or an OME-Zarr image group.

    Parameters
    ----------
    src : str, os.PathLike, Location or zarr.Array
        An open zarr array, a local path or an fsspec URL of a Zarr v2/v3 array or an
        OME-Zarr image group (NGFF 0.1-0.5, also inside a bioformats2raw layout).
    axes : str, optional
        Axes of a plain array without dimension names; if the array names its dimensions
        (or the OME metadata does), ``axes`` must agree with them.
    level : int, optional
        Pyramid level of an OME-Zarr image (0: full resolution).
    storage_options : mapping, optional
        fsspec options for a URL.

    Returns
    -------
    Source

    Raises
    ------
    FileNotFoundError
        If ``src`` does not exist.
    ValueError
        If ``src`` is not a Zarr array or image group, its metadata is malformed (a chunk
        shape with a 0, a shape that is not integers), ``axes`` disagree with it, or an axis
        has length 0 or a shape is beyond what fstack_dask reads (:func:`check_extent`).
    TypeError
        If ``src`` has an unsupported type or dtype.
    """
    import zarr

    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 0:
        raise TypeError(f"level must be an integer >= 0, got {level!r}")
    if isinstance(src, zarr.Group):
        raise TypeError(
            "src is an open zarr.Group; pass its path or URL (OME-Zarr) or one of its arrays"
        )
    if isinstance(src, zarr.Array):
        location = _node_location(src)
        where = f"src {location.spec if location else str(src.store_path)!r}"
        source = _array_source(src, where, axes, location, metadata_files=())
        return source

    location = resolve(src, name="src", storage_options=storage_options)
    where = f"src {location.spec!r}"
    node = _open_node(location, where)
    if isinstance(node, zarr.Group):
        return _ome_source(node, location, where, axes, int(level))
    if level:
        raise ValueError(f"level={level} needs an OME-Zarr image with levels; {where} is an array")
    meta = [location.child(f) for f in ("zarr.json", ".zarray", ".zattrs")]
    return _array_source(node, where, axes, location, metadata_files=tuple(meta))


def _node_location(node: Any) -> Location | None:
    import zarr.storage

    store = node.store
    if isinstance(store, zarr.storage.LocalStore):
        base = os.fspath(store.root)
    elif isinstance(store, zarr.storage.FsspecStore) and "file" in _protocols(store.fs):
        base = store.path
    else:
        return None
    path = os.path.join(base, node.path) if node.path else base
    return resolve(path, name="src")


def _protocols(fs: Any) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def _open_node(location: Location, where: str) -> Any:
    import zarr

    if not location.exists():
        raise FileNotFoundError(f"{where} does not exist; expected a Zarr array or group")
    if location.is_local and not os.path.isdir(location.path):
        raise ValueError(
            f"{where} is not a Zarr array or group; expected a directory holding "
            f"zarr.json (zarr v3) or .zarray/.zgroup (zarr v2)"
        )
    _check_metadata_json(location, where)
    try:
        return zarr.open(store=location.zarr_store(read_only=True), mode="r")
    except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError) as exc:
        raise ValueError(
            f"{where} is not a Zarr array or group; expected zarr.json (zarr v3) "
            f"or .zarray/.zgroup (zarr v2) metadata"
        ) from exc
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where} has unreadable Zarr metadata: {_one_line(exc)}") from exc


def _check_metadata_json(location: Location, where: str, folder: str = "") -> None:
    """Metadata that is not a JSON object, or an array's that states no usable shape or chunk
    shape: name the file (zarr's own message does not). ``folder``: the array's path in an
    image group, for messages."""
    for name in ("zarr.json", ".zarray", ".zgroup", ".zattrs"):
        meta = location.child(name)
        try:
            raw = meta.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"{where}: {folder}{name} is not valid JSON ({_one_line(exc)}); the store's "
                "metadata is damaged"
            ) from None
        if not isinstance(value, dict):
            raise ValueError(
                f"{where}: {folder}{name} holds a JSON {type(value).__name__}, expected an "
                "object; the store's metadata is damaged"
            )
        for what, values in _stated_shapes(name, value):
            _check_stated(what, values, f"{where}: {folder}{name}")


def _stated_shapes(name: str, meta: dict[str, Any]) -> list[tuple[str, Any]]:
    """(what, value) of every shape and chunk shape an array's metadata file states."""
    if name == ".zarray":
        return [("shape", meta.get("shape")), ("chunk shape", meta.get("chunks"))]
    if name != "zarr.json" or meta.get("node_type") != "array":
        return []
    found = [("shape", meta.get("shape"))]
    grid = meta.get("chunk_grid")
    config = grid.get("configuration") if isinstance(grid, dict) else None
    if isinstance(config, dict):
        found.append(("chunk shape", config.get("chunk_shape")))
    codecs = meta.get("codecs")
    for codec in codecs if isinstance(codecs, list) else []:
        if not isinstance(codec, dict) or codec.get("name") != "sharding_indexed":
            continue
        config = codec.get("configuration")
        if isinstance(config, dict):
            found.append(("inner chunk shape (sharding)", config.get("chunk_shape")))
    return found


def _check_stated(what: str, values: Any, where: str) -> None:
    """Integers, and chunks of at least one element: zarr reads a JSON ``true`` as 1, and a
    zero chunk only fails when a chunk is read (a division by zero)."""
    if not isinstance(values, list):
        return  # missing or not a list: zarr's own message says so
    text = json.dumps(values)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values):
        raise ValueError(
            f"{where} gives {what} {text}; expected a list of integers >= 0 (the metadata "
            "is damaged)"
        )
    if what != "shape" and 0 in values:
        raise ValueError(
            f"{where} gives {what} {text}; every chunk must be at least 1 element along "
            "each axis (the metadata is damaged)"
        )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _stored_axes(array: Any) -> tuple[str | None, str]:
    """Single-letter axes an array names itself (dimension_names or _ARRAY_DIMENSIONS)."""
    names = getattr(array.metadata, "dimension_names", None)
    origin = "dimension_names"
    if not names or any(n is None for n in names):
        names = array.attrs.get("_ARRAY_DIMENSIONS")
        origin = "_ARRAY_DIMENSIONS"
    if not names or not all(isinstance(n, str) and len(n) == 1 for n in names):
        return None, origin
    return "".join(names).lower(), origin


def _check_dtype_and_shape(array: Any, axes: str, where: str) -> None:
    dtype = np.dtype(array.dtype)
    if dtype.kind not in _SUPPORTED_KINDS:
        raise TypeError(f"{where} has dtype {dtype}; expected an integer or floating-point dtype")
    for letter, length in zip(axes, array.shape, strict=True):
        if length == 0:
            raise ValueError(
                f"{where} has length 0 along axis {letter!r} (shape {tuple(array.shape)}); "
                f"expected at least one element per axis"
            )
    check_extent(tuple(int(n) for n in array.shape), axes, where)
    # an array opened elsewhere (a zarr.Array given in Python) skipped the metadata file check
    grid = getattr(getattr(array, "metadata", None), "chunk_grid", None)
    for chunks in (getattr(grid, "chunk_shape", None), getattr(array, "chunks", None)):
        if chunks is not None and any(int(c) < 1 for c in chunks):
            raise ValueError(
                f"{where} has chunk shape {tuple(int(c) for c in chunks)}; every chunk must be "
                "at least 1 element along each axis (the metadata is damaged)"
            )


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


def _unit_shape(array: Any) -> tuple[int, ...]:
    grid = getattr(getattr(array, "metadata", None), "chunk_grid", None)
    shape = getattr(grid, "chunk_shape", None)
    if shape is None:
        shape = getattr(array, "chunks", None) or array.shape
    return tuple(max(1, min(int(c), int(n))) for c, n in zip(shape, array.shape, strict=True))


def _array_source(
    array: Any,
    where: str,
    axes: str | None,
    location: Location | None,
    metadata_files: tuple[Location, ...],
) -> Source:
    stored, origin = _stored_axes(array)
    if axes is not None:
        chosen = parse_axes(axes, array.ndim)
        if stored is not None and stored != chosen:
            raise ValueError(
                f"axes {axes!r} contradicts the {origin} of {where}, which name its "
                f"dimensions {stored!r}; omit axes= or pass axes={stored!r}"
            )
    elif stored is not None:
        try:
            chosen = parse_axes(stored, array.ndim)
        except ValueError as exc:
            raise ValueError(f"{where}: axes from {origin} are unusable: {exc}") from exc
    else:
        names = getattr(array.metadata, "dimension_names", None) or array.attrs.get(
            "_ARRAY_DIMENSIONS"
        )
        named = (
            f"names its dimensions {list(names)}, which are not all single letters"
            if names and any(n is not None for n in names)
            else "does not name its dimensions (no dimension_names or _ARRAY_DIMENSIONS)"
        )
        raise ValueError(
            f"{where} {named}; pass axes= with one letter per dimension, e.g. axes='zyx'"
        )
    _check_dtype_and_shape(array, chosen, where)
    return Source(
        array=array,
        axes=chosen,
        unit_shape=_unit_shape(array),
        description=where,
        location=location,
        kind="zarr",
        metadata_files=metadata_files,
        data_root=location,
    )


def _ome_source(group: Any, location: Location, where: str, axes: str | None, level: int):
    import zarr

    attrs = group.attrs.asdict()
    multiscales, version = find_multiscales(attrs)
    ome = attrs.get("ome")
    layout = "bioformats2raw.layout"
    is_bf2raw = layout in attrs or (isinstance(ome, Mapping) and layout in ome)
    if multiscales is None and is_bf2raw and "0" in group:
        child = group["0"]  # bioformats2raw: the first series is the image group "0"
        if isinstance(child, zarr.Group):
            return _ome_source(child, location.child("0"), f"{where[:-1]}/0'", axes, level)
    if multiscales is None:
        raise ValueError(
            f"{where} is a Zarr group without OME-NGFF multiscales metadata; "
            f"pass the array path (e.g. {location.spec.rstrip('/') + '/0'!r}) instead"
        )
    first = multiscales[0] if isinstance(multiscales, list) and multiscales else None
    datasets = first.get("datasets") if isinstance(first, Mapping) else None
    path0 = datasets[0].get("path") if isinstance(datasets, list) and datasets else None
    if isinstance(path0, str):  # before zarr parses it (a zero chunk divides by zero there)
        _check_metadata_json(location.child(path0), where, f"{path0}/")
    if not isinstance(path0, str) or path0 not in group:
        raise ValueError(
            f"{where} has malformed OME-NGFF multiscales metadata: level-0 dataset "
            f"{path0!r} is not in the group"
        )
    ndim = group[path0].ndim
    ms = parse_multiscale(multiscales, ndim=ndim, where=where, version=version)
    if level >= len(ms.paths):
        raise ValueError(
            f"level={level} is not in {where}, which has {len(ms.paths)} level(s) "
            f"(0 to {len(ms.paths) - 1})"
        )
    path = ms.paths[level]
    if path != path0:
        _check_metadata_json(location.child(path), where, f"{path}/")
    array = group.get(path)
    if not isinstance(array, zarr.Array):
        raise ValueError(f"{where} has no array at level {level} (dataset path {path!r})")

    if ms.names is not None and all(len(n) == 1 for n in ms.names):
        letters = "".join(ms.names).lower()
        try:
            meta_axes = parse_axes(letters, array.ndim)
        except ValueError as exc:
            raise ValueError(f"{where}: axes from OME-NGFF metadata are unusable: {exc}") from exc
        if axes is not None and parse_axes(axes, array.ndim) != meta_axes:
            raise ValueError(
                f"axes {axes!r} disagrees with the OME-NGFF metadata of {where}, which "
                f"declares {meta_axes!r}; omit axes= or pass axes={meta_axes!r}"
            )
    elif axes is not None:  # names that are not letters (e.g. "depth"): the caller's win
        meta_axes = parse_axes(axes, array.ndim)
    else:
        raise ValueError(
            f"{where} has OME-NGFF axes {list(ms.names or [])} that are not single letters; "
            f"pass axes= with one letter per dimension, e.g. axes='zyx'"
        )
    _check_dtype_and_shape(array, meta_axes, where)
    by_letter = dict(zip(ms.names or meta_axes, meta_axes, strict=True))
    units = {by_letter[n]: u for n, u in ms.units.items() if n in by_letter}
    scale_vec, shift_vec = ms.scales[level], ms.translations[level]
    scale = {} if scale_vec is None else dict(zip(meta_axes, scale_vec, strict=True))
    shift = {} if shift_vec is None else dict(zip(meta_axes, shift_vec, strict=True))
    array_loc = location.child(path)
    meta = tuple(
        loc.child(f)
        for loc in (location, array_loc)
        for f in ("zarr.json", ".zarray", ".zattrs", ".zgroup")
    )
    return Source(
        array=array,
        axes=meta_axes,
        unit_shape=_unit_shape(array),
        description=where,
        location=location,
        kind="ome-zarr",
        scale=scale,
        units=units,
        translation=shift,
        channels=parse_omero(attrs),
        rgb=_omero_is_rgb(attrs),
        ome_version=ms.version,
        level=level,
        metadata_files=meta,
        data_root=array_loc,
    )


def _omero_is_rgb(attrs: Mapping[str, Any]) -> bool:
    ome = attrs.get("ome")
    omero = ome.get("omero") if isinstance(ome, Mapping) else attrs.get("omero")
    rdefs = omero.get("rdefs") if isinstance(omero, Mapping) else None
    return isinstance(rdefs, Mapping) and rdefs.get("model") == "color"


def _local_data_files(base: str) -> Iterator[tuple[str, int, int, int, int]]:
    """``Source.data_files`` of a local store, in ``os.walk``'s top-down sorted order.

    ``os.scandir`` entries, each stat'ed through its folder: a store has a file per chunk
    (millions of them, for big stacks), and this is 2.5x faster than ``os.walk`` plus an
    ``os.stat`` of each joined path (``benchmarks/listing.py``). Symbolic links to folders
    are neither followed nor listed, as ``os.walk`` does.
    """
    folders = [(base, "")]
    while folders:
        folder, rel = folders.pop()
        files, subfolders = [], []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir():
                        if not entry.is_symlink():
                            subfolders.append((entry.path, rel + entry.name + os.sep))
                    elif entry.name not in _METADATA_FILES and not entry.name.endswith(".partial"):
                        files.append(entry)
        except FileNotFoundError:
            continue
        for entry in sorted(files, key=lambda e: e.name):
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            yield rel + entry.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino
        folders.extend(sorted(subfolders, reverse=True))
