"""Pick one resolution level of an OME-NGFF (0.4/0.5) multiscale image.

`_io` reads level 0 only; `--level N` needs the N-th dataset's path and its own
physical scale and translation (each dataset's transforms composed with the
multiscale's global ones, as NGFF defines them). Pure metadata work, no zarr.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ngff_level"]


def ngff_level(
    multiscale: Mapping[str, Any], level: int, ndim: int, where: str
) -> tuple[str, list[float] | None, list[float] | None]:
    """The dataset path, scale and translation of one level of a multiscale image.

    Parameters
    ----------
    multiscale : mapping
        One entry of the NGFF ``multiscales`` list.
    level : int
        Index into its ``datasets`` (0 is full resolution).
    ndim : int
        Number of dimensions of the arrays.
    where : str
        The source, for messages.

    Returns
    -------
    path : str
        The level's array path inside the image group.
    scale, translation : list of float or None
        Per dimension, composed with the multiscale-wide transforms; None when
        the metadata has none (or an unusable one).

    Raises
    ------
    ValueError
        If `level` is out of range (the message names ``level``) or the
        dataset entry has no path.

    Examples
    --------
    >>> ms = {"datasets": [
    ...     {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2, 0.5, 0.5]}]},
    ...     {"path": "1", "coordinateTransformations": [
    ...         {"type": "scale", "scale": [2, 1, 1]},
    ...         {"type": "translation", "translation": [0, 0.25, 0.25]}]}],
    ...     "coordinateTransformations": [{"type": "scale", "scale": [1, 2, 2]}]}
    >>> ngff_level(ms, 1, 3, "img.zarr")
    ('1', [2.0, 2.0, 2.0], [0.0, 0.5, 0.5])
    """
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(f"level must be an integer >= 0, got {level!r}")
    datasets = multiscale.get("datasets")
    if not isinstance(datasets, list):
        raise ValueError(f"src {where!r} has malformed OME-NGFF metadata: no 'datasets' list")
    if not 0 <= level < len(datasets):
        raise ValueError(
            f"level={level} is out of range: src {where!r} has {len(datasets)} resolution "
            f"level(s), 0 to {len(datasets) - 1}"
        )
    entry = datasets[level]
    path = entry.get("path") if isinstance(entry, Mapping) else None
    if not isinstance(path, str):
        raise ValueError(
            f"src {where!r} has malformed OME-NGFF metadata: level {level} has no path"
        )
    scale, shift = _transforms(entry.get("coordinateTransformations"), ndim)
    g_scale, g_shift = _transforms(multiscale.get("coordinateTransformations"), ndim)
    # NGFF applies the dataset's transforms first, then the multiscale's:
    # x -> (x * s + t) * S + T = x * (s S) + (t S + T).
    if scale is not None and g_scale is not None:
        scale = [a * b for a, b in zip(scale, g_scale, strict=True)]
    if shift is not None and g_scale is not None:
        shift = [a * b for a, b in zip(shift, g_scale, strict=True)]
    if g_shift is not None:
        shift = g_shift if shift is None else [a + b for a, b in zip(shift, g_shift, strict=True)]
    return path, scale, shift


def _transforms(transforms: Any, ndim: int) -> tuple[list[float] | None, list[float] | None]:
    out: dict[str, list[float] | None] = {"scale": None, "translation": None}
    if not isinstance(transforms, list):
        return None, None
    for t in transforms:
        kind = t.get("type") if isinstance(t, Mapping) else None
        if kind in out:
            vec = t.get(kind)  # a "path" to a binary vector is not supported
            try:
                if isinstance(vec, list) and len(vec) == ndim:
                    out[kind] = [float(v) for v in vec]
            except (TypeError, ValueError):
                out[kind] = None
    return out["scale"], out["translation"]
