"""A focus stack stored as one image file per plane: TIFF, PNG or JPEG, read lazily.

Planes come from a folder, a glob pattern or a list of files. Opening reads only
each file's header (``image_headers``: to refuse mixed shapes, dtypes and colour modes
early); pixels are decoded when a region is asked for (``image_planes``): TIFF through
tifffile (tiled or striped planes read only the tiles or strips a region overlaps, through
tifffile's Zarr store), PNG and JPEG through Pillow, which can only decode a
whole file, turned upright by their EXIF orientation as viewers show them (all by the
first plane's: one camera's pixels are laid out alike in every plane).
Whole decoded planes are kept in a small LRU cache, so reading a stack region
by region decodes each file once while the cache holds the stack.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._ngff import OME_LENGTHS
from .._params import parse_axes
from .image_headers import _one_orientation, _probe_pillow, _probe_tiff
from .image_planes import _PlaneFiles
from .plane_files import list_plane_files
from .plane_names import (
    FORMATS,
    files_used,
    natural_key,
    odd_names,
    odd_names_warning,
    order_warning,
    reading_p_as_point,
)
from .plane_stacks import gap_warning, restart_warning
from .stack_meta import OpenedStack

__all__ = ["DEFAULT_CACHE_BYTES", "natural_key", "open_image_files"]

DEFAULT_CACHE_BYTES = 256 * 2**20


def open_image_files(
    spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    axes: str | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    name: str = "spec",
) -> OpenedStack:
    """Open a stack of plane files (TIFF, PNG or JPEG; grey or RGB) lazily.

    Parameters
    ----------
    spec : str, os.PathLike or sequence of them
        A folder (its TIFF, PNG or JPEG files; other files, hidden files such as
        macOS's ``._plane1.jpg`` and ``Thumbs.db``/``desktop.ini`` are skipped),
        a glob pattern such as ``"/data/stack/plane_*.png"`` (every match must be
        an image file; the same litter is skipped) or a list of files, at least
        two. Folders and patterns are read in natural sort order (`natural_key`:
        ``plane2`` before ``plane10``, ``z0.5um`` before ``z1um``, and ``z-3``
        before ``z0`` where the names hold signed and unsigned numbers at that
        place; by a number labelled ``z`` or ``focus`` first where names hold
        other numbers, as stage coordinates); a list keeps its order. All files must
        have one format, shape, dtype and colour mode.
    axes : str, optional
        ``"zyx"`` (grey) or ``"zyxc"`` (colour), the only order plane files have:
        planes, rows, columns, RGB samples; anything else is refused.
    cache_bytes : int, default 256 MiB
        Bytes of whole decoded planes kept for files that can only be decoded
        whole (PNG, JPEG, single-strip TIFF); 0 disables the cache.
    name : str, default "spec"
        How messages name `spec` (``"src"`` when it is a run's source).

    Returns
    -------
    OpenedStack
        ``kind`` is ``"tiff files"``, ``"png files"`` or ``"jpeg files"``. Alpha
        channels are dropped (noted in ``description``): fusion uses colour only.
        PNG and JPEG planes are turned upright by their EXIF orientation, as
        viewers show them (noted too; a portrait plane's rows and columns swap);
        every plane by the first plane's, with a warning naming the planes whose
        orientation differs (one camera lays its pixels out alike in every plane:
        only the tag flipped); where their stored sizes differ, each by its own
        (software turned some). A TIFF Orientation tag is not applied, as in
        tifffile and Fiji.
        ``notes`` lists the files used (count, first, last, litter skipped);
        ``warnings`` names files of a folder or pattern whose names break the
        pattern most of the others share (another tool's result saved beside
        the planes, say: it is used, as a plane, and named), names whose
        decimal numbers might count on instead (``x1.9``, ``x1.10``), a counter
        that restarted or skips numbers (``z05``, ``z07``: a plane lost), planes
        whose EXIF orientation differs from the first's, and a dropped alpha
        channel.

    Raises
    ------
    FileNotFoundError
        If the folder, or a listed file, does not exist.
    ValueError
        If nothing matches, only one file does, formats are mixed, a file is
        not a single plane, a file's shape, dtype or mode differs from the
        first (the message names the first offending file), or `axes` is not
        the planes' order.
    TypeError
        If `spec`, `axes` or `cache_bytes` has the wrong type.
    MissingExtraError
        If tifffile (TIFF, ``[tiff]``) or Pillow (PNG/JPEG, ``[images]``) is missing.

    References
    ----------
    S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of all-in-focus
    images by noise-robust selective fusion of limited depth-of-field images",
    IEEE Trans. Image Process. 22(3):1242-1251, 2013 (the fusion these stacks feed).
    """
    if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, (int, np.integer)):
        raise TypeError(f"cache_bytes must be an integer >= 0, got {cache_bytes!r}")
    if cache_bytes < 0:
        raise ValueError(f"cache_bytes must be an integer >= 0, got {cache_bytes}")
    files, place, skipped, points = list_plane_files(spec, name)
    where = f"{name} {place}"
    fmt = FORMATS[os.path.splitext(files[0])[1].lower()]
    for f in files:
        if FORMATS[os.path.splitext(f)[1].lower()] != fmt:
            raise ValueError(
                f"{where} mixes formats: {files[0]!r} is {fmt.upper()} but {f!r} is not; "
                f"pass a glob pattern that selects one format"
            )
    probe = _probe_tiff if fmt == "tiff" else _probe_pillow
    probes = [probe(f) for f in files]
    fused = [f for f, p in zip(files, probes, strict=True) if p.get("fused")]
    if fused and isinstance(spec, Sequence) and not isinstance(spec, str):
        raise ValueError(
            f"file {fused[0]!r} listed in {name} is an all-in-focus image fstack_dask wrote, "
            "not a focal plane; leave it out of the list"
        )
    if fused:  # a folder or pattern: our earlier result saved beside the planes
        probes = [p for p in probes if not p.get("fused")]
        files = [f for f in files if f not in fused]
        if not files:
            raise ValueError(f"{where} holds only images fstack_dask fused, no focal planes")
    probes, turned_alike, orientation = _one_orientation(files, probes, where)
    first = probes[0]
    for f, other in zip(files[1:], probes[1:], strict=True):
        if other["shape"] != first["shape"] or other["dtype"] != first["dtype"]:
            ours, its = first.get("orientation", 1), other.get("orientation", 1)
            alike = its != ours and isinstance(orientation, int)  # turned by the first's tag
            turned = f" (turned by EXIF orientation {ours}, not {its})" if alike else ""
            raise ValueError(
                f"file {f!r} has shape {other['shape']} and dtype {other['dtype']}{turned}, "
                f"but {files[0]!r} has shape {first['shape']} and dtype {first['dtype']}; "
                f"every plane of {where} must match"
            )
        if other["mode"] != first["mode"]:
            raise ValueError(
                f"file {f!r} is {other['mode']} but {files[0]!r} is {first['mode']}; "
                f"every plane of {where} must have the same colour mode"
            )
    if len(files) == 1:
        raise ValueError(
            f"{where} gives one file, {files[0]!r}; a focus stack needs at least 2 planes "
            "(one file per plane): check the folder or the pattern"
        )
    rgb = len(first["shape"]) == 3  # (y, x, samples)
    letters = "zyxc" if rgb else "zyx"
    if axes is not None and parse_axes(axes, len(axes) if isinstance(axes, str) else 0) != letters:
        # The order is fixed by the files; any other letters would make a wrong picture.
        raise ValueError(
            f"axes {axes!r} cannot apply to {where}: plane files are always read as "
            f"{letters!r} (one plane per file, in name order, then rows, columns"
            f"{', colour samples' if rgb else ''}); omit axes="
        )
    array = _PlaneFiles(
        files, fmt, first["shape"], first["dtype"], first["chunk"], first["alpha"], cache_bytes,
        orientation, tuple(bool(p.get("planar")) for p in probes),
    )  # fmt: skip
    kind = f"{fmt} files"
    # how the run's log and its messages name a glob or a list ("src (21 TIFF files pattern
    # 'p/*.tif')" and "src (7 TIFF files (a list of 7 files))" before)
    description = (
        f"{len(files)} {fmt.upper()} files matching {place}"
        if place.startswith("pattern")
        else f"a list of {len(files)} {fmt.upper()} files"
        if place.startswith("(a list")
        else f"{len(files)} {fmt.upper()} files {place}"
    )
    notes = []
    if first["alpha"]:
        notes.append("alpha channel dropped")
    if any(p["turned"] for p in probes):
        notes.append("turned upright by their EXIF orientation")
    if notes:
        description += ": " + ", ".join(notes)
    warnings = []
    if fused:
        names = ", ".join(repr(os.path.basename(f)) for f in fused)
        warnings.append(
            f"{where}: skipped {names}, an all-in-focus image fstack_dask wrote, not a plane"
        )
    if not isinstance(spec, Sequence) or isinstance(spec, str):  # a list is the user's choice
        with reading_p_as_point(points):  # "z1p5" as 1.5 where the folder's names said so
            odd = odd_names(files)
            if odd:
                warnings.append(odd_names_warning(files, odd, where))
            order = order_warning(files, where)
            restart = restart_warning(files, where)
            gap = None if restart else gap_warning(files, where)  # a restart is one gap: said
        warnings += [w for w in (order, restart, gap) if w]
    if turned_alike:
        warnings.append(turned_alike)
    warnings += _told_once(files, probes, where) + _pixel_size_warning(files, probes, where)
    if first["alpha"]:
        warnings.append(
            f"the {fmt.upper()} files of {where} have an alpha channel, which is dropped: "
            "fusion uses the colour (or grey) samples only, and transparent pixels are fused "
            "with the colour they hold"
        )
    scale, units = first["scale"], first["units"]
    return OpenedStack(
        array=array,
        axes=letters,
        kind=kind,
        scale={letters[i]: v for i, v in scale.items()},
        units={letters[i]: v for i, v in units.items()},
        translation={},
        channel_names=None,
        channel_colors=None,
        rgb=rgb and letters[-1] == "c",
        files=tuple(files),
        description=description,
        notes=(files_used(files, fmt, skipped),),
        warnings=tuple(warnings),
    )


def _told_once(files: list[str], probes: list[dict], where: str) -> list[str]:
    """What the planes' OME-XML or ImageJ description says that a single TIFF's warnings say
    (square pixels assumed, ImageJ's inverty, a pixel size in inches), once for the folder,
    naming the planes that say it: the planes' were dropped in silence."""
    saying: dict[str, list[str]] = {}
    for f, probe in zip(files, probes, strict=True):
        for text in probe.get("told", ()):
            saying.setdefault(text, []).append(os.path.basename(f))
    out = []
    for text, names in saying.items():
        who = (f"plane file {names[0]!r}" if len(names) == 1 else
               f"each of its {len(names)} plane files" if len(names) == len(files) else
               f"{len(names)} of its {len(files)} plane files ({names[0]!r} ...)")  # fmt: skip
        out.append(f"{where}, {who}: {text}")
    return out


def _pixel_size_warning(files: list[str], probes: list[dict], where: str) -> list[str]:
    """A warning naming the first plane whose pixel size (resolution tags, ImageJ or OME)
    is not the first plane's, which the output is given: it was the first's in silence (an
    adversarial run on metadata). Not refused: a plane saved again by other software may
    have lost its tags (72 dpi), and the planes are one stack all the same."""

    def size(probe: dict) -> tuple[Any, ...]:  # per y, x: metres, or (value, unit)
        out: list[Any] = []
        for i in (1, 2):
            value, unit = probe["scale"].get(i), probe["units"].get(i)
            metres = OME_LENGTHS.get(unit or "", (None, None))[1]
            out.append(round(value * metres, 15) if value and metres else (value, unit))
        return tuple(out)

    def said(probe: dict) -> str:
        if not probe["scale"]:
            return "no pixel size"
        unit = probe["units"].get(1) or probe["units"].get(2) or "(no unit)"
        y, x = (probe["scale"].get(i, "?") for i in (1, 2))
        return f"a pixel of {y:g} x {x:g} {unit} (y x)"

    first = size(probes[0])
    for f, probe in zip(files[1:], probes[1:], strict=True):
        if size(probe) != first:
            return [
                f"file {f!r} of {where} states {said(probe)}, but {files[0]!r} "
                f"{said(probes[0])}: the output is given the first plane's; check that the "
                "planes are one stack taken at one magnification"
            ]
    return []
