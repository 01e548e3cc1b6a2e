"""Display windows of a fused image from its data.

A float image has no range known before anything is fused: the window ``0..1`` written at the
start showed a fused image of values in the thousands saturated white in napari (an interop
run). Once the image and its pyramid are written, each channel's ``min``/``max`` (the range a
viewer's slider spans) is set to the smallest and largest finite value of its full-resolution
image, read chunk by chunk on threads, and ``start``/``end`` (the contrast shown) to those of
its coarsest level (the pyramid's 2 x 2 means: a bright spot does not set the contrast of the
whole image), except where the source gave a window.

An integer image keeps its dtype's range as ``min``/``max``; its ``start``/``end`` were that
range too, so that napari showed a 12-bit camera's uint16 image (values up to 4095 of 65535)
nearly black where the source, without a window, had been shown by its values (a readers'
run, 2026-12-06): they now follow its coarsest level as a float image's do. An RGB image keeps
its dtype's range: its colours are shown as they are.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .._locations import Location
from .write import ngff_metadata, set_ngff_metadata

__all__ = ["fit_display_windows"]

#: At most this many chunks of the coarsest level are read per image (a run with
#: ``levels=0`` has the full image there: a sample of it is enough for a display window).
MOST_CHUNKS = 16


def fit_display_windows(location: Location, *, given: Collection[int] = ()) -> None:
    """Set the ``omero`` window of each channel of the image at ``location`` from its data:
    a float image's ``min`` and ``max`` to the finite values of its full resolution, and every
    image's ``start`` and ``end`` to those of its coarsest level; channels in ``given`` (their
    window came from the source), RGB integer images and a constant integer channel are left
    as they are.

    Examples
    --------
    >>> import tempfile, numpy as np, zarr
    >>> from fstack_dask._locations import resolve
    >>> path = tempfile.mkdtemp() + "/o.ome.zarr"
    >>> g = zarr.open_group(path, mode="w")
    >>> g.create_array("0", data=np.array([[2.5, 7.0], [np.nan, 3.0]], np.float32))
    <Array ...>
    >>> g.attrs["ome"] = {"multiscales": [{"datasets": [{"path": "0"}]}],
    ...                   "omero": {"channels": [{"window": {"min": 0, "max": 1}}]}}
    >>> fit_display_windows(resolve(path, name="dst"))
    >>> g = zarr.open_group(path, mode="r")
    >>> g.attrs["ome"]["omero"]["channels"][0]["window"]
    {'min': 2.5, 'max': 7.0, 'start': 2.5, 'end': 7.0}
    """
    import zarr

    group = zarr.open_group(store=location.zarr_store(read_only=False), mode="r+")
    ome = ngff_metadata(group.attrs.asdict())  # an unfinished output's, not yet published
    omero = ome.get("omero") or {}
    channels = omero.get("channels")
    datasets = ome["multiscales"][0]["datasets"]
    full, coarsest = group[datasets[0]["path"]], group[datasets[-1]["path"]]
    floats = coarsest.dtype.kind == "f"
    rgb = (omero.get("rdefs") or {}).get("model") == "color"
    if not channels or not (floats or (coarsest.dtype.kind in "iu" and not rgb)):
        return
    c_axis = list(coarsest.metadata.dimension_names or ()).index("c") if len(channels) > 1 else None
    changed = False
    for k, channel in enumerate(channels):
        if k in given:
            continue
        window = dict(channel.get("window") or {})
        low, high = window.get("min"), window.get("max")
        if floats:
            low, high = _finite_range(full, c_axis, k, most=None)
            if low is None:
                continue  # no finite value: the window written at the start stays
        start, end = _finite_range(coarsest, c_axis, k, most=MOST_CHUNKS)
        if not floats and (start is None or start >= end):
            continue  # constant: a window of no width shows nothing (the dtype's range stays)
        if start is None:
            start, end = low, high
        channel["window"] = {"min": low, "max": high, "start": start, "end": end}
        changed = True
    if changed:
        set_ngff_metadata(group, ome)


def _finite_range(
    array, c_axis: int | None, k: int, *, most: int | None
) -> tuple[float | None, float | None]:
    """The smallest and largest finite value of channel ``k``, read a chunk at a time on
    threads, from every chunk or at most ``most`` chunks spread over the array."""
    grid = [math.ceil(n / c) for n, c in zip(array.shape, array.chunks, strict=True)]
    if c_axis is not None:
        grid[c_axis] = 1
    indices = list(np.ndindex(*grid))
    if most is not None:
        indices = indices[:: max(1, math.ceil(len(indices) / most))]

    def one(index: tuple[int, ...]) -> tuple[float, float]:
        region = tuple(
            slice(k, k + 1) if axis == c_axis else slice(i * c, (i + 1) * c)
            for axis, (i, c) in enumerate(zip(index, array.chunks, strict=True))
        )
        values = np.asarray(array[region])
        values = values[np.isfinite(values)]
        if not values.size:
            return math.inf, -math.inf
        return float(values.min()), float(values.max())

    with ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, len(indices)))) as pool:
        found = list(pool.map(one, indices))
    low, high = min(f[0] for f in found), max(f[1] for f in found)
    return (low, high) if low <= high else (None, None)
