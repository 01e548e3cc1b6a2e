"""Leica LIF files (LAS X: confocal and widefield z-stacks), read through liffile.

liffile (Christoph Gohlke, BSD-3-Clause, the author of tifffile) memory-maps an image's
pixels straight from the file (``asarray(out="memmap")``: LIF stores them uncompressed and
contiguous), so a block copies only the rows and columns of its region from the page cache,
never a whole plane: memory is bounded by the blocks in flight. Colour images that LAS X
stores as BGR are the exception: liffile turns them into RGB in place, so they are read
whole into private memory (a copy-on-write map) once per process.

An image of a file that holds several is named after the file, by its index, name or path
(``cells.lif/2``, ``cells.lif/Series003``; ``--scene``), or unnamed, the only one holding a
z-stack (the lambda scans and single planes beside it left out). Dimensions: T, Z, C, Y, X; RGB
samples, or a spectral (lambda) scan where the image has no channels, are the channel axis;
mosaic tiles (M) a batch axis, fused tile by tile. Pixel sizes, the z step and the time step
come from the image's coordinates (its first positions the translation), channel colours from
their lookup tables.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._params import parse_axes
from .common import import_optional, positive_finite
from .stack_meta import OpenedStack
from .vendor import RegionArray, Scene, choose_scene

__all__ = ["open_lif"]

UNIT = 512  # px along y and x of a read unit
_LETTERS = {"T": "t", "Z": "z", "C": "c", "Y": "y", "X": "x", "M": "m"}
_SPECTRAL = ("\u03bb", "\u039b")  # lambda emission, lambda excitation
_LUT_COLOURS = {"red": "FF0000", "green": "00FF00", "blue": "0000FF", "gray": "FFFFFF",
                "grey": "FFFFFF", "cyan": "00FFFF", "magenta": "FF00FF",
                "yellow": "FFFF00"}  # fmt: skip


def _liffile() -> Any:
    return import_optional("liffile", extra="lif", what="reading LIF files")


def open_lif(path: str, *, scene: str | None = None, axes: str | None = None) -> OpenedStack:
    """Open one image of a LIF file lazily.

    Parameters
    ----------
    path : str
        The LIF file.
    scene : str, optional
        The image's index, name or path in the file; needed when it holds several.
    axes : str, optional
        Our letters for its dimensions, overriding the mapping above.

    Returns
    -------
    OpenedStack
        ``kind`` ``"lif"``; the array reads regions from a memory map of the file.

    Raises
    ------
    ValueError
        If the file is not a readable LIF, the image is missing or ambiguous (the message
        lists them), or its dimensions cannot be mapped onto a focus stack.
    MissingExtraError
        If liffile is not installed (``pip install "fstack_dask[lif]"``).
    """
    liffile = _liffile()
    where = f"LIF {path!r}"
    try:
        lif = liffile.LifFile(path)
    except Exception as exc:
        text = " ".join(str(exc).split())
        raise ValueError(f"{where} is not a readable LIF file ({text})") from exc
    with lif:
        images = list(lif.images)
        scenes = [
            Scene(k, im.path or im.name, " x ".join(f"{n}{d}" for d, n in im.sizes.items()))
            for k, im in enumerate(images)
        ]
        if not scenes:
            raise ValueError(f"{where} holds no images")
        chosen, notes = _choose(scenes, images, scene, path, where)
        image = images[chosen.index]
        where += f" (image {chosen.index} {image.path or image.name!r})"
        dims, sizes, dtype = tuple(image.dims), dict(image.sizes), np.dtype(image.dtype)
        coords = {d: np.asarray(v) for d, v in image.coords.items()}
        luts = [c.get("LUTName", "") for c in image.xml_element.iter("ChannelDescription")]
    letters, rgb = _map_dims(dims, where)
    shape = tuple(sizes[d] for d in dims)
    if axes is not None:
        letters = parse_axes(axes, len(shape))
    elif "z" not in letters:
        raise ValueError(
            f"{where} has dimensions {''.join(dims)!r} without a focus axis Z; name the image "
            "that holds the z-stack, or pass axes= with one letter per dimension"
        )
    chunks = tuple(
        {"y": UNIT, "x": UNIT}.get(a, n if a == "z" or (a == "c" and rgb) else 1)
        for a, n in zip(letters, shape, strict=True)
    )
    array = _LifArray(path, chosen.index, shape, dtype, chunks)
    scale, units, translation, told = _scale(dims, letters, coords)
    names = colors = None
    if "c" in letters and not rgb:
        channel_dim = dims[letters.index("c")]
        if channel_dim in _SPECTRAL:
            names = tuple(f"{v * 1e9:g} nm" for v in coords[channel_dim])
        elif len(luts) == sizes[channel_dim]:
            found = [_LUT_COLOURS.get(lut.strip().lower()) for lut in luts]
            colors = tuple(found) if all(found) else None  # type: ignore[arg-type]
    return OpenedStack(
        array=array, axes=letters, kind="lif", scale=scale, units=units, translation=translation,
        channel_names=names, channel_colors=colors, rgb=rgb, files=(path,), description=where,
        notes=notes, warnings=tuple(f"{where}: {w}" for w in told),
        separate_channels="c" in letters and not rgb,  # the format stores colour apart
    )  # fmt: skip


def _choose(scenes, images, scene, path, where) -> tuple[Scene, tuple[str, ...]]:
    """The image ``scene`` names; unnamed, the only one holding a z-stack (a lambda scan or
    a single plane beside it was listed among the stacks and the choice refused: an
    adversarial run on metadata), said in the notes; several are listed, stacks only."""
    stacks = [s for s, im in zip(scenes, images, strict=True) if "Z" in im.dims]
    if scene is not None or len(scenes) == 1 or not stacks:
        return choose_scene(scenes, scene, path=path, where=where, word="image"), ()
    chosen = choose_scene(stacks, None, path=path, where=where, word="z-stack")
    return chosen, (f"image {chosen!r} of {len(scenes)}, the only one holding a z-stack",)


def _map_dims(dims: tuple[str, ...], where: str) -> tuple[str, bool]:
    """Our letters for liffile's dimensions, and whether the channel axis is RGB samples."""
    letters: list[str] = []
    rgb = False
    for d in dims:
        if d in _LETTERS:
            letters.append(_LETTERS[d])
        elif d == "S" and "C" not in dims:
            letters.append("c")
            rgb = True
        elif d in _SPECTRAL and "C" not in dims and "S" not in dims:
            letters.append("c")  # a spectral scan: each wavelength a channel
        else:
            raise ValueError(
                f"{where} has dimensions {''.join(dims)!r}, and its {d!r} dimension cannot be "
                "fused (beside T, Z, C, Y, X, samples, one spectral scan and mosaic tiles)"
            )
    if len(set(letters)) != len(letters):
        raise ValueError(f"{where} has dimensions {''.join(dims)!r}, which repeat an axis")
    return "".join(letters), rgb


def _scale(dims, letters, coords) -> tuple[dict, dict, dict, list[str]]:
    """Steps of the evenly spaced coordinates, metres as micrometres, seconds as seconds, and
    where they increase, the first z, y, x position as the translation (a z-stack from -2.5 um
    had its depth map from 0: the positions were dropped, an adversarial run on metadata);
    where they decrease, a warning (it was left out without a word)."""
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    translation: dict[str, float] = {}
    told: list[str] = []
    for d, a in zip(dims, letters, strict=True):
        values = coords.get(d)
        if a not in "zyxt" or values is None or len(values) < 2:
            continue
        step = positive_finite(abs(float(values[1]) - float(values[0])))
        if step is None:
            continue
        if a == "t":
            scale[a], units[a] = step, "second"
            continue
        scale[a], units[a] = step * 1e6, "micrometer"
        first = round(float(values[0]) * 1e6, 9)  # (LAS X writes 1e-20 m for 0)
        if values[1] > values[0] and math.isfinite(first) and first:
            translation[a] = first
        elif values[1] < values[0]:
            told.append(
                f"its {a} coordinates decrease ({first:g}, {float(values[1]) * 1e6:g} "
                f"micrometer, ...): its {a} position is left out"
                + (
                    ", and a depth map holds each plane's distance from the first"
                    if a == "z"
                    else ""
                )
            )
    return scale, units, translation, told


class _LifArray(RegionArray):
    """Regions of one image, copied from liffile's memory map of the file."""

    def __init__(self, path: str, index: int, shape, dtype, chunks):
        super().__init__()
        self.path, self.index = path, int(index)
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.chunks = tuple(min(c, n) for c, n in zip(chunks, self.shape, strict=True))

    def recipe(self) -> tuple[Any, ...]:
        return (self.index,)

    def _open(self) -> Any:
        lif = _liffile().LifFile(self.path)
        image = lif.images[self.index]
        try:
            data = image.asarray(out="memmap")  # read-only, straight from the file
        except ValueError:  # BGR turned into RGB in place: a private copy of the pages
            data = image.asarray(mode="c", out="memmap")
        return lif, data

    def _close(self, reader: Any) -> None:
        reader[0].close()

    def _read(self, reader: Any, region: tuple[slice, ...]) -> np.ndarray:
        return np.array(reader[1][region], dtype=self.dtype)
