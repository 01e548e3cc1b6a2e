"""OME-NGFF (OME-Zarr) metadata: reading a multiscale image's description, writing ours.

Only dictionaries here: no stores, no arrays. Reading accepts NGFF 0.1-0.5 (0.5 keeps
everything under the ``"ome"`` attribute; older versions put ``multiscales`` at the top and
the version inside each multiscale); writing produces NGFF 0.5.

References: https://ngff.openmicroscopy.org/0.5/ (multiscales, axes,
coordinateTransformations, omero).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Multiscale",
    "axis_type",
    "check_ngff_order",
    "find_multiscales",
    "multiscale_entry",
    "omero_entry",
    "parse_multiscale",
    "parse_omero",
    "omero_model",
    "OME_LENGTHS",
    "OME_TIMES",
    "WRITE_STACK_UNFINISHED",
]

NGFF_MAX_NDIM = 5
SPACE_UNITS = (
    "angstrom attometer centimeter decimeter exameter femtometer foot gigameter hectometer "
    "inch kilometer megameter meter micrometer mile millimeter nanometer parsec petameter "
    "picometer terameter yard yoctometer yottameter zeptometer zettameter"
).split()
TIME_UNITS = (
    "attosecond centisecond day decisecond exasecond femtosecond gigasecond hectosecond hour "
    "kilosecond megasecond microsecond millisecond minute nanosecond petasecond picosecond "
    "second terasecond yoctosecond yottasecond zeptosecond zettasecond"
).split()

# The attribute a store's group holds while write_stack writes it, replaced by its NGFF
# metadata once its data is written: a store a kill cut short keeps it, and its array,
# mostly fill values, is refused as a source (the group's error pointed at the array).
WRITE_STACK_UNFINISHED = "fstack_dask_write_stack_unfinished"

# Every OME-NGFF unit as OME-XML's UnitsLength symbol, with its size in metres (the TIFF
# resolution tags), and as UnitsTime: written into OME-TIFFs (an interop run found 6 of 26
# lengths written, the others' pixel sizes dropped) and read from them, case and all.
OME_LENGTHS = {
    "yottameter": ("Ym", 1e24), "zettameter": ("Zm", 1e21), "exameter": ("Em", 1e18),
    "petameter": ("Pm", 1e15), "terameter": ("Tm", 1e12), "gigameter": ("Gm", 1e9),
    "megameter": ("Mm", 1e6), "kilometer": ("km", 1e3), "hectometer": ("hm", 1e2),
    "meter": ("m", 1.0), "decimeter": ("dm", 1e-1), "centimeter": ("cm", 1e-2),
    "millimeter": ("mm", 1e-3), "micrometer": ("\u00b5m", 1e-6), "nanometer": ("nm", 1e-9),
    "picometer": ("pm", 1e-12), "femtometer": ("fm", 1e-15), "attometer": ("am", 1e-18),
    "zeptometer": ("zm", 1e-21), "yoctometer": ("ym", 1e-24), "angstrom": ("\u00c5", 1e-10),
    "inch": ("in", 0.0254), "foot": ("ft", 0.3048), "yard": ("yd", 0.9144),
    "mile": ("mi", 1609.344), "parsec": ("pc", 3.0856775814913673e16),
}  # fmt: skip
OME_TIMES = {
    "yottasecond": "Ys", "zettasecond": "Zs", "exasecond": "Es", "petasecond": "Ps",
    "terasecond": "Ts", "gigasecond": "Gs", "megasecond": "Ms", "kilosecond": "ks",
    "hectosecond": "hs", "second": "s", "decisecond": "ds", "centisecond": "cs",
    "millisecond": "ms", "microsecond": "\u00b5s", "nanosecond": "ns", "picosecond": "ps",
    "femtosecond": "fs", "attosecond": "as", "zeptosecond": "zs", "yoctosecond": "ys",
    "minute": "min", "hour": "h", "day": "d",
}  # fmt: skip


def axis_type(letter: str) -> str | None:
    """NGFF axis type of one of our axis letters (None: a custom, untyped axis)."""
    if letter == "t":
        return "time"
    if letter == "c":
        return "channel"
    if letter in "zyx":
        return "space"
    return None


def check_ngff_order(axes: str) -> None:
    """Refuse axes that would make non-conformant NGFF 0.4/0.5 metadata."""
    rank = {"time": 0, None: 1, "channel": 1, "space": 2}
    types = [axis_type(a) for a in axes]
    n_time = types.count("time")
    n_other = sum(t in (None, "channel") for t in types)
    ordered = [rank[t] for t in types] == sorted(rank[t] for t in types)
    if len(axes) > NGFF_MAX_NDIM or n_time > 1 or n_other > 1 or not ordered:
        raise ValueError(
            f"axes {axes!r} cannot be written as OME-NGFF; expected at most 5 axes ordered as "
            f"[t][c]zyx (time, then one channel or custom axis, then space)"
        )


# ------------------------------------------------------------------------------ reading


def find_multiscales(attrs: Mapping[str, Any]) -> tuple[Any, str | None]:
    """The ``multiscales`` list of a group's attributes and the NGFF version, or (None, None)."""
    ome = attrs.get("ome")
    if isinstance(ome, Mapping) and "multiscales" in ome:  # NGFF >= 0.5
        version = ome.get("version")
        return ome["multiscales"], None if version is None else str(version)
    if "multiscales" in attrs:  # NGFF <= 0.4: the version lives in each multiscale
        ms = attrs["multiscales"]
        first = ms[0] if isinstance(ms, list) and ms and isinstance(ms[0], Mapping) else {}
        version = first.get("version")
        return ms, None if version is None else str(version)
    return None, None


@dataclass(frozen=True)
class Multiscale:
    """What we use of one NGFF multiscale image.

    ``scales`` and ``translations`` hold, per level, the axis-letter -> value maps of the
    level's full transform (the dataset's transform composed with the multiscale's own).
    ``names`` are the axes' names as stored (maybe longer than one letter).
    """

    paths: tuple[str, ...]
    names: tuple[str, ...] | None
    units: dict[str, str] = field(default_factory=dict)
    types: tuple[str | None, ...] | None = None
    scales: tuple[tuple[float, ...] | None, ...] = ()
    translations: tuple[tuple[float, ...] | None, ...] = ()
    version: str | None = None


def _vector(transforms: Any, kind: str, ndim: int) -> tuple[float, ...] | None:
    if not isinstance(transforms, list):
        return None
    for t in transforms:
        if isinstance(t, Mapping) and t.get("type") == kind:
            vec = t.get(kind)  # a "path" to a binary vector is not supported
            if isinstance(vec, list) and len(vec) == ndim:
                try:
                    return tuple(float(v) for v in vec)
                except (TypeError, ValueError):
                    return None
    return None


def parse_multiscale(
    multiscales: Any, *, ndim: int, where: str, version: str | None = None
) -> Multiscale:
    """Validate the first multiscale image of ``multiscales`` and extract what we use.

    ``ndim`` is the dimensionality of level 0 (needed to check the axes). Raises ValueError
    naming ``where`` (e.g. ``"src 'x.zarr'"``) for malformed metadata.
    """
    bad = f"{where} has malformed OME-NGFF multiscales metadata"
    if not isinstance(multiscales, list) or not multiscales:
        raise ValueError(f"{bad}: expected a non-empty list of multiscale images")
    ms = multiscales[0]
    datasets = ms.get("datasets") if isinstance(ms, Mapping) else None
    if not isinstance(datasets, list) or not datasets:
        raise ValueError(f"{bad}: expected a non-empty 'datasets' list")
    paths = []
    for d in datasets:
        path = d.get("path") if isinstance(d, Mapping) else None
        if not isinstance(path, str) or not path:
            raise ValueError(f"{bad}: every dataset needs a 'path' string")
        paths.append(path)

    raw_axes = ms.get("axes")
    if raw_axes is None and ndim == NGFF_MAX_NDIM:
        raw_axes = list("tczyx")  # NGFF <= 0.2 implied 5-D tczyx
    names: tuple[str, ...] | None = None
    types: tuple[str | None, ...] | None = None
    units: dict[str, str] = {}
    if isinstance(raw_axes, list):
        names = tuple(a.get("name") if isinstance(a, Mapping) else a for a in raw_axes)
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"{bad}: every entry of 'axes' needs a string name")
        if len(names) != ndim:
            raise ValueError(f"{bad}: {len(names)} axes for a {ndim}-D level-0 array")
        types = tuple(a.get("type") if isinstance(a, Mapping) else None for a in raw_axes)
        for n, entry in zip(names, raw_axes, strict=True):
            if isinstance(entry, Mapping) and isinstance(entry.get("unit"), str):
                units[n] = entry["unit"]
    elif raw_axes is not None:
        raise ValueError(f"{bad}: 'axes' must be a list")

    top_scale = _vector(ms.get("coordinateTransformations"), "scale", ndim)
    top_shift = _vector(ms.get("coordinateTransformations"), "translation", ndim)
    scales, shifts = [], []
    for d in datasets:
        transforms = d.get("coordinateTransformations")
        scale = _vector(transforms, "scale", ndim)
        shift = _vector(transforms, "translation", ndim)
        if top_scale is not None:  # the multiscale's transform applies after the dataset's
            scale = tuple(a * b for a, b in zip(scale or (1.0,) * ndim, top_scale, strict=True))
            if shift is not None:
                shift = tuple(a * b for a, b in zip(shift, top_scale, strict=True))
        if top_shift is not None:
            shift = tuple(a + b for a, b in zip(shift or (0.0,) * ndim, top_shift, strict=True))
        scales.append(scale)
        shifts.append(shift)
    if version is None and isinstance(ms.get("version"), str):
        version = ms["version"]
    return Multiscale(tuple(paths), names, units, types, tuple(scales), tuple(shifts), version)


def _omero(attrs: Mapping[str, Any]) -> Any:
    """The ``omero`` block: under ``ome`` (NGFF 0.5), else at the top (0.4 and before)."""
    ome = attrs.get("ome")
    omero = ome.get("omero") if isinstance(ome, Mapping) else None
    return attrs.get("omero") if omero is None else omero


def omero_model(attrs: Mapping[str, Any]) -> str | None:
    """The ``omero`` rendering model (``rdefs.model``: "color", "greyscale"), if stated."""
    omero = _omero(attrs)
    rdefs = omero.get("rdefs") if isinstance(omero, Mapping) else None
    model = rdefs.get("model") if isinstance(rdefs, Mapping) else None
    return model if isinstance(model, str) else None


_WINDOW = ("min", "max", "start", "end")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_omero(attrs: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The ``omero`` channel list (label, color, window) of a group's attributes, if any.

    Only what the output can carry on: a colour of 6 hex digits, window values that are finite
    numbers; anything else is left out, and the output's defaults take its place (a colour
    "NOT-A-COLOUR" and windows "NaN" or "high" were copied into outputs, which viewers then
    refused: an adversarial run, 2026-12-05)."""
    omero = _omero(attrs)
    channels = omero.get("channels") if isinstance(omero, Mapping) else None
    if not isinstance(channels, list):
        return None
    out = []
    for ch in channels:
        if not isinstance(ch, Mapping):
            return None
        entry: dict[str, Any] = {}
        if isinstance(ch.get("label"), str):
            entry["label"] = ch["label"]
        if isinstance(ch.get("color"), str):  # RRGGBB, as omero writes it ("#FF0000" too)
            color = ch["color"].strip().lstrip("#").upper()
            if re.fullmatch(r"[0-9A-F]{6}", color):
                entry["color"] = color
        if isinstance(ch.get("window"), Mapping):
            window = {k: v for k, v in ch["window"].items() if k in _WINDOW and _finite(v)}
            if window:
                entry["window"] = window
        out.append(entry)
    return out


# ------------------------------------------------------------------------------ writing


def axes_entries(letters: str, units: Mapping[str, str]) -> list[dict[str, str]]:
    """NGFF ``axes`` for our axis letters, with units where known (never for channels)."""
    out = []
    for letter in letters:
        entry = {"name": letter}
        kind = axis_type(letter)
        if kind is not None:
            entry["type"] = kind
        if letter in units and kind != "channel":
            entry["unit"] = str(units[letter])
        out.append(entry)
    return out


def positive_scale(values: Mapping[str, Any], letters: str, name: str) -> list[float]:
    """Scale vector for ``letters`` (1.0 where unknown); refuses zero, negative, non-finite."""
    out = []
    for letter in letters:
        value = values.get(letter, 1.0)
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


def multiscale_entry(
    *,
    name: str,
    letters: str,
    units: Mapping[str, str],
    scales: Sequence[Sequence[float]],
    translations: Sequence[Sequence[float]] | None,
    paths: Sequence[str],
) -> dict[str, Any]:
    """One NGFF 0.5 multiscale: one dataset per level, scale (and translation) per level."""
    datasets = []
    for i, path in enumerate(paths):
        transforms: list[dict[str, Any]] = [
            {"type": "scale", "scale": [float(v) for v in scales[i]]}
        ]
        if translations is not None and any(v != 0 for v in translations[i]):
            transforms.append(
                {"type": "translation", "translation": [float(v) for v in translations[i]]}
            )
        datasets.append({"path": path, "coordinateTransformations": transforms})
    return {"name": name, "axes": axes_entries(letters, units), "datasets": datasets}


def omero_entry(channels: Sequence[Mapping[str, Any]], *, rgb: bool = False) -> dict[str, Any]:
    """An ``omero`` block: one entry per channel with label, colour, window and active."""
    out = []
    for ch in channels:
        entry = {"active": True, "coefficient": 1.0, "family": "linear", "inverted": False}
        entry.update({k: v for k, v in ch.items() if k in ("label", "color", "window")})
        out.append(entry)
    block: dict[str, Any] = {"channels": out}
    if rgb:
        block["rdefs"] = {"model": "color"}
    return block
