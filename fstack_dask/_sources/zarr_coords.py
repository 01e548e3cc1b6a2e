"""The coordinate arrays that xarray's ``to_zarr`` stores beside a data array (one 1-D array
per dimension, named as the dimension, its unit in ``units``): the array's pixel sizes,
units and position, read as an xarray ``DataArray``'s coordinates are (`arrays`).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .._locations import Location
from .arrays import _even_step
from .common import ngff_unit

__all__: list[str] = []

_MAX_VALUES = 2**24  # a coordinate longer than any axis we read is not one of ours


def coordinates(
    location: Location | None,
    names: Any,
    letters: str,
    shape: tuple[int, ...],
    where: str,
    zarr_format: int = 3,
) -> tuple[dict[str, float], dict[str, str], dict[str, float], tuple[str, ...]]:
    """(scale, units, translation, warnings) from the arrays beside ``location`` named as its
    dimensions: an xarray Dataset saved with ``to_zarr`` had its pixel sizes dropped in
    silence, fused with scale 1 (an adversarial run on metadata). A coordinate that is not
    evenly increasing gives none, with a warning, as for a DataArray."""
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    shift: dict[str, float] = {}
    told: list[str] = []
    if location is None or not isinstance(names, (list, tuple)):
        return scale, units, shift, ()
    for name, letter, n in zip(names, letters, shape, strict=True):
        coord = _open_coordinate(location, name, n, zarr_format) if letter != "c" else None
        if coord is None:
            continue
        values = np.asarray(coord[...])
        spacing = _even_step(values)
        if spacing is None:
            if values.size > 1 and values.dtype.kind in "iuf":
                told.append(
                    f"{where}: its coordinate array {name!r} is not evenly increasing "
                    f"({values[0]:g}, {values[1]:g}, ...): it gives {letter} no scale"
                )
            continue
        first, step = spacing
        if step is not None:
            scale[letter] = step
        said, since, _ = str(coord.attrs.get("units", "")).partition(" since ")
        if not since:
            shift[letter] = first
        # CF's encoded dates, "hours since 2026-12-06": the step is in hours, and the first
        # value a date, no position (the step was written without a unit, the date as a
        # translation of 0 or 7000)
        unit = ngff_unit(said)
        if unit is not None:
            units[letter] = unit
    return scale, units, shift, tuple(told)


def _open_coordinate(location: Location, name: Any, n: int, zarr_format: int) -> Any:
    """The 1-D array of length ``n`` named ``name`` beside ``location``, else None: an array
    of the data array's own Zarr format, as xarray writes them. (``zarr.open`` tried an array
    and a group of both formats, 7 reads a name where there is none: 21 round trips on an
    object store for every zyx array opened, and again in every worker.)"""
    import zarr

    if not isinstance(name, str) or not name or "/" in name or n > _MAX_VALUES:
        return None
    store = location.sibling(name).zarr_store(read_only=True)
    try:
        node = zarr.open_array(store=store, mode="r", zarr_format=zarr_format)
    except (FileNotFoundError, KeyError, ValueError, TypeError, zarr.errors.NodeNotFoundError):
        return None
    if not isinstance(node, zarr.Array) or tuple(node.shape) != (n,):
        return None
    return node


def coordinates_text(scale: dict, units: dict, shift: dict) -> str:
    """What the coordinate arrays gave, for the source's identity: a resume after the user
    rewrote ``z`` (a 2 um step made 5) fused the rest under the new step, its depth map
    mixing both (an adversarial run). Empty where they gave nothing, as the
    identity of a store without them was."""
    if not (scale or units or shift):
        return ""
    return json.dumps({"coordinates": [scale, units, shift]}, sort_keys=True)
