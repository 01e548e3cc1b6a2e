"""Display windows of a float image from its data.

An integer image's ``omero`` window is its dtype's range, known before anything is fused. A
float image has no such range: the window ``0..1`` written at the start showed a fused
image of values in the thousands saturated white in napari (an interop run). Once the image
and its pyramid are written, each channel's window is set from the values of its coarsest
level (the 2 x 2 means of the pyramid, a few chunks), except where the source gave one.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np

from .._locations import Location

__all__ = ["fit_float_windows"]

#: At most this many chunks of the coarsest level are read per image (a run with
#: ``levels=0`` has the full image there: a sample of it is enough for a display window).
MOST_CHUNKS = 16


def fit_float_windows(location: Location, *, given: Collection[int] = ()) -> None:
    """Set the ``omero`` window (min, max, start, end) of each channel of the float image at
    ``location`` to the finite values of its coarsest level; channels in ``given`` (their
    window came from the source) and integer images are left as they are.

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
    >>> fit_float_windows(resolve(path, name="dst"))
    >>> g = zarr.open_group(path, mode="r")
    >>> g.attrs["ome"]["omero"]["channels"][0]["window"]
    {'min': 2.5, 'max': 7.0, 'start': 2.5, 'end': 7.0}
    """
    import zarr

    group = zarr.open_group(store=location.zarr_store(read_only=False), mode="r+")
    ome = dict(group.attrs["ome"])
    channels = (ome.get("omero") or {}).get("channels")
    coarsest = group[ome["multiscales"][0]["datasets"][-1]["path"]]
    if not channels or coarsest.dtype.kind != "f":
        return
    c_axis = list(coarsest.metadata.dimension_names or ()).index("c") if len(channels) > 1 else None
    changed = False
    for k, channel in enumerate(channels):
        if k in given:
            continue
        low, high = _finite_range(coarsest, c_axis, k)
        if low is None:
            continue  # no finite value: the window written at the start stays
        channel["window"] = {"min": low, "max": high, "start": low, "end": high}
        changed = True
    if changed:
        group.attrs["ome"] = ome


def _finite_range(array, c_axis: int | None, k: int) -> tuple[float | None, float | None]:
    """The smallest and largest finite value of channel ``k``, read chunk by chunk from at
    most :data:`MOST_CHUNKS` chunks spread over the array."""
    grid = [math.ceil(n / c) for n, c in zip(array.shape, array.chunks, strict=True)]
    if c_axis is not None:
        grid[c_axis] = 1
    indices = list(np.ndindex(*grid))
    step = max(1, math.ceil(len(indices) / MOST_CHUNKS))
    low, high = math.inf, -math.inf
    for index in indices[::step]:
        region = tuple(
            slice(k, k + 1) if axis == c_axis else slice(i * c, (i + 1) * c)
            for axis, (i, c) in enumerate(zip(index, array.chunks, strict=True))
        )
        values = np.asarray(array[region], dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size:
            low, high = min(low, float(values.min())), max(high, float(values.max()))
    return (low, high) if low <= high else (None, None)
