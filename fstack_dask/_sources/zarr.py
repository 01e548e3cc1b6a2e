"""Opening focus stacks stored as Zarr: v2/v3 arrays and OME-Zarr images (NGFF 0.1-0.5,
also in a bioformats2raw layout), as one :class:`~.source.Source`.

The metadata is checked before anything is trusted (JSON that parses, shapes and chunks that
make sense, at most :data:`~.source.MAX_LENGTH` along an axis); nothing here reads pixel
data (``fetch`` does that). The metadata files' own checks are ``zarr_metadata``'s, the
refusal of a node inside an unfinished output ``zarr_unfinished``'s.
"""

from __future__ import annotations

import os
import posixpath
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._locations import Location, resolve
from .._ngff import (
    WRITE_STACK_UNFINISHED,
    find_multiscales,
    omero_model,
    parse_multiscale,
    parse_omero,
)
from .._params import parse_axes
from .common import DIM_NAMES, named_letters, ngff_unit
from .source import Source, check_dtype_and_extent
from .zarr_coords import coordinates, coordinates_text
from .zarr_metadata import _check_metadata_json, _one_line
from .zarr_unfinished import _UNFINISHED_STACK, _refuse_inside_unfinished

__all__ = ["open_zarr", "refuse_array_inside_unfinished"]


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
        if location is not None:  # as its path would be
            _refuse_inside_unfinished(location, where)
        source = _array_source(src, where, axes, location, metadata_files=())
        return source

    location = resolve(src, name="src", storage_options=storage_options)
    where = f"src {location.spec!r}"
    _refuse_inside_unfinished(location, where)
    node = _open_node(location, where)
    if isinstance(node, zarr.Group):
        return _ome_source(node, location, where, axes, int(level))
    if level:
        raise ValueError(f"level={level} needs an OME-Zarr image with levels; {where} is an array")
    meta = [location.child(f) for f in ("zarr.json", ".zarray", ".zattrs")]
    return _array_source(node, where, axes, location,
                         metadata_files=(*meta, *_consolidated(location)))  # fmt: skip


def refuse_array_inside_unfinished(array: Any, name: str) -> None:
    """:func:`_refuse_inside_unfinished` for a ``zarr.Array`` the caller opened (``fuse``'s
    ``stack``): opened from ``out.zarr/0`` of an unfinished output, it was fused, its
    unwritten blocks as fill values, where the path was refused (an adversarial run)."""
    zarr = sys.modules.get("zarr")  # not imported: the array is no zarr.Array
    if zarr is not None and isinstance(array, zarr.Array):
        location = _node_location(array)
        if location is not None:
            _refuse_inside_unfinished(location, f"{name} {location.spec!r}")


def _consolidated(location: Location) -> tuple[Location, ...]:
    """Zarr v2's consolidated metadata where the store has it: zarr reads the arrays'
    metadata from it, not from their own ``.zarray`` (an eighth adversarial run: a stale
    ``.zmetadata`` consolidated again between a run and its resume mixed two readings of the
    same chunks). Zarr v3 keeps it inside ``zarr.json``. Only where it exists, so that the
    identity of every other source is as before."""
    zmetadata = location.child(".zmetadata")
    return (zmetadata,) if zmetadata.exists() else ()


def _node_location(node: Any) -> Location | None:
    import zarr.storage

    store = node.store
    if isinstance(store, zarr.storage.LocalStore):
        base = os.fspath(store.root)
    elif isinstance(store, zarr.storage.FsspecStore) and "file" in _protocols(store.fs):
        base = store.path
    elif isinstance(store, zarr.storage.FsspecStore):  # an opened remote node is a place too
        where = posixpath.join(store.path, node.path).rstrip("/")
        protocol = _protocols(store.fs)[0]
        # zarr's instance is asynchronous; ours is not
        options = {k: v for k, v in store.fs.storage_options.items()
                   if k not in ("asynchronous", "loop")}  # fmt: skip
        try:
            return resolve(f"{protocol}://{where.lstrip('/')}", name="src", storage_options=options)
        except Exception:  # cannot be resolved again: compared by its path alone
            return Location(f"{protocol}://{where}", protocol, where, {})
    else:
        return None
    path = os.path.join(base, node.path) if node.path else base
    return resolve(path, name="src")


def _protocols(fs: Any) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def _open_node(location: Location, where: str) -> Any:
    import zarr

    if not _exists(location):
        refused = _refused(location)
        if refused is not None:  # (a wrong password's 401 said "does not exist")
            raise ValueError(
                f"{where} cannot be read: the server refused access to its metadata "
                f"({refused}); check the user name and password or the token in the URL"
            )
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


def _exists(location: Location) -> bool:
    """Whether a store is there. Over HTTP a folder is no object: an object store (S3, GCS,
    Azure over https) answers 404 for it, and every such store was "does not exist" before
    (http.server's folder pages hid it): its metadata files say."""
    if location.exists():
        return True
    return location.protocol == "http" and any(location.child(n).exists() for n in _METADATA)


#: The metadata files that show a store there: Zarr v3's, then v2's.
_METADATA = ("zarr.json", ".zgroup", ".zarray", ".zattrs")


def _refused(location: Location) -> str | None:
    """``HTTP 401, 'URL'`` where an HTTP server refuses access to one of the store's metadata
    files (a 401 or 403: fsspec's ``exists`` says False for it), the URL's secrets hidden;
    else None. Each is asked: a server that answers 404 for a missing file before it asks
    for credentials (an object store) refuses only a v2 store's ``.zarray`` (said "does
    not exist" while ``zarr.json`` alone was asked)."""
    if location.protocol != "http":
        return None
    from .._locations import redact_urls

    for name in _METADATA:
        try:
            location.child(name).read_bytes()
        except Exception as exc:
            status = getattr(exc, "status", None)
            if status in (401, 403):
                info = getattr(exc, "request_info", None)
                return f"HTTP {status}, {redact_urls(str(getattr(info, 'real_url', '')))!r}"
        else:
            return None  # (one that can be read: not refused)
    return None


def _stored_axes(array: Any) -> tuple[str | None, str]:
    """The axes an array names itself (dimension_names or _ARRAY_DIMENSIONS): single letters
    or names that say what an axis is (``channel``, ``depth``, ``time``: refused until
    2026-12-06, where xarray and zarr users name them so)."""
    names = getattr(array.metadata, "dimension_names", None)
    origin = "dimension_names"
    if not names or any(n is None for n in names):
        names = array.attrs.get("_ARRAY_DIMENSIONS")
        origin = "_ARRAY_DIMENSIONS"
    return _named_letters(names), origin


def _named_letters(names: Any) -> str | None:
    """The letters that dimension or NGFF axis names give, or None where one says nothing or
    two words name one axis ("plane", "depth"): --axes decides then (it was refused as
    contradicting "zzyx", and told to pass that). Two single
    letters for one axis are the file's own contradiction, refused as before."""
    letters = named_letters(names) if isinstance(names, (list, tuple)) else [None]
    if not names or None in letters:
        return None
    return "".join(letters)  # type: ignore[arg-type]


def _check_dtype_and_shape(array: Any, axes: str, where: str) -> None:
    check_dtype_and_extent(array.dtype, tuple(int(n) for n in array.shape), axes, where)
    # an array opened elsewhere (a zarr.Array given in Python) skipped the metadata file check
    grid = _chunk_grid(array)
    for chunks in (getattr(grid, "chunk_shape", None), getattr(array, "chunks", None)):
        if chunks is not None and any(int(c) < 1 for c in chunks):
            raise ValueError(
                f"{where} has chunk shape {tuple(int(c) for c in chunks)}; every chunk must be "
                "at least 1 element along each axis (the metadata is damaged)"
            )


def _chunk_grid(array: Any) -> Any:
    """A Zarr v3 array's chunk grid; None for v2 (whose ``chunks`` say the same: zarr 3.4
    deprecates ``chunk_grid`` on v2 metadata) and for arrays of other libraries."""
    meta = getattr(array, "metadata", None)
    return getattr(meta, "chunk_grid", None) if getattr(meta, "zarr_format", 3) == 3 else None


def _unit_shape(array: Any) -> tuple[int, ...]:
    grid = _chunk_grid(array)
    shape = getattr(grid, "chunk_shape", None)
    if shape is None:
        shape = getattr(array, "chunks", None) or array.shape
    return tuple(max(1, min(int(c), int(n))) for c, n in zip(shape, array.shape, strict=True))


def _inner_shape(array: Any) -> tuple[int, ...] | None:
    """A sharded array's chunks (zarr's ``chunks``, where ``shards`` is set), else None."""
    if getattr(array, "shards", None) is None:
        return None
    inner = tuple(
        max(1, min(int(c), int(n))) for c, n in zip(array.chunks, array.shape, strict=True)
    )
    return None if inner == _unit_shape(array) else inner


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
            f"names its dimensions {list(names)}, which do not name one axis each as a single "
            f"letter or one of {sorted(DIM_NAMES)}"
            if names and any(n is not None for n in names)
            else "does not name its dimensions (no dimension_names or _ARRAY_DIMENSIONS)"
        )
        raise ValueError(
            f"{where} {named}; pass axes= with one letter per dimension, e.g. axes='zyx'"
        )
    _check_dtype_and_shape(array, chosen, where)
    names = getattr(array.metadata, "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS")
    shape = tuple(int(n) for n in array.shape)
    scale, units, shift, told = coordinates(location if stored else None, names, chosen, shape,
                                            where, array.metadata.zarr_format)  # fmt: skip
    return Source(
        array=array,
        axes=chosen,
        scale=scale,
        units=units,
        translation=shift,
        warnings=told,
        metadata_text=coordinates_text(scale, units, shift),
        unit_shape=_unit_shape(array),
        inner_shape=_inner_shape(array),
        description=where,
        location=location,
        kind="zarr",
        metadata_files=metadata_files,
        data_root=location,
    )


def _refuse_plate_or_well(attrs: Mapping[str, Any], location: Location, where: str) -> None:
    """An HCS plate or well names its images: point to one of them. It was refused as "a Zarr
    group without multiscales; pass the array path (e.g. 'plate.zarr/0')", a path that is not
    there (an adversarial run on inputs, 2026-12-06)."""
    ome = attrs.get("ome")
    meta = ome if isinstance(ome, Mapping) else attrs  # NGFF 0.5, or 0.4's top level
    plate, well = meta.get("plate"), meta.get("well")
    try:
        if isinstance(plate, Mapping):
            paths = [w["path"] for w in plate["wells"]]
            what, example = f"an OME-NGFF plate (HCS) of {len(paths)} well(s)", f"{paths[0]}/0"
        elif isinstance(well, Mapping):
            paths = [i["path"] for i in well["images"]]
            what, example = f"an OME-NGFF well of {len(paths)} field(s)", paths[0]
        else:
            return
    except (KeyError, IndexError, TypeError):
        return
    shown = ", ".join(repr(p) for p in paths[:5]) + (", ..." if len(paths) > 5 else "")
    raise ValueError(
        f"{where} is {what} ({shown}), not one image; fuse one field of view, e.g. "
        f"{location.spec.rstrip('/') + '/' + str(example)!r}"
    )


def _bf2raw_series(group: Any, location: Location, where: str) -> str:
    """The series of a bioformats2raw layout to read: the only one holding a stack, else "0".
    Series 0 was read in silence where several held one (positions of a multi-position
    acquisition; an adversarial run on inputs, 2026-12-06): now they are named, as a TIFF's
    series are, until one is chosen (``store.zarr/1``)."""
    series: list[tuple[str, str]] = []
    while str(len(series)) in group:
        name = str(len(series))
        series.append((name, _stack_form(group[name])))
    stacks = [(name, form) for name, form in series if form]
    if len(stacks) <= 1:
        return stacks[0][0] if stacks else "0"
    listed = ", ".join(f"{name} ({form})" for name, form in stacks)
    raise ValueError(
        f"{where} holds {len(stacks)} series with a stack (a bioformats2raw layout): {listed}; "
        f"name one after the store, e.g. {location.spec.rstrip('/') + '/' + stacks[1][0]!r}"
    )


def _stack_form(node: Any) -> str:
    """``zyx 6x32x32`` for an image group whose level 0 holds more than one plane besides its
    y, x and channels; "" for any other node (a label, a macro image, a malformed group)."""
    import zarr

    if not isinstance(node, zarr.Group):
        return ""
    multiscales, _ = find_multiscales(node.attrs.asdict())
    try:
        first = multiscales[0]
        array = node[first["datasets"][0]["path"]]
        names = [a["name"] if isinstance(a, Mapping) else a for a in first.get("axes", "tczyx")]
        shape = array.shape
    except (KeyError, IndexError, TypeError, ValueError):
        return ""
    names = [str(n).lower() for n in names][-len(shape) :]
    if len(names) != len(shape):
        return ""
    if int(np.prod([n for a, n in zip(names, shape, strict=True) if a not in "yxc"])) <= 1:
        return ""
    return f"{''.join(names)} {'x'.join(map(str, shape))}"


def _plain_key(path: str) -> bool:
    """A dataset path zarr can look up in its group: relative, with no empty, ``.`` or ``..``
    part (zarr raised its own error for those, naming no source)."""
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _ome_source(group: Any, location: Location, where: str, axes: str | None, level: int):
    import zarr

    attrs = group.attrs.asdict()
    multiscales, version = find_multiscales(attrs)
    ome = attrs.get("ome")
    layout = "bioformats2raw.layout"
    is_bf2raw = layout in attrs or (isinstance(ome, Mapping) and layout in ome)
    if multiscales is None and is_bf2raw and "0" in group:
        name = _bf2raw_series(group, location, where)
        child = group[name]  # bioformats2raw: the series are the image groups "0", "1", ...
        if isinstance(child, zarr.Group):
            return _ome_source(child, location.child(name), f"{where[:-1]}/{name}'", axes, level)
    ours = attrs.get("fstack_dask")
    if multiscales is None and isinstance(ours, Mapping) and ours.get("complete") is False:
        # its metadata is published when its run completes (``_outputs.write.publish``)
        raise ValueError(
            f"{where} is an unfinished fstack_dask output, not an image yet; finish it with "
            "resume=True, or fuse the stack it was fused from"
        )
    if multiscales is None and attrs.get(WRITE_STACK_UNFINISHED):
        raise ValueError(f"{where} is {_UNFINISHED_STACK}")
    if multiscales is None:
        _refuse_plate_or_well(attrs, location, where)
        # its own arrays (an xarray Dataset's variables): "e.g. 'store.zarr/0'" named a path
        # that was not there (an adversarial run on inputs, 2026-12-06)
        arrays = sorted(k for k, a in group.arrays() if a.ndim >= 3)
        held = f" (its arrays of 3 or more dimensions: {', '.join(map(repr, arrays[:5]))})"
        raise ValueError(
            f"{where} is a Zarr group without OME-NGFF multiscales metadata; pass the path of "
            f"an array instead, e.g. "
            f"{location.spec.rstrip('/') + '/' + (arrays[0] if arrays else '0')!r}"
            f"{held if arrays else ''}"
        )
    first = multiscales[0] if isinstance(multiscales, list) and multiscales else None
    datasets = first.get("datasets") if isinstance(first, Mapping) else None
    path0 = datasets[0].get("path") if isinstance(datasets, list) and datasets else None
    if isinstance(path0, str) and _plain_key(path0):  # before zarr parses it (a zero chunk
        _check_metadata_json(location.child(path0), where, f"{path0}/")  # divides by zero)
    if not isinstance(path0, str) or not _plain_key(path0) or path0 not in group:
        raise ValueError(
            f"{where} has malformed OME-NGFF multiscales metadata: level-0 dataset "
            f"{path0!r} is not in the group"
        )
    if not isinstance(group[path0], zarr.Array):  # "" or a subgroup: an AttributeError was raised
        raise ValueError(
            f"{where} has malformed OME-NGFF multiscales metadata: level-0 dataset "
            f"{path0!r} is a group, not an array"
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

    letters = _named_letters(ms.names)
    if letters is not None:  # (its axes named "channel", "depth" were refused as for arrays)
        try:
            meta_axes = parse_axes(letters, array.ndim)
        except ValueError as exc:
            raise ValueError(f"{where}: axes from OME-NGFF metadata are unusable: {exc}") from exc
        if axes is not None and parse_axes(axes, array.ndim) != meta_axes:
            raise ValueError(
                f"axes {axes!r} disagrees with the OME-NGFF metadata of {where}, which "
                f"declares {meta_axes!r}; omit axes= or pass axes={meta_axes!r}"
            )
    elif axes is not None:  # names that say nothing (e.g. "band"): the caller's win
        meta_axes = parse_axes(axes, array.ndim)
    else:
        raise ValueError(
            f"{where} has OME-NGFF axes {list(ms.names or [])} that do not name one axis each "
            f"as a single letter or one of {sorted(DIM_NAMES)}; "
            f"pass axes= with one letter per dimension, e.g. axes='zyx'"
        )
    _check_dtype_and_shape(array, meta_axes, where)
    by_letter = dict(zip(ms.names or meta_axes, meta_axes, strict=True))
    # "µm", "um", "micron": the names NGFF asks for, as the other readers give them
    units = {by_letter[n]: ngff_unit(u) or u for n, u in ms.units.items() if n in by_letter}
    scale_vec, shift_vec = ms.scales[level], ms.translations[level]
    scale = {} if scale_vec is None else dict(zip(meta_axes, scale_vec, strict=True))
    shift = {} if shift_vec is None else dict(zip(meta_axes, shift_vec, strict=True))
    array_loc = location.child(path)
    channels = parse_omero(attrs)
    separate = "c" in meta_axes and _omero_says_separate(attrs, channels)
    meta = tuple(
        loc.child(f)
        for loc in (location, array_loc)
        for f in ("zarr.json", ".zarray", ".zattrs", ".zgroup")
    ) + _consolidated(location)
    return Source(
        array=array,
        axes=meta_axes,
        unit_shape=_unit_shape(array),
        inner_shape=_inner_shape(array),
        description=where,
        location=location,
        kind="ome-zarr",
        scale=scale,
        units=units,
        translation=shift,
        channels=channels,
        rgb="c" in meta_axes and _omero_is_rgb(attrs) and not separate,
        separate_channels=separate,
        ome_version=ms.version,
        level=level,
        metadata_files=meta,
        data_root=array_loc,
    )


def _omero_is_rgb(attrs: Mapping[str, Any]) -> bool:
    return omero_model(attrs) == "color"


_RGB = ("FF0000", "00FF00", "0000FF")


def _omero_says_separate(attrs: Mapping[str, Any], channels: list[dict[str, Any]] | None) -> bool:
    """Whether ``omero`` says the channels are not colour samples: rendered in grey, or
    coloured otherwise than red, green, blue (a fluorescence image's DAPI, GFP, Cy5)."""
    if omero_model(attrs) == "greyscale":
        return True
    colours = [str(ch.get("color", "")).upper() for ch in channels or ()]
    return bool(colours) and all(colours) and tuple(colours) != _RGB
