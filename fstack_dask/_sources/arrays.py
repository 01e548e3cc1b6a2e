"""In-memory and lazy arrays as a stack: NumPy, dask and xarray (its ``dims`` honoured).

This lets `fuse_zarr`'s resumable writer take an array that has no Zarr source.
xarray's dimension names give the axes, and evenly spaced coordinates give the
physical scale (with ``attrs["units"]`` of each coordinate, CF style).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._params import check_plain_array, parse_axes
from .common import DIM_NAMES, int_axes, named_letters, ngff_unit, region_key
from .stack_meta import OpenedStack

__all__ = ["DIM_NAMES", "array_source", "is_xarray", "xarray_letters"]

_EVEN = 1e-6  # relative tolerance on coordinate steps for "evenly spaced"


def array_source(obj: Any, *, axes: str | None = None) -> OpenedStack:
    """Wrap a NumPy, dask or xarray array as a stack for the pipeline.

    Parameters
    ----------
    obj : numpy.ndarray, dask.array.Array or xarray.DataArray
        The stack. A DataArray's ``dims`` name its axes: single letters
        (case-insensitive) and the names in `DIM_NAMES` (``focus``, ``depth``,
        ``plane`` -> z, ``time`` -> t, ``channel`` -> c) map directly.
    axes : str, optional
        One letter per dimension. Required for NumPy and dask arrays, and for a
        DataArray whose dims do not all map; for one whose dims do map it must
        agree with them.

    Returns
    -------
    OpenedStack
        ``kind`` is ``"numpy"``, ``"dask"`` or ``"xarray"``; ``files`` is empty.
        For a DataArray, ``scale``/``translation`` come from coordinates that are
        numeric and evenly spaced (increasing), ``units`` from their
        ``attrs["units"]``, ``channel_names`` from string coordinates of ``c``.
        A dask-backed array is wrapped so that ``chunks`` is its regular chunk
        shape and reads compute the region (the dask array itself is the
        wrapper's ``dask_array``).

    Raises
    ------
    TypeError
        If `obj` is not one of these arrays or `axes` is not a str.
    ValueError
        If `axes` is missing where needed, malformed, or contradicts the dims
        (the message names ``axes``).

    References
    ----------
    S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of all-in-focus
    images by noise-robust selective fusion of limited depth-of-field images",
    IEEE Trans. Image Process. 22(3):1242-1251, 2013 (the fusion these stacks feed).
    """
    kind = _kind(obj)
    check_plain_array(obj, "src")
    if kind == "xarray":
        return _from_xarray(obj, axes)
    if axes is None:
        raise ValueError(
            f"axes is required for a {kind} array (it has no dimension names); pass one "
            f"letter per dimension, e.g. axes='zyx' for shape {tuple(obj.shape)}"
        )
    letters = parse_axes(axes, obj.ndim)
    return _stack(_wrap(obj, kind), letters, kind, f"{kind} array {tuple(obj.shape)}")


def _kind(obj: Any) -> str:
    module = type(obj).__module__.split(".")[0]
    if isinstance(obj, np.ndarray):
        return "numpy"
    if module == "dask" and hasattr(obj, "dask") and hasattr(obj, "chunks"):
        return "dask"
    if is_xarray(obj):
        return "xarray"
    raise TypeError(
        f"obj must be a numpy.ndarray, dask.array.Array or xarray.DataArray, "
        f"got {type(obj).__module__}.{type(obj).__name__}"
    )


def _wrap(data: Any, kind: str) -> Any:
    return _DaskRegions(data) if kind == "dask" else _NumpyRegions(np.asarray(data))


def _stack(array: Any, letters: str, kind: str, description: str, **meta: Any) -> OpenedStack:
    return OpenedStack(
        array=array,
        axes=letters,
        kind=kind,
        scale=meta.get("scale", {}),
        units=meta.get("units", {}),
        translation=meta.get("translation", {}),
        channel_names=meta.get("channel_names"),
        channel_colors=None,
        rgb=False,  # an array does not say it holds colour: channels="auto" decides
        files=(),
        description=description,
        warnings=meta.get("warnings", ()),
    )


def is_xarray(obj: Any) -> bool:
    """Whether ``obj`` is an xarray ``DataArray`` (whose ``dims`` name its axes)."""
    module = type(obj).__module__.split(".")[0]
    return module == "xarray" and hasattr(obj, "dims") and hasattr(obj, "variable")


def xarray_letters(da: Any, axes: str | None) -> str:
    """The axis letters of the DataArray ``da``: from its ``dims``, or ``axes`` checked
    against them (a contradicting ``axes`` refused, naming it)."""
    dims = [str(d) for d in da.dims]
    mapped = named_letters(dims)
    if axes is None:
        if None in mapped:
            raise ValueError(
                f"axes is required: xarray dims {tuple(dims)} do not name one axis each as a "
                f"single letter or one of {sorted(DIM_NAMES)}; pass one letter per dimension, "
                "e.g. axes='zyx'"
            )
        try:
            letters = parse_axes("".join(mapped), da.ndim)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(
                f"axes from xarray dims {tuple(dims)} are unusable ({exc}); pass axes="
            ) from exc
    else:
        letters = parse_axes(axes, da.ndim)
        clash = [(d, m, a) for d, m, a in zip(dims, mapped, letters, strict=True) if m and m != a]
        if clash:
            d, m, a = clash[0]
            raise ValueError(
                f"axes {axes!r} contradicts the xarray dims {tuple(dims)}: dim {d!r} is {m!r}, "
                f"not {a!r}; omit axes= or rename the dims"
            )
    return letters


def _from_xarray(da: Any, axes: str | None) -> OpenedStack:
    dims = [str(d) for d in da.dims]
    letters = xarray_letters(da, axes)
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    translation: dict[str, float] = {}
    names = None
    told = []
    for dim, letter in zip(dims, letters, strict=True):
        if dim not in da.coords:
            continue
        coord = da.coords[dim]
        values = np.asarray(coord.values)
        if letter == "c":  # channel labels, not positions
            if values.dtype.kind in "USO":
                names = tuple(str(v) for v in values)
            continue
        spacing = _even_step(values)
        if spacing is None:
            if values.ndim == 1 and values.size > 1 and values.dtype.kind in "iuf":
                # (a descending or uneven coordinate was dropped in silence: an interop run)
                told.append(
                    f"the coordinate of dim {dim!r} is not evenly increasing "
                    f"({values[0]:g}, {values[1]:g}, ...): it gives {letter} no scale"
                    + (" (the depth map is in plane numbers)" if letter == "z" else "")
                )
            continue
        first, step = spacing
        translation[letter] = first
        if step is not None:
            scale[letter] = step
        unit = ngff_unit(coord.attrs.get("units"))
        if unit is not None:
            units[letter] = unit
    wrapped = _wrap(da.data, "dask" if _is_dask(da.data) else "numpy")
    name = f" {da.name!r}" if da.name is not None else ""
    description = f"xarray DataArray{name} {dict(da.sizes)}"
    return _stack(
        wrapped, letters, "xarray", description, scale=scale, units=units,
        translation=translation, channel_names=names,
        warnings=tuple(f"{description}: {t}" for t in told),
    )  # fmt: skip


def _is_dask(data: Any) -> bool:
    return type(data).__module__.split(".")[0] == "dask"


def _even_step(values: np.ndarray) -> tuple[float, float | None] | None:
    """(first value, step) of a numeric, evenly increasing 1-D coordinate, else None.

    A single value gives a translation without a step.
    """
    if values.ndim != 1 or values.size == 0 or values.dtype.kind not in "iuf":
        return None
    v = values.astype(np.float64)
    if not np.all(np.isfinite(v)):
        return None
    if v.size == 1:
        return float(v[0]), None
    steps = np.diff(v)
    step = (v[-1] - v[0]) / (v.size - 1)
    if step <= 0 or np.max(np.abs(steps - step)) > _EVEN * step:
        return None
    return float(v[0]), float(step)


class _NumpyRegions:
    """A NumPy array seen through the readers' interface (one chunk: any read is cheap)."""

    def __init__(self, data: np.ndarray):
        self.data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.chunks = tuple(int(n) for n in data.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.data[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.data if dtype is None else self.data.astype(dtype)

    def __dask_tokenize__(self) -> Any:
        # by content: dask before 2025.3 gave an object without this a random token in
        # each process, so a resume of a NumPy source always found "another source"
        from dask.base import tokenize

        return (type(self).__name__, tokenize(self.data))


class _DaskRegions:
    """A dask array seen through the readers' interface: reads compute the region.

    The region is computed with the synchronous scheduler, so a read inside a
    task of another dask computation does not wait on that computation's pool.
    ``chunks`` is the regular chunk shape (the largest chunk along each axis).
    """

    def __init__(self, data: Any):
        self.dask_array = data
        self.shape = tuple(int(n) for n in data.shape)
        self.dtype, self.ndim = np.dtype(data.dtype), data.ndim
        self.chunks = tuple(max(c) if c else 0 for c in data.chunks)

    def __getitem__(self, key: Any) -> np.ndarray:
        region = region_key(key, self.shape)
        out = np.asarray(self.dask_array[region].compute(scheduler="synchronous"))
        squeeze = int_axes(key, self.ndim)
        return out.squeeze(axis=squeeze) if squeeze else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def __dask_tokenize__(self) -> Any:
        return (type(self).__name__, self.dask_array.name)
