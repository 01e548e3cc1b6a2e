"""A TIFF's physical metadata, keyed by tifffile's axes: pixel sizes and their units from the
OME-XML, the ImageJ description or the resolution tags, the stage position, the channels'
names and colours, and a sub-resolution level's pixel sizes.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np

from .._ngff import OME_LENGTHS
from .common import ngff_unit, positive_finite

__all__: list[str] = []

_RESUNIT_MICROMETER = {3: 1e4, 4: 1e3, 5: 1.0}  # cm, mm, um per unit of the tag
_IMAGEJ_NO_UNIT = {"", "pixel", "pixels", "inch", "inches"}


def _metadata(tif: Any, ser: Any, kind: str) -> tuple[dict, dict, dict, Any, Any, Any]:
    """(scale, units, translation, channel names, channel colours, warnings), keyed by
    tifffile axes."""
    if kind == "ome-tiff":
        out = _ome_metadata(tif.ome_metadata, tif.series.index(ser))
        if out is not None:
            return out
    if kind == "imagej-tiff":
        return _imagej_metadata(tif.imagej_metadata or {}, ser.keyframe)
    scale, units = _resolution_metadata(ser.keyframe)
    # The tags describe the page's columns (X) and rows (Y); a series whose metadata names
    # them otherwise ("ZXY": its x the page's rows) had them swapped (an adversarial run)
    page, n = ser.keyframe, len(ser.keyframe.axes)
    if tuple(ser.shape[-n:]) == tuple(page.shape) and ser.axes[-n:] != page.axes:
        rename = dict(zip(page.axes, ser.axes[-n:], strict=True))
        scale = {rename[a]: v for a, v in scale.items()}
        units = {rename[a]: v for a, v in units.items()}
    return scale, units, {}, None, None, ()


def _resolution_metadata(page: Any) -> tuple[dict, dict]:
    # Inch resolutions are nearly always a nominal print density (72, 300 dpi) written
    # by photo software, not a pixel size, so only metric units are trusted.
    per_unit = _RESUNIT_MICROMETER.get(int(page.resolutionunit))
    scale: dict[str, float] = {}
    if per_unit is not None:
        for a, res in zip("XY", page.resolution, strict=True):
            res = positive_finite(res)
            if res is not None:
                scale[a] = per_unit / res
    return scale, {a: "micrometer" for a in scale}


def _imagej_metadata(meta: dict, page: Any) -> tuple[dict, dict, dict, Any, Any, Any]:
    """As ImageJ's Calibration reads its description: ``unit`` for x, ``yunit`` and ``zunit``
    where they differ from it (a z step in nm beside pixels in um was written as um), a pixel
    of 1 unit where the resolution is 1 (its unit was dropped), and the origin in pixels
    (``xorigin``: x = (i - xorigin) * pixel width) as the translation."""
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    translation: dict[str, float] = {}
    unit = _imagej_unit(meta.get("unit"))
    axis_units = {"X": unit, "Y": _imagej_unit(meta.get("yunit")) or unit}
    axis_units["Z"] = _imagej_unit(meta.get("zunit")) or unit
    steps = dict(zip("XY", (1.0 / r if r else None for r in page.resolution), strict=True))
    steps["Z"] = meta.get("spacing")
    for a, raw in axis_units.items():
        step = positive_finite(steps[a])
        if raw is None or raw.lower() in _IMAGEJ_NO_UNIT or step is None:
            continue
        scale[a] = step
        if ngff_unit(raw) is not None:
            units[a] = ngff_unit(raw)
            origin = meta.get(f"{a.lower()}origin")
            if isinstance(origin, (int, float)) and math.isfinite(origin) and origin:
                translation[a] = -float(origin) * step
    finterval = positive_finite(meta.get("finterval"))
    if finterval is not None:
        scale["T"] = finterval
        units["T"] = ngff_unit(_imagej_unit(meta.get("tunit", "second"))) or "second"
    colors = None
    luts = meta.get("LUTs")
    if isinstance(luts, list) and luts:
        try:  # a channel's colour is its LUT's brightest entry
            colors = tuple("{:02X}{:02X}{:02X}".format(*np.asarray(lut)[:, -1]) for lut in luts)
        except (TypeError, ValueError, IndexError):
            colors = None
    return scale, units, translation, None, colors, _imagej_warnings(meta, translation)


def _imagej_warnings(meta: dict, translation: dict[str, float]) -> tuple[str, ...]:
    """What ImageJ's description says that the output cannot carry, said (both were left out
    without a word): ``inverty`` (ImageJ's y runs up from the
    origin, or from the bottom row; an output's y runs down from the top row, so its y
    position is left out) and a pixel size in inches (a print resolution, 72 or 300 dpi, far
    more often than a calibration: left out)."""
    told = []
    if meta.get("inverty") is True:
        # the y position said left out only where there is one (a plane folder's planes have
        # none, nor has an image without yorigin: it was said of them)
        had_y = translation.pop("Y", None) is not None
        told.append(
            "its y axis is inverted (ImageJ's inverty=true: y runs up); the output's y runs down "
            "from the top row" + (", and its y position is left out" if had_y else "")
        )
    if str(_imagej_unit(meta.get("unit")) or "").lower() in ("inch", "inches"):
        told.append(
            "it states its pixel size in inches, which is left out: ImageJ writes that for an "
            "image whose resolution is a print density (dpi), not a calibration"
        )
    return tuple(told)


def _imagej_unit(value: Any) -> str | None:
    """A unit of ImageJ's description, its escaped micro sign (``\\u00B5m``) read."""
    if value is None:
        return None
    text = str(value).strip()
    if text[:6].lower() == "\\u00b5":
        text = "\u00b5" + text[6:]
    return text


def _ome_metadata(xml: str | None, index: int) -> tuple[dict, dict, dict, Any, Any, Any] | None:
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    images = [e for e in root if e.tag.endswith("}Image") or e.tag == "Image"]
    if index >= len(images):
        return None
    pixels = next((e for e in images[index] if e.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    for a in "XYZ":
        size = positive_finite(pixels.get(f"PhysicalSize{a}"))
        if size is not None:
            scale[a] = size
            unit = ngff_unit(pixels.get(f"PhysicalSize{a}Unit", "\u00b5m"))  # OME's default
            if unit is not None:
                units[a] = unit
    warnings = _square_pixels(scale, units)
    step = positive_finite(pixels.get("TimeIncrement"))
    if step is not None:
        scale["T"] = step
        unit = ngff_unit(pixels.get("TimeIncrementUnit", "s"))
        if unit is not None:
            units["T"] = unit
    planes = {
        tuple(e.get(f"The{a}", "0") for a in "ZCT"): e for e in pixels if e.tag.endswith("Plane")
    }
    first = planes.get(("0", "0", "0"), next(iter(planes.values()), None))
    translation = {a: v for a in "XYZ" if (v := _position(first, a, units)) is not None}
    second = _position(planes.get(("1", "0", "0")), "Z", units)
    if "Z" in translation and second is not None and second < translation["Z"]:
        # a positive step from the first plane's position made the depth map's positions
        # run the wrong way (10, 12, 14 um for planes at 10, 8, 6: an adversarial run)
        warnings.append(
            f"its planes' z positions decrease ({translation.pop('Z'):g}, {second:g} "
            f"{units['Z']}, ...): a depth map holds each plane's distance from the first, "
            "not its position"
        )
    channels = [e for e in pixels if e.tag.endswith("Channel")]
    names = tuple(c.get("Name", "") for c in channels)
    names = names if channels and all(names) else None
    colors = tuple(_ome_color(c.get("Color")) for c in channels)
    colors = colors if channels and all(colors) else None
    return scale, units, translation, names, colors, tuple(warnings)


def _square_pixels(scale: dict[str, float], units: dict[str, str]) -> list[str]:
    """A PhysicalSizeX without a PhysicalSizeY (or Y without X) given to both, with a warning:
    the other was written as 1.0 without a unit, a pixel 0.5 um wide and 1 high in a viewer
    Square pixels, as a writer that names one size means."""
    stated = [a for a in "XY" if a in scale]
    if len(stated) != 1:
        return []
    have, lack = stated[0], "Y" if stated[0] == "X" else "X"
    scale[lack] = scale[have]
    if have in units:
        units[lack] = units[have]
    return [
        f"it states PhysicalSize{have} ({scale[have]:g} {units.get(have, '')}) but no "
        f"PhysicalSize{lack}: pixels are taken as square, {lack.lower()} given the same size"
    ]


def _position(plane: Any, a: str, units: dict[str, str]) -> float | None:
    """A Plane's Position{a} in the pixel size's unit, where it is a length (a position in
    mm beside pixels in um was dropped: an adversarial run): OME's default position unit is
    the stage's "reference frame", no usable translation."""
    if plane is None or units.get(a) not in OME_LENGTHS:
        return None
    unit = ngff_unit(plane.get(f"Position{a}Unit"))
    if unit not in OME_LENGTHS:
        return None
    try:
        value = float(plane.get(f"Position{a}"))
    except (TypeError, ValueError):
        return None
    if unit != units[a]:  # to 12 digits: 0.1 mm is 100 um, not 100.00000000000001
        value = float(f"{value * OME_LENGTHS[unit][1] / OME_LENGTHS[units[a]][1]:.12g}")
    return value if math.isfinite(value) else None


def _ome_color(value: str | None) -> str | None:
    """OME's signed 32-bit RGBA integer as "RRGGBB"."""
    try:
        rgba = int(value) & 0xFFFFFFFF  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f"{rgba >> 8 & 0xFFFFFF:06X}"


def _level_scale(scale: dict[str, float], ser: Any, level: int, native: str) -> None:
    """Scale a sub-resolution level's pixel sizes by its downsampling factor."""
    if level == 0:
        return
    full, this = ser.levels[0].shape, ser.levels[level].shape
    for a in list(scale):
        if a in native and this[native.index(a)]:
            scale[a] *= _factor(full[native.index(a)], this[native.index(a)])


def _factor(full: int, reduced: int) -> float:
    """How many full-resolution pixels one pixel of a reduced level spans: the whole factor
    whose rounding up or down gives the level's size (97 px halved to 49 is 2, where the
    sizes' ratio, 1.98, made its pixels 1 % smaller, and y unlike x), else the ratio."""
    whole = max(1, round(full / reduced))
    if reduced in (-(-full // whole), full // whole):
        return float(whole)
    return full / reduced
