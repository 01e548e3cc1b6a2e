"""Nikon ND2 files (NIS-Elements: z-stacks with T, positions and channels), read through nd2.

nd2 (Talley Lambert, BSD-3-Clause) reads a frame, one index of the T, position and Z loops
with every channel, as a NumPy view of a memory map of the file when the file is
uncompressed (NIS-Elements' default), so a block copies only the rows and columns of its
region, never a whole plane: read units are 512 x 512 px of every plane. Frames compressed
losslessly (zlib) or as JPEG 2000 (legacy files) can only be decoded whole: a read unit is
then the whole frame of every plane, and memory holds the frames of every plane of the image
being read (a camera frame times the planes).

Positions (the P loop) are the scenes: one is named after the file (``cells.nd2/2``,
``--scene 2``). Pixel sizes and the z step come from ``voxel_size()`` (micrometres), the
x and y translation from the position's stage position (``frame_metadata``), channel names
and colours from the channels' metadata; RGB files are fused as colour.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .._params import parse_axes
from .common import import_optional, positive_finite
from .stack_meta import OpenedStack
from .vendor import RegionArray, Scene, choose_scene

__all__ = ["open_nd2"]

UNIT = 512  # px along y and x of a read unit of an uncompressed file
_FRAME = ("C", "Y", "X", "S")  # what one read_frame returns; the other dims are loops
_LETTERS = {"T": "t", "Z": "z", "C": "c", "Y": "y", "X": "x", "S": "c"}


def _nd2() -> Any:
    return import_optional("nd2", extra="nd2", what="reading ND2 files")


def open_nd2(path: str, *, scene: str | None = None, axes: str | None = None) -> OpenedStack:
    """Open one position of an ND2 file lazily.

    Parameters
    ----------
    path : str
        The ND2 file.
    scene : str, optional
        The position's index or name; needed when the file has several.
    axes : str, optional
        Our letters for its dimensions, overriding ``[t]z[c]yx`` (RGB ``[t]zyxc``).

    Returns
    -------
    OpenedStack
        ``kind`` ``"nd2"``; the array reads regions of frames on demand.

    Raises
    ------
    ValueError
        If the file is not a readable ND2, the position is missing or ambiguous (the
        message lists them), or its loops cannot be mapped onto a focus stack.
    MissingExtraError
        If nd2 is not installed (``pip install "fstack_dask[nd2]"``).
    """
    nd2 = _nd2()
    where = f"ND2 {path!r}"
    try:
        f = nd2.ND2File(path)
    except Exception as exc:
        text = " ".join(str(exc).split())
        raise ValueError(f"{where} is not a readable ND2 file ({text})") from exc
    with f:
        sizes = dict(f.sizes)
        dtype = np.dtype(f.dtype)
        rgb = bool(f.is_rgb)
        compressed = bool(f.is_legacy) or (
            getattr(f.attributes, "compressionType", None) not in (None, "none")
        )
        voxel = f.voxel_size()
        channels = list((f.metadata.channels or []) if f.metadata else [])
        names = _position_names(f, sizes.get("P", 1))
        position, where = _choose_position(sizes, names, scene, path, where)
        stage = _stage_position(f, sizes, position)
    if rgb and sizes.get("C", 1) > 1:
        raise ValueError(f"{where} has {sizes['C']} channels of RGB pixels; fstack_dask fuses "
                         "colour images of one channel")  # fmt: skip
    loops = [d for d in sizes if d not in _FRAME]  # in the file's order: seq index
    other = [d for d in loops if d not in ("T", "P", "Z")]
    if other:
        raise ValueError(
            f"{where} has a {other[0]!r} loop, which fstack_dask cannot fuse (T, positions, "
            "Z and channels only)"
        )
    dims = [d for d in loops if d != "P"]
    if "Z" not in dims:
        dims.insert(0, "Z")  # a single plane: a stack of one
        sizes["Z"] = 1
    frame = [d for d in ("C", "Y", "X", "S") if d in sizes and not (d == "C" and rgb)]
    if "C" in frame and sizes["C"] == 1:
        frame.remove("C")
    order = dims + frame
    letters = "".join(_LETTERS[d] for d in order)
    shape = tuple(sizes[d] for d in order)
    if axes is not None:
        letters = parse_axes(axes, len(shape))
    unit = {"Y": sizes["Y"], "X": sizes["X"]} if compressed else {"Y": UNIT, "X": UNIT}
    chunks = tuple(unit.get(d, sizes[d] if d in ("Z", "C", "S") else 1) for d in order)
    array = _Nd2Array(path, position, loops, [sizes[d] for d in loops], order, shape, dtype,
                      chunks, rgb)  # fmt: skip
    scale = {}
    for a, v in (("x", voxel.x), ("y", voxel.y), ("z", voxel.z)):
        v = positive_finite(v)
        if v is not None and a in letters and not (a == "z" and sizes["Z"] == 1):
            scale[a] = v
    translation, told = _translation(stage, scale, sizes, where)
    names_c = colors = None
    if "c" in letters and not rgb and len(channels) == sizes.get("C", 0):
        names_c = tuple(ch.channel.name or f"C{k}" for k, ch in enumerate(channels))
        colors = tuple(_colour(ch.channel.color) for ch in channels)
    return OpenedStack(
        array=array, axes=letters, kind="nd2", scale=scale,
        units={a: "micrometer" for a in scale}, translation=translation,
        channel_names=names_c, channel_colors=colors, rgb=rgb, files=(path,),
        description=where, warnings=told,
        separate_channels="c" in letters and not rgb,  # the format stores colour apart
    )  # fmt: skip


def _choose_position(sizes, names, scene, path, where) -> tuple[int, str]:
    """The position ``scene`` names (0 where the file has no P loop), and ``where`` with it."""
    if "P" in sizes:
        scenes = [Scene(k, names[k], f"position {k}") for k in range(sizes["P"])]
        chosen = choose_scene(scenes, scene, path=path, where=where, word="position")
        named = f" {chosen.name!r}" if chosen.name else ""
        return chosen.index, f"{where} (position {chosen.index}{named})"
    if scene is not None and scene != "0":
        raise ValueError(f"{where} has one position; it has no position {scene!r}")
    return 0, where


def _stage_position(f: Any, sizes: dict[str, int], position: int) -> Any:
    """``frame_metadata``'s first channel of the position's first frame, or None where nd2
    cannot give it (a legacy file, a frame without metadata)."""
    loops = [d for d in sizes if d not in _FRAME]
    coords = [position if d == "P" else 0 for d in loops]
    seq = int(np.ravel_multi_index(coords, [sizes[d] for d in loops])) if coords else 0
    try:
        return f.frame_metadata(seq).channels[0]
    except Exception:  # nd2 raises what its parser meets: no position, not the image
        return None


def _translation(frame, scale, sizes, where) -> tuple[dict[str, float], tuple[str, ...]]:
    """The position of the first pixel in micrometres, in the image's frame (x right, y down),
    from the stage position nd2 gives the frame (``stagePositionUm``, the stage at the
    field's centre: nd2's pixel-to-stage matrix puts it at half the width and height).

    Where nd2 gives ``pixelToStageTransformationMatrix`` (from the file's camera matrix and
    the stage's orientation), a stage axis that runs against the image's is negated, so
    that positions of one microscope lie as their images do; the field's centre is then
    where nd2 puts it, and a small rotation (a translation cannot hold one) turns the
    corners about it (a camera turned 90 degrees swaps the axes: left out with a warning).
    Without it (or with one of zeros: no orientation recorded) the stage's axes are taken
    as the image's, with a warning that says so (stages run either way against the image,
    as stitchers' flip options show), as nd2's own OME-XML reports the position (its Plane
    PositionX/Y, as Bio-Formats' ND2 reader does): the
    camera matrix alone does not give the direction (nd2 multiplies it by the stage's
    orientation, and gives no matrix where the file's device settings lack it)."""
    if frame is None or not {"x", "y"} <= set(scale):
        return {}, ()
    at = frame.position.stagePositionUm
    if not all(np.isfinite([at.x, at.y])) or at.x == at.y == 0:  # nd2's default: none recorded
        return {}, ()
    matrix = getattr(frame.volume, "pixelToStageTransformationMatrix", None)
    signs, told = (1.0, 1.0), ()
    if matrix is None or not _oriented(matrix):  # a guess a viewer lays out as it is: said
        told = (
            f"{where}: its stage position is written as nd2 reports it, the stage's x and y "
            "taken to run as the image's (the file records no stage orientation); check the "
            "directions before laying positions out by it",
        )
    else:
        a, b, _, d, e, _ = (float(v) for v in matrix)
        if not (abs(b) < abs(a) and abs(d) < abs(e)):  # (a rotation below 45 degrees is kept)
            return {}, (
                f"{where}: its camera is turned 90 degrees to the stage (pixel-to-stage matrix "
                f"{list(matrix)}): its x and y position is left out",
            )
        signs = (float(np.sign(a)), float(np.sign(e)))
    return {
        "x": round(signs[0] * at.x - sizes["X"] / 2 * scale["x"], 9),
        "y": round(signs[1] * at.y - sizes["Y"] / 2 * scale["y"], 9),
    }, told


def _oriented(matrix: Any) -> bool:
    """Whether a pixel-to-stage matrix says which way the stage runs: nd2 multiplies by the
    stage's orientation, 0 where the device settings lack it, which makes every term 0 (taken
    for a camera at 90 degrees, the position left out with a false warning)."""
    a, b, _, d, e, _ = (float(v) for v in matrix)
    return bool(np.isfinite([a, b, d, e]).all()) and a * e - b * d != 0


def _position_names(f: Any, n: int) -> list[str]:
    """The XY positions' names from the experiment, or empty names."""
    names = [""] * n
    for loop in f.experiment or []:
        if getattr(loop, "type", "") == "XYPosLoop":
            points = getattr(loop.parameters, "points", []) or []
            for k, p in enumerate(points[:n]):
                names[k] = getattr(p, "name", "") or ""
    return names


def _colour(color: Any) -> str:
    try:
        return f"{int(color.r):02X}{int(color.g):02X}{int(color.b):02X}"
    except (AttributeError, TypeError, ValueError):
        return "FFFFFF"


class _Nd2Array(RegionArray):
    """Regions of one position: each frame (one T and Z index) read with ``read_frame``."""

    def __init__(self, path, position, loops, loop_sizes, order, shape, dtype, chunks, rgb):
        super().__init__()
        self.path, self.position = path, int(position)
        self.loops, self.loop_sizes = list(loops), [int(n) for n in loop_sizes]
        self.order, self.shape, self.dtype = list(order), tuple(shape), np.dtype(dtype)
        self.chunks = tuple(min(c, n) for c, n in zip(chunks, self.shape, strict=True))
        self.rgb = rgb

    def recipe(self) -> tuple[Any, ...]:
        return (self.position,)

    def _open(self) -> Any:
        return _nd2().ND2File(self.path)

    def _read(self, reader: Any, region: tuple[slice, ...]) -> np.ndarray:
        sel = dict(zip(self.order, region, strict=True))
        out = np.empty(tuple(s.stop - s.start for s in region), self.dtype)
        if out.size == 0:
            return out
        walk = [d for d in self.order if d in self.loops]
        for index in itertools.product(*(range(sel[d].start, sel[d].stop) for d in walk)):
            at = dict(zip(walk, index, strict=True))
            coords = [self.position if d == "P" else at.get(d, 0) for d in self.loops]
            seq = int(np.ravel_multi_index(coords, self.loop_sizes)) if coords else 0
            frame = np.asarray(reader.read_frame(seq))
            frame_dims = [d for d in self.order if d not in self.loops]
            frame = frame.reshape([self.shape[self.order.index(d)] for d in frame_dims])
            part = frame[tuple(sel[d] for d in frame_dims)]
            dest = tuple(index[walk.index(d)] - sel[d].start if d in walk else slice(None)
                         for d in self.order)  # fmt: skip
            out[dest] = part
        return out
