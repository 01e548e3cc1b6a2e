"""Writing the fused OME-Zarr 0.5 image: its description, its arrays, durable block writes.

:func:`output_spec` builds the whole description of the output (arrays, chunks, NGFF and
provenance attributes) in memory and validates it, so that a problem found in the source's
metadata (a zero pixel size, say) stops a run before anything on disk is touched.
:func:`create_output` then writes it into a folder the run owns, and :func:`write_block`
writes one block's regions and makes them durable (fsync) before the caller records the
block as done.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._locations import Location
from ._ome import check_ngff_order, multiscale_entry, omero_entry, positive_scale
from ._plan import Layout

__all__ = ["ArraySpec", "OutputSpec", "create_output", "output_spec", "write_block"]

# NGFF allows only these axis letters' units to be carried over to the 2-D image.
_CARRIED = ("t", "y", "x")
_RGB_COLOURS = ("FF0000", "00FF00", "0000FF")
OWN_NAMES = ("zarr.json", "0", "depth", "selectivity")  # what a fresh output folder holds


@dataclass(frozen=True)
class ArraySpec:
    path: str
    axes: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any


@dataclass(frozen=True)
class OutputSpec:
    """Everything :func:`create_output` writes, validated."""

    arrays: tuple[ArraySpec, ...]
    attributes: dict[str, Any]
    map_groups: dict[str, dict[str, Any]] = field(default_factory=dict)

    def array(self, path: str) -> ArraySpec:
        return next(a for a in self.arrays if a.path == path)


def _jsonable(value: Any) -> Any:
    """Strict JSON (zarr would write bare NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _channels(source: Any, layout: Layout, dtype: np.dtype) -> list[dict[str, Any]] | None:
    if "c" not in layout.axes:
        return None
    n = layout.size("c")
    given = source.channels if source.channels and len(source.channels) == n else None
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = float(info.min), float(info.max)
    else:
        lo, hi = 0.0, 1.0
    out = []
    for k in range(n):
        ch = dict(given[k]) if given else {}
        if layout.rgb:
            ch.setdefault("label", "RGB"[k] if n == 3 else f"c{k}")
            ch["color"] = _RGB_COLOURS[k] if n == 3 else ch.get("color", "FFFFFF")
        else:
            ch.setdefault("label", f"c{k}")
            ch.setdefault("color", "FFFFFF")
        window = dict(ch.get("window") or {})
        window.setdefault("min", lo)
        window.setdefault("max", hi)
        window.setdefault("start", window["min"])
        window.setdefault("end", window["max"])
        ch["window"] = window
        out.append(ch)
    return out


def output_spec(
    source: Any,
    layout: Layout,
    *,
    block: tuple[int, int],
    dtype: np.dtype,
    maps: tuple[str, ...],
    provenance: Mapping[str, Any],
    depth_unit: str | None = None,
) -> OutputSpec:
    """The output's arrays and attributes for fusing ``source`` (validated, nothing written).

    The fused image is array ``"0"`` with axes ``layout.image_axes`` (batch axes, ``c``,
    ``y``, ``x``), chunked like the blocks along y/x and 1 along the other axes; each map
    (``"depth"``, ``"selectivity"``, float32, NaN where undefined) is an array with the map
    axes. The group is an NGFF 0.5 multiscale image whose scale, units and translation along
    t, y and x come from the source, with an ``omero`` block for channels.

    Raises
    ------
    ValueError
        If the source's metadata cannot make a valid NGFF description (a pixel size that is
        zero, negative or not finite; axes out of NGFF order).
    """
    letters = layout.image_axes
    check_ngff_order(letters)
    size = {a: layout.size(a) for a in layout.axes}
    chunk = {"y": block[0], "x": block[1]}
    shape = tuple(size[a] for a in letters)
    chunks = tuple(min(chunk.get(a, 1), size[a]) for a in letters)
    arrays = [ArraySpec("0", letters, shape, chunks, dtype, 0)]
    map_letters = layout.map_axes
    for name in maps:
        arrays.append(
            ArraySpec(
                name,
                map_letters,
                tuple(size[a] for a in map_letters),
                tuple(min(chunk.get(a, 1), size[a]) for a in map_letters),
                np.dtype(np.float32),
                np.nan,
            )
        )
    where = source.description
    carried_scale = {a: v for a, v in source.scale.items() if a in _CARRIED}
    scale = positive_scale(carried_scale, letters, f"the scale of {where}")
    units = {a: u for a, u in source.units.items() if a in _CARRIED}
    shift = [float(source.translation.get(a, 0.0)) for a in letters]
    if not all(math.isfinite(v) for v in shift):
        raise ValueError(f"the translation of {where} must be finite, got {source.translation}")
    ome: dict[str, Any] = {
        "version": "0.5",
        "multiscales": [
            multiscale_entry(
                name="fused",
                letters=letters,
                units=units,
                scales=[scale],
                translations=[shift],
                paths=["0"],
            )
        ],
    }
    channels = _channels(source, layout, dtype)
    if channels is not None:
        ome["omero"] = omero_entry(channels, rgb=layout.rgb)
    attributes = {"ome": _jsonable(ome), "fstack_dask": _jsonable(dict(provenance))}
    map_groups = {}
    if "depth" in maps:
        map_groups["depth"] = {"unit": depth_unit}
    return OutputSpec(tuple(arrays), attributes, map_groups)


def create_output(location: Location, spec: OutputSpec) -> Any:
    """Write the (empty) output group described by ``spec`` into ``location``.

    ``location`` must be a folder the caller owns (created by this run, or an empty folder
    it checked). The provenance attribute is written last: a group that has it is complete
    as a structure, even if the process creating it was killed.
    """
    import zarr

    attrs = dict(spec.attributes)
    provenance = attrs.pop("fstack_dask")
    group = zarr.create_group(
        store=location.zarr_store(read_only=False), zarr_format=3, attributes=attrs
    )
    for a in spec.arrays:
        group.create_array(
            name=a.path,
            shape=a.shape,
            dtype=a.dtype,
            chunks=a.chunks,
            shards=None,
            fill_value=a.fill_value,
            dimension_names=list(a.axes),
        )
    group.attrs.update({"fstack_dask": provenance})
    return group


def open_output(location: Location, *, mode: str = "r+") -> Any:
    import zarr

    return zarr.open_group(store=location.zarr_store(read_only=mode == "r"), mode=mode)


def write_block(
    arrays: Mapping[str, Any], regions: Mapping[str, tuple[slice, ...]], data: Mapping[str, Any]
) -> list[str]:
    """Write each array's region; return the chunk keys written (for :func:`make_durable`)."""
    keys = []
    for name, values in data.items():
        array = arrays[name]
        region = regions[name]
        array[region] = values
        ranges = [
            range(s.start // c, (s.stop - 1) // c + 1)
            for s, c in zip(region, array.chunks, strict=True)
        ]
        for index in np.ndindex(*(len(r) for r in ranges)):
            coords = tuple(r[i] for r, i in zip(ranges, index, strict=True))
            keys.append(f"{array.path}/{array.metadata.encode_chunk_key(coords)}")
    return keys


def make_durable(location: Location, keys: list[str]) -> None:
    """fsync the written chunk files and their folders (local filesystems only).

    Object stores make a write durable when the request returns; on a local filesystem a
    power cut could otherwise leave a done-marker on disk whose chunk files were still in
    the page cache.
    """
    if not location.is_local:
        return
    folders = set()
    for key in keys:
        path = os.path.join(location.path, *key.split("/"))
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # an all-fill chunk zarr chose not to store
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        folders.add(os.path.dirname(path))
    for folder in folders:
        fsync_dir(folder)


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not sync directories
    finally:
        os.close(fd)
