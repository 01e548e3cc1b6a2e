"""What a plane file's header says, read without its pixels: shape, dtype, colour mode and
EXIF orientation (TIFF through tifffile, PNG and JPEG through Pillow), and the one
orientation a stack of PNG or JPEG planes is turned upright by.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .common import REGION_UNIT, import_optional
from .tiff_array import contiguous

__all__ = ["FUSED_MARK"]

# The EXIF orientation tag; values that turn or mirror the stored pixels, and (5-8) those
# that also swap rows and columns.
_EXIF_ORIENTATION = 0x0112
_EXIF_TURNED = frozenset(range(2, 9))
_EXIF_TRANSPOSED = frozenset(range(5, 9))
# How Pillow turns the stored pixels upright, for each orientation (as ImageOps.exif_transpose).
_EXIF_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
                   6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}  # fmt: skip
_EXIF_SAYS = {1: "as stored", 2: "mirrored", 3: "turned 180 degrees", 4: "flipped",
              5: "transposed", 6: "turned 90 degrees clockwise", 7: "transversed",
              8: "turned 90 degrees anticlockwise"}  # fmt: skip
# Pillow modes we read, as (samples per pixel, alpha present).
_PIL_MODES = {"L": (1, False), "I;16": (1, False), "I;16B": (1, False), "I;16L": (1, False),
              "I": (1, False),
              "LA": (1, True), "RGB": (3, False), "RGBA": (3, True)}  # fmt: skip


def _one_orientation(
    files: list[str], probes: list[dict[str, Any]], where: str
) -> tuple[list[dict[str, Any]], str | None, int | tuple[int, ...]]:
    """The probes with every plane turned by the first plane's EXIF orientation, a warning
    naming the planes whose own orientation differs (None where all agree), and the
    orientation to decode by: one for every plane, or one per plane.

    A focus stack is one field seen by one camera: its pixels are laid out alike in every
    plane, and a tag that differs (an orientation sensor flipping on a copy stand) would turn
    that plane against the others, its detail fused in the opposite corner. Where the planes'
    stored shapes differ, though, their pixels are not laid out alike: software turned some
    (Explorer, Preview, ``jpegtran -rotate`` store the turned pixels and reset the tag), and
    each is turned by its own tag (the first rule refused such a stack: a review, 2026-12-05).
    """
    ours = probes[0].get("orientation", 1)
    differ = [(f, p["orientation"]) for f, p in zip(files, probes, strict=True)
              if p.get("orientation", 1) != ours]  # fmt: skip
    if not differ:
        return probes, None, ours
    if len({p["stored"] for p in probes}) > 1:
        return probes, None, tuple(p.get("orientation", 1) for p in probes)
    # PNG and JPEG are decoded whole: the plane is the read unit
    probes = [dict(p, shape=(shape := _upright_shape(p["stored"], ours)), chunk=shape,
                   turned=ours in _EXIF_TURNED) for p in probes]  # fmt: skip
    shown = ", ".join(f"{os.path.basename(f)!r} ({o}: {_EXIF_SAYS[o]})" for f, o in differ[:5])
    more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
    one = len(differ) == 1
    warning = (
        f"{where}: the EXIF orientation of {shown}{more} differs from that of "
        f"{os.path.basename(files[0])!r} ({ours}: {_EXIF_SAYS[ours]}); the planes of a focus "
        f"stack share one camera's pixel layout, so {'it is' if one else 'they are'} turned "
        f"as {os.path.basename(files[0])!r} is, not by {'its' if one else 'their'} own tag"
    )
    return probes, warning, ours


def _upright_shape(stored: tuple[int, ...], orientation: int) -> tuple[int, ...]:
    return (stored[1], stored[0], *stored[2:]) if orientation in _EXIF_TRANSPOSED else stored


#: In the OME-XML of every OME-TIFF fstack_dask writes (``_outputs.tiff.NAMESPACE``, the
#: namespace of its provenance): a fused image saved beside the planes is not read as one.
FUSED_MARK = "fstack_dask/provenance"
_PLANAR_SEPARATE = 2  # TIFF PlanarConfiguration: each sample in a plane of its own


def _probe_tiff(path: str) -> dict[str, Any]:
    from .tiff import _tifffile
    from .tiff_checks import held_log

    tifffile = _tifffile()
    with held_log():
        return _probe_tiff_file(tifffile, path)


def _probe_tiff_file(tifffile: Any, path: str) -> dict[str, Any]:
    """`_probe_tiff`, with tifffile's log held."""
    from .tiff_checks import check_data
    from .tiff_metadata import _imagej_metadata, _ome_metadata, _resolution_metadata

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.pages and FUSED_MARK in (tif.pages.first.description or "")[:65536]:
                return {"fused": True}  # an all-in-focus image we wrote beside the planes
            ser = tif.series[0]
            page = ser.keyframe
            colour = page.photometric in (2, 6)  # RGB, or YCbCr (JPEG) decoded to RGB
            plane_ndim = 2 + (page.samplesperpixel > 1)
            # RGB stored as a plane per colour (PlanarConfiguration separate, SYX: some
            # scanners and libtiff tools) is one plane: read as RGB, its samples moved last
            # (refused since 5ba8294, though contiguous RGB planes were fused)
            planar = colour and page.planarconfig == _PLANAR_SEPARATE and ser.axes == "SYX"
            if len(ser.shape) != plane_ndim or (plane_ndim == 3 and ser.axes[-1] != "S"
                                                and not planar):  # fmt: skip
                raise ValueError(
                    f"file {path!r} holds {ser.shape} ({ser.axes}), not one plane; a "
                    "multi-page TIFF is a stack itself: give its path alone as the source"
                )
            if plane_ndim == 3 and not colour:
                raise ValueError(
                    f"file {path!r} has {page.samplesperpixel} samples per pixel but is not RGB; "
                    f"expected grey or RGB planes"
                )
            # the tags only (parsed already): a plane whose header claims more rows than its
            # strips hold would be read with zeros
            check_data(ser, f"file {path!r}")
            alpha = colour and len(page.extrasamples) > 0
            shape = tuple(ser.shape[1:] if planar else ser.shape[:2]) + ((3,) if colour else ())
            if contiguous(ser, 0) is not None:  # uncompressed: any region is read alone
                chunk = tuple(min(REGION_UNIT, n) for n in shape[:2]) + shape[2:]
            elif page.is_tiled or len(page.dataoffsets) > 1:
                chunk = tuple(page.chunks[:2]) + shape[2:]
            else:
                chunk = shape
            ome = _ome_metadata(tif.ome_metadata, 0) if tif.is_ome else None
            told: tuple[str, ...] = ()  # what a single TIFF's warnings say (kept)
            if ome is not None:  # an image sequence's OME-TIFF planes (their tags say 1/1)
                scale, units, *_, told = ome
            elif tif.is_imagej:
                meta = tif.imagej_metadata or {}  # a plane's origin is not read: no position
                meta = {k: v for k, v in meta.items() if k not in ("xorigin", "yorigin")}
                scale, units, *_, told = _imagej_metadata(meta, page)
            else:
                scale, units = _resolution_metadata(page)
            mode = f"{'RGB' if colour else 'grey'}{'A' if alpha else ''} {page.dtype}"
            dtype = np.dtype(page.dtype)
    except tifffile.TiffFileError as exc:
        raise ValueError(f"file {path!r} is not a readable TIFF file: {exc}") from exc
    index = {"Y": 1, "X": 2}
    return {
        "fused": False,
        "shape": shape,
        "dtype": dtype,
        "mode": mode,
        "chunk": chunk,
        "alpha": alpha,
        "scale": {index[a]: v for a, v in scale.items() if a in index},
        "units": {index[a]: v for a, v in units.items() if a in index},
        "turned": False,  # a TIFF Orientation tag is not applied, as in tifffile and Fiji
        "planar": planar,
        "told": told,
    }


def _probe_pillow(path: str) -> dict[str, Any]:
    pil = import_optional(
        "PIL.Image", extra="images", what="reading PNG and JPEG files", package="pillow"
    )
    try:
        with pil.open(path) as im:
            mode, size, tile = im.mode, im.size, im.tile
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except (pil.UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"file {path!r} is not a readable image: {exc}") from exc
    if not isinstance(orientation, int) or orientation not in _EXIF_SAYS:
        orientation = 1  # out of the standard's 1-8: as stored, as Pillow reads it
    if mode not in _PIL_MODES:
        raise ValueError(
            f"file {path!r} has Pillow mode {mode!r}; expected grey (L, I;16) or colour "
            f"(RGB, RGBA) planes"
        )
    raw = tile[0][3] if tile else None  # the decoder's args (Pillow 11's _Tile.args; before
    # Pillow 11 a plain tuple, without .args: every PNG/JPEG folder failed there)
    raw = raw[0] if isinstance(raw, tuple) else raw
    if mode in ("RGB", "RGBA") and isinstance(raw, str) and ";16" in raw:
        # Pillow has no 16-bit colour mode and would silently keep 8 of the 16 bits.
        raise ValueError(
            f"file {path!r} is a 16-bit colour PNG, which Pillow can only read as 8 bits; "
            f"convert the planes to 16-bit RGB TIFF"
        )
    samples, alpha = _PIL_MODES[mode]
    if mode == "I" and not (isinstance(raw, str) and raw.startswith("I;16")):
        raise ValueError(f"file {path!r} holds 32-bit integers; expected 8- or 16-bit planes")
    stored = (size[1], size[0]) + ((3,) if samples == 3 else ())
    shape = _upright_shape(stored, orientation)
    dtype = np.dtype(np.uint16 if mode.startswith("I") else np.uint8)
    return {"shape": shape, "dtype": dtype, "mode": mode, "chunk": shape, "alpha": alpha,
            "scale": {}, "units": {}, "turned": orientation in _EXIF_TURNED,
            "orientation": orientation, "stored": stored}  # fmt: skip
