"""Zeiss CZI files (Axioscan, Celldiscoverer, LSM, Apotome: mosaics with Z, C and T), read
region by region through ZEISS's own pylibCZIrw.

pylibCZIrw (libCZI, LGPL) composes a region of a mosaic from the tiles (subblocks) it
overlaps as ZEN does (a tile with a higher M index drawn over a lower one where they
overlap; pixels no tile covers are 0), one plane (Z, C, T) at a time. A read unit is a
512 x 512 px region of one scene with every plane, so a block reads only the tiles its
region overlaps, never a whole plane: memory is bounded by the blocks in flight and the
cache of decoded tiles (libCZI's own subblock cache, which keeps a tile shared by neighbouring
regions from being decoded again: two rows of tiles across the scene, of every plane, between
64 and :data:`TILE_CACHE_MAX` = 512 MiB per process), even
on a mosaic wider than memory. ``benchmarks/vendor.py`` measures it against bioio-czi and
against Zarr with the same codec family.

A file with several scenes (the wells or tissue sections of a slide) fuses one of them,
named after the file (``slide.czi/1``; ``--scene 1``). Pixel sizes and the z step come
from ``Scaling`` (metres in the file), channel names and colours from the image's channels
and the display settings; colour pixel types (``Bgr24``, ``Bgr48``) are fused as RGB.
"""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np

from .._params import parse_axes
from .common import import_optional
from .stack_meta import OpenedStack
from .vendor import RegionArray, Scene, choose_scene

__all__ = ["TILE_CACHE_MAX", "UNIT", "open_czi"]

UNIT = 512  # px along y and x of a read unit: blocks align to it
# libCZI's cache of decoded tiles, per process: beyond it tiles are decoded again (only speed
# suffers, never results). A tile is read by the units of two or three rows of units, so the
# cache is sized for two rows of tiles across the scene, of every plane a unit holds, within
# these bounds. On a 7464^2 x 8 uint16 mosaic of 1024^2 Zstd tiles (benchmarks/vendor.py),
# a fuse took 18.7-19.1 CPU-s with 64-256 MiB and 24-26 with 0 or 32 MiB; reading the units
# in rows across the whole width took 1.7x the CPU time of Zarr with 128 MiB, 0.9x with 256.
TILE_CACHE_MIN = 64 * 2**20
TILE_CACHE_MAX = 512 * 2**20

_GREY = {"Gray8": np.uint8, "Gray16": np.uint16, "Gray32Float": np.float32}
_COLOUR = {"Bgr24": np.uint8, "Bgr48": np.uint16, "Bgr96Float": np.float32}
_WIDEST = ("Gray8", "Gray16", "Gray32Float")
# CZI dimensions besides Z, C, T (rotation, illumination, phase, view, block): refused
# when used, since OME-NGFF has room for one axis besides t, c and space.
_OTHER_DIMS = "RIHVB"


def _pyczi() -> Any:
    return import_optional(
        "pylibCZIrw.czi", extra="czi", what="reading CZI files", package="pylibCZIrw"
    )


def open_czi(path: str, *, scene: str | None = None, axes: str | None = None) -> OpenedStack:
    """Open one scene of a CZI file lazily.

    Parameters
    ----------
    path : str
        The CZI file.
    scene : str, optional
        The scene's index or name; needed when the file has several.
    axes : str, optional
        Our letters for the dimensions, overriding the file's (``[t][c]zyx``, RGB ``zyxc``).

    Returns
    -------
    OpenedStack
        ``kind`` ``"czi"``; the array reads 512 x 512 regions of every plane on demand and
        pickles by path.

    Raises
    ------
    ValueError
        If the file is not a readable CZI, the scene is missing or ambiguous (the message
        lists the scenes), or the file uses dimensions or pixel types we cannot fuse.
    MissingExtraError
        If pylibCZIrw is not installed (``pip install "fstack_dask[czi]"``).
    """
    pyczi = _pyczi()
    where = f"CZI {path!r}"
    try:
        reader = pyczi.CziReader(path)
    except Exception as exc:  # libCZI raises RuntimeError for what is not a CZI
        text = " ".join(str(exc).split())
        raise ValueError(f"{where} is not a readable CZI file ({text})") from exc
    try:
        box = reader.total_bounding_box_no_pyramid
        xml = reader.raw_metadata
        pixel_types = dict(reader.pixel_types)
        rects = _scene_rects(reader)
        tile = _tile_size(reader)
    finally:
        reader.close()
    meta = _metadata(xml)
    if rects:
        names = meta["scenes"]
        scenes = [Scene(i, names.get(i, ""), f"{r.w} x {r.h} px") for i, r in sorted(rects.items())]
        chosen = choose_scene(scenes, scene, path=path, where=where, word="scene")
        index, rect = chosen.index, rects[chosen.index]
        where += f" (scene {index}{' ' + repr(chosen.name) if chosen.name else ''})"
    else:  # a file without scenes: the whole bounding box
        if scene is not None and scene != "0":
            raise ValueError(f"{where} has no scenes; it has no scene {scene!r}")
        index = None
        x0, x1 = box["X"]
        y0, y1 = box["Y"]
        rect = (x0, y0, x1 - x0, y1 - y0)
    x, y, w, h = (int(v) for v in rect)
    for dim in _OTHER_DIMS:
        if box.get(dim, (0, 1))[1] - box.get(dim, (0, 1))[0] > 1:
            raise ValueError(
                f"{where} has {box[dim][1] - box[dim][0]} indices along its {dim!r} dimension, "
                "which fstack_dask cannot fuse (only Z, C, T and scenes)"
            )
    sizes = {d: box.get(d, (0, 1))[1] - box.get(d, (0, 1))[0] for d in "TCZ"}
    pixel_type, rgb = _pixel_type(pixel_types, sizes["C"], where)
    dims = [d for d in "TC" if sizes[d] > 1 and not (d == "C" and rgb)] + ["Z"]
    letters = "".join(d.lower() for d in dims) + "yx" + ("c" if rgb else "")
    shape = tuple(sizes[d] for d in dims) + (h, w) + ((3,) if rgb else ())
    if axes is not None:
        letters = parse_axes(axes, len(shape))
    chunks = tuple(1 for _ in dims[:-1]) + (sizes["Z"], UNIT, UNIT) + ((3,) if rgb else ())
    dtype = np.dtype((_COLOUR if rgb else _GREY)[pixel_type])
    tile_bytes = tile[0] * tile[1] * dtype.itemsize * (3 if rgb else 1)
    across = -(-w // max(1, tile[1])) + 1
    cache = min(TILE_CACHE_MAX, max(TILE_CACHE_MIN, 2 * across * tile_bytes * sizes["Z"]))
    array = _CziArray(path, index, (x, y), dims, shape, pixel_type, rgb, dtype, chunks, cache)
    scale = {a: v for a, v in meta["scale"].items() if a in letters}
    translation = _translation(scale, x, y)
    names = colors = None
    if "c" in letters and not rgb and len(meta["names"]) == sizes["C"]:
        names = tuple(meta["names"])
        colors = tuple(meta["colors"]) if all(meta["colors"]) else None
    return OpenedStack(
        array=array, axes=letters, kind="czi", scale=scale,
        units={a: "micrometer" for a in scale}, translation=translation,
        channel_names=names, channel_colors=colors, rgb=rgb, files=(path,), description=where,
        separate_channels="c" in letters and not rgb,  # the format stores colour apart
    )  # fmt: skip


def _translation(scale: dict[str, float], x: int, y: int) -> dict[str, float]:
    """The scene's top-left pixel in the file's subblock coordinates (libCZI's "raw" system:
    x to the right, y down, as the image's own axes; the origin is the file's, which ZEN
    places by the stage), times the pixel size: micrometres, as the scale. Two scenes of a
    slide fused apart lay where they lay in the file (their offsets were dropped).
    Without a pixel size, none (a position in pixels beside a scale of 1 without unit)."""
    if "x" not in scale or "y" not in scale:
        return {}
    shift = {"y": round(y * scale["y"], 9), "x": round(x * scale["x"], 9)}
    return {a: v for a, v in shift.items() if v}


def _scene_rects(reader: Any) -> dict[int, Any]:
    """Each scene's layer-0 bounding rectangle (empty for a file without scenes)."""
    try:
        return dict(reader.scenes_bounding_rectangle_no_pyramid)
    except ValueError:  # scene count and bounding boxes disagree: no usable scenes
        return {}


def _tile_size(reader: Any) -> tuple[int, int]:
    """The largest height and width of (up to 256 of) the first plane's layer-0 tiles."""
    found: list[tuple[int, int]] = []

    def take(_index: int, info: Any) -> bool:
        found.append((int(info.logicalRect.h), int(info.logicalRect.w)))
        return len(found) < 256

    try:
        reader.enumerate_subblocks_subset(take, plane={"Z": 0, "C": 0, "T": 0}, only_layer0=True)
    except Exception:  # an older pylibCZIrw, or a file it cannot enumerate: one unit
        return UNIT, UNIT
    if not found:
        return UNIT, UNIT
    return max(h for h, _ in found), max(w for _, w in found)


def _pixel_type(types: dict[int, str], n_channels: int, where: str) -> tuple[str, bool]:
    """One pixel type for every channel (the widest grey one when they differ), and RGB."""
    found = set(types.values()) or {"Gray8"}
    colour = found & set(_COLOUR)
    if colour:
        if len(found) > 1 or n_channels > 1:
            raise ValueError(
                f"{where} has colour pixels ({', '.join(sorted(found))}) in {n_channels} "
                "channels; fstack_dask fuses colour images of one channel"
            )
        return colour.pop(), True
    unknown = found - set(_GREY)
    if unknown:
        raise ValueError(f"{where} has pixel type {sorted(unknown)[0]!r}, which cannot be fused")
    return max(found, key=_WIDEST.index), False


def _metadata(xml: str) -> dict[str, Any]:
    """Pixel sizes (um), channel names and colours, and scene names from the CZI's XML."""
    out: dict[str, Any] = {"scale": {}, "names": [], "colors": [], "scenes": {}}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return out
    for distance in root.iterfind(".//Scaling/Items/Distance"):
        letter = {"X": "x", "Y": "y", "Z": "z"}.get(distance.get("Id", ""))
        try:
            metres = float(distance.findtext("Value", ""))
        except ValueError:
            continue
        if letter and math.isfinite(metres) and metres > 0:
            out["scale"][letter] = metres * 1e6  # CZI stores metres
    image = root.find(".//Information/Image")
    channels = [] if image is None else image.findall("Dimensions/Channels/Channel")
    shown = {c.get("Id"): c for c in root.iterfind(".//DisplaySetting/Channels/Channel")}
    for k, ch in enumerate(channels):
        display = shown.get(ch.get("Id")) if ch.get("Id") in shown else None
        name = ch.get("Name") or (display.get("Name") if display is not None else None)
        out["names"].append(name or f"C{k}")
        colour = ch.findtext("Color") or (
            display.findtext("Color") if display is not None else None
        )
        out["colors"].append(_colour(colour))
    for s in root.iterfind(".//Information/Image/Dimensions/S/Scenes/Scene"):
        try:
            out["scenes"][int(s.get("Index", ""))] = s.get("Name", "")
        except ValueError:
            continue
    return out


def _colour(text: str | None) -> str | None:
    """ZEN's ``#AARRGGBB`` (or ``#RRGGBB``) as ``RRGGBB``."""
    if not text:
        return None
    digits = text.strip().lstrip("#")
    if len(digits) not in (6, 8) or any(c not in "0123456789abcdefABCDEF" for c in digits):
        return None
    return digits[-6:].upper()


class _CziArray(RegionArray):
    """Regions of one scene, every plane read with pylibCZIrw's ``read(roi=..., plane=...)``."""

    def __init__(
        self,
        path: str,
        scene: int | None,
        origin: tuple[int, int],
        dims: list[str],
        shape: tuple[int, ...],
        pixel_type: str,
        rgb: bool,
        dtype: np.dtype,
        chunks: tuple[int, ...],
        cache_bytes: int = TILE_CACHE_MIN,
    ):
        super().__init__()
        self.path, self.scene, self.origin, self.dims = path, scene, origin, list(dims)
        self.cache_bytes = int(cache_bytes)
        self.shape, self.pixel_type, self.rgb = tuple(shape), pixel_type, rgb
        self.dtype, self.chunks = (
            dtype,
            tuple(min(c, n) for c, n in zip(chunks, shape, strict=True)),
        )

    def recipe(self) -> tuple[Any, ...]:
        return (self.scene, self.origin, self.pixel_type)

    def _open(self) -> Any:
        pyczi = _pyczi()
        cache = pyczi.CacheOptions(max_memory_usage=self.cache_bytes)
        return pyczi.CziReader(self.path, cache_options=cache)

    def _read(self, reader: Any, region: tuple[slice, ...]) -> np.ndarray:
        n = len(self.dims)
        ry, rx = region[n], region[n + 1]
        out = np.zeros(tuple(s.stop - s.start for s in region), self.dtype)
        if out.size == 0:
            return out
        roi = (self.origin[0] + rx.start, self.origin[1] + ry.start,
               rx.stop - rx.start, ry.stop - ry.start)  # fmt: skip
        for index in itertools.product(*(range(s.start, s.stop) for s in region[:n])):
            plane = dict(zip(self.dims, index, strict=True))
            data = reader.read(roi=roi, plane=plane, scene=self.scene, pixel_type=self.pixel_type)
            at = tuple(i - s.start for i, s in zip(index, region[:n], strict=True))
            if self.rgb:  # BGR in memory order: ours is R, G, B
                out[at] = data[:, :, ::-1][..., region[-1]]
            else:
                out[at] = data[:, :, 0]
        return out
