"""Reading focus stacks from Zarr / OME-Zarr and writing fused OME-Zarr 0.5 images.

This module only deals with stores and metadata: it opens arrays, interprets
axes and physical scales, validates destinations and creates output groups.
It builds no dask graphs and does no numerics.

Axes are strings with one letter per array dimension: ``z`` is the focus
axis, ``y`` and ``x`` the image plane, ``c`` the optional channel axis and
any other letter (e.g. ``t``) an independent batch axis.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ._utils import parse_axes

__all__ = [
    "Source",
    "SourceReadError",
    "check_destination",
    "check_outside_source",
    "create_output",
    "open_source",
    "parse_axes",
    "source_dask_array",
    "write_ome_zarr_stack",
]

# zarr >= 3.1 raises NodeNotFoundError (a ValueError) for a store without metadata;
# older 3.0.x releases raised FileNotFoundError or KeyError.
_NODE_NOT_FOUND: tuple[type[BaseException], ...] = (FileNotFoundError, KeyError)
if hasattr(zarr.errors, "NodeNotFoundError"):
    _NODE_NOT_FOUND = (*_NODE_NOT_FOUND, zarr.errors.NodeNotFoundError)

_ZARR_METADATA_FILES = ("zarr.json", ".zgroup", ".zarray")
_NGFF_MAX_NDIM = 5
_SUPPORTED_KINDS = "iuf"
_NODE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


# --------------------------------------------------------------------------- axes


def _ngff_axis_type(letter: str) -> str | None:
    if letter == "t":
        return "time"
    if letter == "c":
        return "channel"
    if letter in "zyx":
        return "space"
    return None  # NGFF allows one custom (untyped) axis in the channel slot


def _check_ngff_order(axes: str) -> None:
    """Refuse axes that would make non-conformant NGFF 0.4/0.5 metadata."""
    rank = {"time": 0, None: 1, "channel": 1, "space": 2}
    types = [_ngff_axis_type(a) for a in axes]
    n_time = types.count("time")
    n_other = sum(t in (None, "channel") for t in types)
    ordered = [rank[t] for t in types] == sorted(rank[t] for t in types)
    if len(axes) > _NGFF_MAX_NDIM or n_time > 1 or n_other > 1 or not ordered:
        raise ValueError(
            f"axes {axes!r} cannot be written as OME-NGFF; expected at most 5 axes ordered as "
            f"[t][c]zyx (time, then one channel or custom axis, then space)"
        )


# ------------------------------------------------------------------------ locations


def _is_url(path: str) -> bool:
    # Same rule zarr uses to route a string to FsspecStore (incl. chained URLs).
    return "://" in path or "::" in path


def _as_location(obj: Any, name: str) -> str:
    if isinstance(obj, os.PathLike):
        obj = os.fspath(obj)
    if not isinstance(obj, str):
        raise TypeError(
            f"{name} must be a local path (str or os.PathLike) or an fsspec URL, "
            f"got {type(obj).__name__}"
        )
    if not obj:
        raise ValueError(f"{name} must be a non-empty path or URL, got ''")
    return obj


def _url_to_fs(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    import fsspec  # zarr needs it for URLs anyway; keep it optional for local use

    return fsspec.core.url_to_fs(url, **dict(storage_options or {}))


def _fs_is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _local_path(location: str, storage_options: Mapping[str, Any] | None) -> str | None:
    """Absolute local path for a local path or a ``file://`` URL, else None."""
    if not _is_url(location):
        return os.path.abspath(os.path.expanduser(location))
    if location.startswith("file://") and "::" not in location:
        fs, path = _url_to_fs(location, storage_options)
        if _fs_is_local(fs):
            return os.path.abspath(path)
    return None


def _node_root(node: zarr.Array | zarr.Group) -> str | None:
    """Absolute local directory of an open zarr node, or None when not local."""
    store = node.store
    if isinstance(store, zarr.storage.LocalStore):
        base = os.path.abspath(os.fspath(store.root))
    elif isinstance(store, zarr.storage.FsspecStore) and _fs_is_local(store.fs):
        base = os.path.abspath(store.path)
    else:
        return None
    return os.path.join(base, node.path) if node.path else base


def _is_zarr_dir(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, f)) for f in _ZARR_METADATA_FILES
    )


# -------------------------------------------------------------------------- reading


class SourceReadError(RuntimeError):
    """A chunk of the source could not be read or decoded (corrupt, truncated, unreadable)."""


@dataclass(frozen=True)
class Source:
    """An opened input focus stack.

    Attributes
    ----------
    array : zarr.Array
        The level-0 (full resolution) array, opened read-only when
        `open_source` opened it.
    axes : str
        Validated axes string, one letter per dimension of `array`.
    scale : dict of str to float
        Physical pixel size of level 0 per axis letter, from OME-NGFF
        metadata; empty when unknown.
    units : dict of str to str
        Physical unit per axis letter from OME-NGFF metadata (possibly empty).
    url : str
        The source as given by the user, for messages.
    root : str or None
        Absolute local path of the opened store (the directory given as
        `src`, or the directory of an already open node) when local, else
        None. Used to stop outputs being written inside the input.
    ome_version : str or None
        OME-NGFF version of the metadata ("0.4", "0.5", ...), None for a
        plain array.
    """

    array: zarr.Array
    axes: str
    scale: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    url: str = ""
    root: str | None = None
    ome_version: str | None = None


def open_source(
    src: zarr.Array | zarr.Group | str | os.PathLike[str],
    *,
    axes: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Source:
    """Open a focus stack from a Zarr array or an OME-Zarr image group.

    Parameters
    ----------
    src : zarr.Array, zarr.Group, str or os.PathLike
        An open array or group, a local path, or an fsspec URL such as
        ``"file:///data/stack.zarr"``, ``"memory://stack.zarr"`` or
        ``"s3://bucket/stack.zarr"``. Paths and URLs are opened read-only.
    axes : str, optional
        Axes of the array (see `parse_axes`). Required for arrays without
        ``dimension_names`` (zarr v3) or ``_ARRAY_DIMENSIONS`` (zarr v2
        xarray convention). For OME-NGFF groups it must agree with the
        metadata.
    storage_options : dict, optional
        Passed to fsspec for URLs; not allowed for local paths.

    Returns
    -------
    Source
        The level-0 array with its axes, physical scale and units.

    Raises
    ------
    FileNotFoundError
        If `src` does not exist.
    ValueError
        If `src` is not a Zarr array or group, is a group without OME-NGFF
        multiscales metadata, has unknown or inconsistent axes, or has an
        axis of length 0.
    TypeError
        If `src` has an unsupported type or dtype (only integer and
        floating-point dtypes are supported).
    """
    if isinstance(src, (zarr.Array, zarr.Group)):
        node = src
        root = _node_root(src)
        url = root if root is not None else str(src.store_path)
    else:
        url = _as_location(src, "src")
        node, root = _open_node(url, storage_options)

    if isinstance(node, zarr.Group):
        array, ax, scale, units, version = _read_ome_group(node, url, axes)
    else:
        array, ax, scale, units, version = node, _array_axes(node, url, axes), {}, {}, None

    dtype = np.dtype(array.dtype)
    if dtype.kind not in _SUPPORTED_KINDS:
        raise TypeError(
            f"src {url!r} has dtype {dtype}; expected an integer or floating-point dtype"
        )
    for letter, length in zip(ax, array.shape, strict=True):
        if length == 0:
            raise ValueError(
                f"src {url!r} has length 0 along axis {letter!r} (shape {tuple(array.shape)}); "
                f"expected at least one element per axis"
            )
    return Source(
        array=array,
        axes=ax,
        scale=scale,
        units=units,
        url=url,
        root=root,
        ome_version=version,
    )


def _open_node(
    url: str, storage_options: Mapping[str, Any] | None
) -> tuple[zarr.Array | zarr.Group, str | None]:
    remote = _is_url(url)
    if storage_options and not remote:
        raise ValueError(
            f"storage_options only apply to fsspec URLs such as 's3://...', "
            f"but src {url!r} is a local path"
        )
    if not remote:
        local = os.path.expanduser(url)
        if not os.path.exists(local):
            raise FileNotFoundError(f"src {url!r} does not exist; expected a Zarr array or group")
        if not os.path.isdir(local):
            raise ValueError(
                f"src {url!r} is not a Zarr array or group; expected a directory holding "
                f"zarr.json (zarr v3) or .zarray/.zgroup (zarr v2)"
            )
        target: str = local
        kwargs: dict[str, Any] = {}
    else:
        target = url
        kwargs = {"storage_options": dict(storage_options)} if storage_options else {}
    try:
        node = zarr.open(store=target, mode="r", **kwargs)
    except _NODE_NOT_FOUND as exc:
        if remote and not _remote_exists(url, storage_options):
            raise FileNotFoundError(
                f"src {url!r} does not exist; expected a Zarr array or group"
            ) from exc
        raise ValueError(
            f"src {url!r} is not a Zarr array or group; expected zarr.json (zarr v3) "
            f"or .zarray/.zgroup (zarr v2) metadata"
        ) from exc
    return node, _local_path(url, storage_options)


def _remote_exists(url: str, storage_options: Mapping[str, Any] | None) -> bool:
    try:
        fs, path = _url_to_fs(url, storage_options)
        return bool(fs.exists(path))
    except Exception:  # an unreachable store reads as "not found"
        return False


def _array_axes(array: zarr.Array, url: str, axes: str | None) -> str:
    if axes is not None:
        return parse_axes(axes, array.ndim)
    names = getattr(array.metadata, "dimension_names", None)  # zarr v3 only
    origin = "dimension_names"
    if not names or any(n is None for n in names):
        names = array.attrs.get("_ARRAY_DIMENSIONS")  # xarray's zarr v2 convention
        origin = "_ARRAY_DIMENSIONS"
    if not names:
        raise ValueError(
            f"src {url!r} does not name its dimensions (no dimension_names or "
            f"_ARRAY_DIMENSIONS); pass axes= with one letter per dimension, e.g. axes='zyx'"
        )
    if not all(isinstance(n, str) and len(n) == 1 for n in names):
        raise ValueError(
            f"src {url!r} has {origin} {list(names)} that are not single letters; "
            f"pass axes= with one letter per dimension, e.g. axes='zyx'"
        )
    return _parse_stored_axes("".join(names), array.ndim, url, origin)


def _parse_stored_axes(names: str, ndim: int, url: str, origin: str) -> str:
    try:
        return parse_axes(names, ndim)
    except ValueError as exc:
        raise ValueError(f"src {url!r}: axes from {origin} are unusable: {exc}") from exc


def _find_multiscales(attrs: Mapping[str, Any]) -> tuple[list[Any] | None, str | None]:
    ome = attrs.get("ome")
    if isinstance(ome, Mapping) and "multiscales" in ome:  # NGFF >= 0.5
        version = ome.get("version")
        return ome["multiscales"], None if version is None else str(version)
    if "multiscales" in attrs:  # NGFF <= 0.4: version lives in each multiscale
        ms = attrs["multiscales"]
        first = ms[0] if isinstance(ms, list) and ms and isinstance(ms[0], Mapping) else {}
        version = first.get("version")
        return ms, None if version is None else str(version)
    return None, None


def _read_ome_group(
    group: zarr.Group, url: str, axes: str | None
) -> tuple[zarr.Array, str, dict[str, float], dict[str, str], str | None]:
    attrs = group.attrs.asdict()
    multiscales, version = _find_multiscales(attrs)
    ome = attrs.get("ome")
    layout = "bioformats2raw.layout"
    is_bf2raw = layout in attrs or (isinstance(ome, Mapping) and layout in ome)
    if multiscales is None and is_bf2raw and "0" in group:
        # bioformats2raw output: the first series is the image group "0".
        child = group["0"]
        if isinstance(child, zarr.Group):
            return _read_ome_group(child, f"{url.rstrip('/')}/0", axes)
    if multiscales is None:
        raise ValueError(
            f"src {url!r} is a Zarr group without OME-NGFF multiscales metadata; "
            f"pass the array path (e.g. {url.rstrip('/') + '/0'!r}) instead"
        )
    bad = f"src {url!r} has malformed OME-NGFF multiscales metadata"
    if not isinstance(multiscales, list) or not multiscales:
        raise ValueError(f"{bad}: expected a non-empty list of multiscale images")
    ms = multiscales[0]
    datasets = ms.get("datasets") if isinstance(ms, Mapping) else None
    if not isinstance(datasets, list) or not datasets or not isinstance(datasets[0], Mapping):
        raise ValueError(f"{bad}: expected a non-empty 'datasets' list")
    path = datasets[0].get("path")
    if not isinstance(path, str) or path not in group:
        raise ValueError(f"{bad}: level-0 dataset path {path!r} is not in the group")
    array = group[path]
    if not isinstance(array, zarr.Array):
        raise ValueError(f"{bad}: level-0 dataset path {path!r} is a group, expected an array")

    raw_axes = ms.get("axes")
    if raw_axes is None and array.ndim == _NGFF_MAX_NDIM:
        raw_axes = list("tczyx")  # NGFF <= 0.2 implied 5-D tczyx
    names: list[str] | None = None
    if isinstance(raw_axes, list):
        names = [a.get("name") if isinstance(a, Mapping) else a for a in raw_axes]
        if not all(isinstance(n, str) for n in names):
            raise ValueError(f"{bad}: every entry of 'axes' needs a string name")
        if len(names) != array.ndim:
            raise ValueError(
                f"{bad}: {len(names)} axes for a {array.ndim}-D level-0 array, expected equal"
            )
    if names is not None and all(len(n) == 1 for n in names):
        meta_axes = _parse_stored_axes("".join(names), array.ndim, url, "OME-NGFF metadata")
        if axes is not None and parse_axes(axes, array.ndim) != meta_axes:
            raise ValueError(
                f"axes {axes!r} disagrees with the OME-NGFF metadata of src {url!r}, which "
                f"declares {meta_axes!r}; omit axes= or pass axes={meta_axes!r}"
            )
    elif axes is not None:
        # Metadata names are not letters (e.g. "depth"): the caller's letters win.
        meta_axes = parse_axes(axes, array.ndim)
    else:
        raise ValueError(
            f"src {url!r} has OME-NGFF axes {names} that are not single letters; "
            f"pass axes= with one letter per dimension, e.g. axes='zyx'"
        )

    scale_vec = _scale_of(datasets[0].get("coordinateTransformations"), array.ndim)
    ms_scale = _scale_of(ms.get("coordinateTransformations"), array.ndim)
    if scale_vec is not None and ms_scale is not None:
        scale_vec = [a * b for a, b in zip(scale_vec, ms_scale, strict=True)]
    scale = {} if scale_vec is None else dict(zip(meta_axes, scale_vec, strict=True))
    units: dict[str, str] = {}
    if isinstance(raw_axes, list):
        for letter, entry in zip(meta_axes, raw_axes, strict=True):
            if isinstance(entry, Mapping) and isinstance(entry.get("unit"), str):
                units[letter] = entry["unit"]
    return array, meta_axes, scale, units, version


def _scale_of(transforms: Any, ndim: int) -> list[float] | None:
    """The 'scale' vector of an NGFF coordinateTransformations list, if usable."""
    if not isinstance(transforms, list):
        return None
    for t in transforms:
        if isinstance(t, Mapping) and t.get("type") == "scale":
            vec = t.get("scale")  # a "path" to a binary scale is not supported
            if isinstance(vec, list) and len(vec) == ndim:
                try:
                    return [float(v) for v in vec]
                except (TypeError, ValueError):
                    return None
    return None


class _CheckedReader:
    """The source array as dask reads it, naming src and the chunk when a read fails.

    Decoding errors surface deep inside zarr and the codecs ("Zstd decompression
    error: invalid input data") without saying which file is bad; this re-raises
    them as `SourceReadError` with the source and the chunk key.
    """

    def __init__(self, array: zarr.Array, url: str):
        self.array, self.url = array, url
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.array[key]
        except Exception as exc:
            text = " ".join(str(exc).split())
            reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
            raise SourceReadError(
                f"cannot read {self._where(key)} of src {self.url!r} ({reason}); the source "
                f"is corrupt, truncated or unreadable"
            ) from exc

    def _where(self, key: Any) -> str:
        """'chunk <key>' (relative to the source store) for the chunk a read covered."""
        try:
            chunks = self.array.chunks
            first = tuple(int(k.start or 0) // c for k, c in zip(key, chunks, strict=True))
            last = tuple(
                max(int(k.stop) - 1, int(k.start or 0)) // c
                for k, c in zip(key, chunks, strict=True)
            )
            if first != last:
                return f"chunks {first} to {last}"
            name = self.array.metadata.encode_chunk_key(first)
            prefix = self.array.path.strip("/")
            path = f"{prefix}/{name}" if prefix else name
            return f"chunk {path!r}"
        except Exception:  # a key we cannot map to one chunk: say what was read
            return f"region {key!r}"

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("fstack-source", self.url, str(self.array.store_path), self.shape, str(self.dtype))


def source_dask_array(source: Source) -> Any:
    """The source's level 0 as a dask array, one task per source chunk (as ``da.from_zarr``).

    A chunk that cannot be read or decoded raises `SourceReadError`, naming
    the source and the chunk.
    """
    import dask.array as da

    array = source.array
    return da.from_array(
        _CheckedReader(array, source.url),
        chunks=array.chunks,
        asarray=True,
        fancy=False,
        meta=np.empty((0,) * array.ndim, dtype=array.dtype),
    )


# ------------------------------------------------------------------------- writing


def check_destination(
    dst: str | os.PathLike[str],
    *,
    src_root: str | None,
    overwrite: bool,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Check that an output store may be created at `dst`, writing nothing.

    Parameters
    ----------
    dst : str or os.PathLike
        Local path or fsspec URL of the output group.
    src_root : str or None
        `Source.root` of the input, or the input's fsspec URL when it is not
        local; `dst` must neither equal it, lie inside it, nor contain it.
    overwrite : bool
        Whether an existing `dst` may be replaced. Only an existing Zarr
        store (or an empty directory) is ever replaced.
    storage_options : dict, optional
        fsspec options for a URL `dst`.

    Raises
    ------
    ValueError
        If `dst` equals, is inside or contains the source, or `overwrite`
        would delete something that is not a Zarr store.
    FileExistsError
        If `dst` exists and `overwrite` is False.
    PermissionError
        If the directory that would hold `dst` is not writable.
    """
    dst_s = _as_location(dst, "dst")
    local = _local_path(dst_s, storage_options)
    check_outside_source(dst_s, src_root=src_root, storage_options=storage_options)
    if local is None:
        _check_remote_destination(dst_s, overwrite, storage_options)
        return

    dst_p = Path(local).resolve()
    if os.path.lexists(local):
        if not overwrite:
            raise FileExistsError(
                f"dst {dst_s!r} already exists; choose another path or pass overwrite=True"
            )
        empty_dir = os.path.isdir(local) and not os.listdir(local)
        if os.path.islink(local) or not (empty_dir or _is_zarr_dir(local)):
            raise ValueError(
                f"dst {dst_s!r} exists and is not a Zarr store; refusing to delete it even "
                f"with overwrite=True, expected a Zarr store or an empty directory"
            )

    # zarr creates missing parents, so the nearest existing ancestor must be writable.
    ancestor = dst_p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"dst {dst_s!r} cannot be created: {str(ancestor)!r} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PermissionError(
            f"dst {dst_s!r} cannot be created: directory {str(ancestor)!r} is not writable"
        )


def check_outside_source(
    dst: str | os.PathLike[str],
    *,
    src_root: str | None,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Refuse a `dst` that is the source, lies inside it or contains it; writes nothing.

    The first check of `check_destination`, also used on its own where `dst`
    may exist (resuming into it).

    Raises
    ------
    ValueError
        If `dst` equals, is inside or contains `src_root`.
    """
    dst_s = _as_location(dst, "dst")
    local = _local_path(dst_s, storage_options)
    src_is_url = src_root is not None and _is_url(src_root)
    if local is None:
        if src_is_url:
            _check_remote_overlap(dst_s, src_root)
        return
    if src_root is None or src_is_url:
        return
    dst_p = Path(local).resolve()
    src_p = Path(src_root).resolve()
    if dst_p == src_p or src_p in dst_p.parents:
        raise ValueError(
            f"dst {dst_s!r} is the source or lies inside it ({str(src_p)!r}); "
            f"expected an output location outside the input store"
        )
    if dst_p in src_p.parents:
        raise ValueError(
            f"dst {dst_s!r} contains the source ({str(src_p)!r}); "
            f"expected an output location that does not enclose the input store"
        )


def _url_key(url: str) -> tuple[Any, str] | None:
    """(filesystem class, normalised path) of a single fsspec URL; None if unknown."""
    if "::" in url:
        return None  # chained URLs: not compared
    import fsspec

    protocol, _ = fsspec.core.split_protocol(url)
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError):
        return None
    return cls, str(cls._strip_protocol(url)).rstrip("/")


def _check_remote_overlap(dst: str, src_url: str) -> None:
    dst_key, src_key = _url_key(dst), _url_key(src_url)
    if dst_key is None or src_key is None or dst_key[0] is not src_key[0]:
        return
    d, s = dst_key[1], src_key[1]
    if d == s or d.startswith(s + "/"):
        raise ValueError(
            f"dst {dst!r} is the source or lies inside it ({src_url!r}); "
            f"expected an output location outside the input store"
        )
    if s.startswith(d + "/"):
        raise ValueError(
            f"dst {dst!r} contains the source ({src_url!r}); "
            f"expected an output location that does not enclose the input store"
        )


def _check_remote_destination(
    dst: str, overwrite: bool, storage_options: Mapping[str, Any] | None
) -> None:
    fs, path = _url_to_fs(dst, storage_options)
    if not fs.exists(path):
        return
    if not overwrite:
        raise FileExistsError(
            f"dst {dst!r} already exists; choose another location or pass overwrite=True"
        )
    is_zarr = any(fs.exists(f"{path.rstrip('/')}/{f}") for f in _ZARR_METADATA_FILES)
    if not is_zarr and (not fs.isdir(path) or fs.ls(path)):
        raise ValueError(
            f"dst {dst!r} exists and is not a Zarr store; refusing to delete it even "
            f"with overwrite=True, expected a Zarr store or an empty directory"
        )


def _jsonable(value: Any, name: str) -> Any:
    """Convert provenance values to strict JSON (zarr would write bare NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, name) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, name) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), name)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.dtype):
        return str(value)
    raise TypeError(
        f"{name} must hold only JSON-compatible values, got {type(value).__name__}: {value!r}"
    )


def _numeric_dtype(dtype: Any, name: str) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"{name} must be a numpy dtype, got {dtype!r}") from exc
    if dt.kind not in _SUPPORTED_KINDS:
        raise TypeError(f"{name} must be an integer or floating-point dtype, got {dt}")
    return dt


def _physical_scale(scale: Mapping[str, Any], letters: str, name: str) -> list[float]:
    out = []
    for letter in letters:
        value = scale.get(letter, 1.0)
        try:
            f = float(value)
        except (TypeError, ValueError):
            f = math.nan
        if not (math.isfinite(f) and f > 0):
            raise ValueError(
                f"{name}[{letter!r}] must be a positive finite pixel size, got {value!r}"
            )
        out.append(f)
    return out


def _ngff_axes(letters: str, units: Mapping[str, str]) -> list[dict[str, str]]:
    out = []
    for letter in letters:
        entry = {"name": letter}
        kind = _ngff_axis_type(letter)
        if kind is not None:
            entry["type"] = kind
        if letter in units and kind != "channel":
            entry["unit"] = str(units[letter])
        out.append(entry)
    return out


def create_output(
    dst: str | os.PathLike[str],
    *,
    axes: str,
    shape: tuple[int, ...],
    dtype: Any,
    chunks: tuple[int, ...],
    scale: Mapping[str, float],
    units: Mapping[str, str],
    extras: Mapping[str, tuple[str, Any]] | None = None,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    attributes: Mapping[str, Any] | None = None,
    src_root: str | None = None,
    checked: bool = False,
) -> zarr.Group:
    """Create an empty OME-Zarr 0.5 image group for a fused image.

    The group (zarr v3) holds array ``"0"`` with the given ``axes`` (NGFF
    order: batch/time, channel, then ``y``, ``x``), chunks clipped to the
    shape, no sharding, default zstd compression, fill value 0 and
    ``dimension_names``; plus one array per entry of ``extras`` whose axes
    are a subset of ``axes`` (same chunks along shared axes). Group
    attributes follow OME-NGFF 0.5::

        {"ome": {"version": "0.5", "multiscales": [{"name": "fused",
          "axes": [...], "datasets": [{"path": "0",
          "coordinateTransformations": [{"type": "scale", "scale": [...]}]}]}]},
         "fstack_dask": attributes}

    Parameters
    ----------
    dst : str or os.PathLike
        Local path or fsspec URL of the new group.
    axes : str
        Axes of the fused image, ending in ``"yx"``.
    shape, chunks : tuple of int
        Shape and chunk shape of the fused image, one entry per axis.
    dtype : numpy dtype-like
        dtype of the fused image (integer or floating point).
    scale, units : mapping
        Pixel size and unit per axis letter (``Source.scale``/``units`` as is);
        only ``y`` and ``x`` are used, a missing scale defaults to 1.0.
    extras : mapping of str to (str, dtype), optional
        Additional arrays, name to (axes, dtype), e.g.
        ``{"depth": ("yx", "float32")}``. Float extras are filled with NaN.
    overwrite : bool, default False
        Replace an existing Zarr store at `dst` (after `check_destination`).
    storage_options : dict, optional
        fsspec options for a URL `dst`.
    attributes : mapping, optional
        JSON-compatible provenance stored under the ``"fstack_dask"`` key.
    src_root : str, optional
        `Source.root` of the input (or its fsspec URL when it is not local),
        to refuse writing into it.
    checked : bool, default False
        The caller has run `check_destination` and prepared `dst` itself (a
        directory it just created, which may hold only the caller's own
        files): create the group there without checking or removing anything.
        `overwrite` is then ignored.

    The ``attributes`` are written last, after every array exists, so a group
    that has them is complete even if the process creating it was killed.

    Returns
    -------
    zarr.Group
        The new group, open for writing.
    """
    if not isinstance(axes, str) or not axes.endswith("yx") or len(axes) != len(shape):
        raise ValueError(f"axes must end in 'yx' with one letter per dimension, got {axes!r}")
    if len(chunks) != len(shape):
        raise ValueError(f"chunks must have one entry per axis ({len(shape)}), got {chunks!r}")
    for name, values in (("shape", shape), ("chunks", chunks)):
        if not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in values
        ):
            raise ValueError(
                f"{name} must be positive integers, one per axis of {axes!r}, got {tuple(values)!r}"
            )
    chunk_of = {a: min(int(c), int(n)) for a, c, n in zip(axes, chunks, shape, strict=True)}
    size_of = {a: int(n) for a, n in zip(axes, shape, strict=True)}
    image_dtype = _numeric_dtype(dtype, "dtype")
    extra_specs: dict[str, tuple[str, np.dtype]] = {}
    for key, (extra_axes, value) in (extras or {}).items():
        if not isinstance(key, str) or not _NODE_NAME.fullmatch(key) or key == "0":
            raise ValueError(
                f"extras key {key!r} is not a valid array name; expected letters, digits, "
                f"'_', '.', '-' and not '0'"
            )
        if any(a not in axes for a in extra_axes):
            raise ValueError(f"extras[{key!r}] axes {extra_axes!r} are not a subset of {axes!r}")
        extra_specs[key] = (extra_axes, _numeric_dtype(value, f"extras[{key!r}]"))
    scale_in = {k: v for k, v in scale.items() if k in ("y", "x")}
    phys = _physical_scale(scale_in, axes, "scale")
    unit_in = {k: v for k, v in units.items() if k in ("y", "x")}
    group_attrs: dict[str, Any] = {
        "ome": {
            "version": "0.5",
            "multiscales": [
                {
                    "name": "fused",
                    "axes": _ngff_axes(axes, unit_in),
                    "datasets": [
                        {
                            "path": "0",
                            "coordinateTransformations": [{"type": "scale", "scale": phys}],
                        }
                    ],
                }
            ],
        }
    }
    provenance = None if attributes is None else _jsonable(attributes, "attributes")

    location = _as_location(dst, "dst")
    kwargs = {"storage_options": dict(storage_options)} if storage_options else {}
    local = _local_path(location, storage_options)
    if checked:
        overwrite = False
    else:
        check_destination(
            dst, src_root=src_root, overwrite=overwrite, storage_options=storage_options
        )
    if overwrite and local is not None and os.path.isdir(local):
        shutil.rmtree(local)  # check_destination ensured it is a Zarr store or empty
    # zarr's overwrite=True clears a remote store; locally the directory is gone by now.
    group = zarr.create_group(
        store=location if local is None else local,
        zarr_format=3,
        overwrite=overwrite,
        attributes=group_attrs,
        **kwargs,
    )
    group.create_array(
        name="0",
        shape=tuple(size_of[a] for a in axes),
        dtype=image_dtype,
        chunks=tuple(chunk_of[a] for a in axes),
        shards=None,
        fill_value=0,
        dimension_names=list(axes),
    )
    for key, (extra_axes, dt) in extra_specs.items():
        group.create_array(
            name=key,
            shape=tuple(size_of[a] for a in extra_axes),
            dtype=dt,
            chunks=tuple(chunk_of[a] for a in extra_axes),
            shards=None,
            fill_value=np.nan if dt.kind == "f" else 0,
            dimension_names=list(extra_axes),
        )
    if provenance is not None:  # last: marks the group as complete
        group.attrs.update({"fstack_dask": provenance})
    return group


def write_ome_zarr_stack(
    path: str | os.PathLike[str],
    stack: Any,
    *,
    axes: str,
    chunks: tuple[int, ...] | None = None,
    scale: Mapping[str, float] | None = None,
    zarr_format: int = 3,
    units: Mapping[str, str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Save an in-memory stack as a single-level OME-Zarr image group.

    Writes OME-NGFF 0.5 (zarr v3, with ``dimension_names``) for
    ``zarr_format=3`` or OME-NGFF 0.4 (zarr v2, ``"/"`` chunk keys and
    ``_ARRAY_DIMENSIONS``) for ``zarr_format=2``; the image is array ``"0"``.

    Parameters
    ----------
    path : str or os.PathLike
        Local path or fsspec URL of the new group; must not exist.
    stack : array_like
        The data, one dimension per letter of `axes`.
    axes : str
        Axes of `stack` (see `parse_axes`), in NGFF order ``[t][c]zyx``
        (the spatial letters may be in any order).
    chunks : tuple of int, optional
        Chunk shape; default 1 along non-image axes and up to 512 along y, x.
    scale : mapping of str to float, optional
        Pixel size per axis letter; missing axes get 1.0.
    zarr_format : {3, 2}
        3 writes OME-NGFF 0.5, 2 writes OME-NGFF 0.4.
    units : mapping of str to str, optional
        Unit per axis letter, e.g. ``{"z": "micrometer"}``.
    storage_options : dict, optional
        fsspec options for a URL `path`.

    Raises
    ------
    FileExistsError
        If `path` already exists.
    ValueError
        If `axes`, `chunks`, `scale` or `zarr_format` are invalid.
    """
    data = np.asarray(stack)
    ax = parse_axes(axes, data.ndim)
    _check_ngff_order(ax)
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 (OME-NGFF 0.4) or 3 (0.5), got {zarr_format!r}")
    if chunks is None:
        chunks = tuple(min(n, 512) if a in "yx" else 1 for a, n in zip(ax, data.shape, strict=True))
    if (
        not isinstance(chunks, (tuple, list))
        or len(chunks) != data.ndim
        or not all(isinstance(c, (int, np.integer)) and c >= 1 for c in chunks)
    ):
        raise ValueError(f"chunks must be {data.ndim} positive ints (one per axis), got {chunks!r}")
    scale = dict(scale or {})
    unknown = sorted(set(scale) - set(ax))
    if unknown:
        raise ValueError(f"scale has axes {unknown} that are not in axes {ax!r}")
    scale_vec = _physical_scale(scale, ax, "scale")
    location = _as_location(path, "path")
    local = _local_path(location, storage_options)
    if local is not None and os.path.lexists(local):
        raise FileExistsError(f"path {location!r} already exists; expected a new location")

    multiscale: dict[str, Any] = {
        "name": "image",
        "axes": _ngff_axes(ax, units or {}),
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale_vec}]}
        ],
    }
    if zarr_format == 3:
        attrs: dict[str, Any] = {"ome": {"version": "0.5", "multiscales": [multiscale]}}
    else:
        attrs = {"multiscales": [{"version": "0.4", **multiscale}]}
    kwargs = {"storage_options": dict(storage_options)} if storage_options else {}
    group = zarr.create_group(
        store=location if local is None else local,
        zarr_format=zarr_format,
        attributes=attrs,
        **kwargs,
    )
    array_kwargs: dict[str, Any]
    if zarr_format == 3:
        array_kwargs = {"dimension_names": list(ax)}
    else:
        # NGFF 0.4 requires "/" chunk keys; _ARRAY_DIMENSIONS helps xarray.
        array_kwargs = {
            "chunk_key_encoding": {"name": "v2", "separator": "/"},
            "attributes": {"_ARRAY_DIMENSIONS": list(ax)},
        }
    array = group.create_array(
        name="0",
        shape=data.shape,
        dtype=data.dtype,
        chunks=tuple(int(c) for c in chunks),
        **array_kwargs,
    )
    array[...] = data
