"""Multi-page TIFF, OME-TIFF and ImageJ hyperstacks, read lazily through tifffile's Zarr store.

``tifffile`` exposes a series (one image of an OME-TIFF, an ImageJ hyperstack,
the pages of a plain TIFF) as a read-only Zarr 3 store whose chunks are the
file's own strips or tiles (`tifffile.ZarrTiffStore`); a region read decodes
only the strips or tiles it overlaps. Axes come from tifffile's series axes,
physical sizes from the OME-XML or the ImageJ description and resolution tags.
"""

from __future__ import annotations

import glob
import os
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np

from .._params import parse_axes
from .common import MissingExtraError, import_optional, region_unit
from .stack_meta import OpenedStack
from .tiff_array import TiffArray, contiguous, whole_pages
from .tiff_checks import check_data, held_log
from .tiff_metadata import _level_scale, _metadata

__all__ = ["open_tiff"]

# tifffile's axis letters that mean the same as ours; S (samples), I and Q
# (a page sequence of unknown meaning) are mapped by rule in `_map_axes`.
_SAME = {"Z": "z", "Y": "y", "X": "x", "C": "c", "T": "t"}
_PHOTOMETRIC_RGB = 2
_PHOTOMETRIC_YCBCR = 6  # JPEG-compressed colour: tifffile decodes it to RGB


def open_tiff(
    path: str | os.PathLike[str],
    *,
    series: int | None = None,
    scene: str | None = None,
    level: int = 0,
    axes: str | None = None,
) -> OpenedStack:
    """Open one series of a TIFF file (plain, OME-TIFF, ImageJ hyperstack) lazily.

    Parameters
    ----------
    path : str or os.PathLike
        The TIFF file.
    series : int, optional
        Which image series (an OME-TIFF may hold several images). Default: the one series
        that holds a stack (more than one plane), else series 0; a file with several
        stacks is refused, naming them, until one is chosen.
    scene : str, optional
        The series by index or name, as for vendor files (``src 'file.ome.tif/1'``,
        ``--scene 1``); ignored if ``series`` is given.
    level : int, default 0
        Pyramid level (0 is full resolution) when the series has sub-resolutions.
    axes : str, optional
        One letter per dimension, overriding tifffile's axes: needed when they
        cannot be mapped (no focus axis, or colour samples beside channels),
        and useful when a file labels its planes wrongly (an ImageJ z-stack
        saved as frames has axes ``tyx``; pass ``axes="zyx"``).

    Returns
    -------
    OpenedStack
        ``kind`` is ``"ome-tiff"``, ``"imagej-tiff"`` or ``"tiff"``; the array
        reads the file's strips or tiles on demand and pickles by path.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If `path` is not a TIFF file, `series` or `level` is out of range, or
        the axes cannot be mapped (the message names ``axes``).
    TypeError
        If `path`, `series`, `level` or `axes` has the wrong type.
    MissingExtraError
        If tifffile is not installed (``pip install "fstack_dask[tiff]"``).

    References
    ----------
    S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of all-in-focus
    images by noise-robust selective fusion of limited depth-of-field images",
    IEEE Trans. Image Process. 22(3):1242-1251, 2013 (the fusion these stacks feed).
    """
    tifffile = _tifffile()
    path = _check_path(path)
    series = None if series is None else _check_index(series, "series")
    level = _check_index(level, "level")
    with held_log():
        return _open_tiff(tifffile, path, series, scene, level, axes)


def _open_tiff(
    tifffile: Any, path: str, series: int | None, scene: str | None, level: int, axes: str | None
) -> OpenedStack:
    """`open_tiff` once its arguments are checked."""
    try:
        tif = tifffile.TiffFile(path)
    except tifffile.TiffFileError as exc:
        raise ValueError(f"path {path!r} is not a readable TIFF file: {exc}") from exc
    try:
        if not tif.series:  # (it said "series=0 is out of range", naming no option)
            raise ValueError(f"TIFF {path!r} holds no image (no pages)")
        chosen = series is None and scene is None
        pagewise = chosen and _one_page_series(tif.series)
        note = [f"its {len(tif.series)} pages, saved as a series each, read as one"] * pagewise
        if pagewise:
            tif.close()
            tif = tifffile.TiffFile(path, is_shaped=False)  # the pages as one generic series
        picked = series is None and scene is None and not pagewise and len(tif.series) > 1
        if series is None:
            series = _choose_series(tif.series, scene, path)
        if series >= len(tif.series):
            raise ValueError(
                f"series={series} is out of range: TIFF {path!r} has {len(tif.series)} series"
            )
        ser = tif.series[series]
        if chosen:
            _refuse_dropped_pages(tif, ser, path)
        if level >= len(ser.levels):
            raise ValueError(
                f"level={level} is out of range: series {series} of TIFF {path!r} has "
                f"{len(ser.levels)} pyramid level(s)"
            )
        kind = "ome-tiff" if tif.is_ome else "imagej-tiff" if tif.is_imagej else "tiff"
        label = {"ome-tiff": "OME-TIFF", "imagej-tiff": "ImageJ TIFF", "tiff": "TIFF"}[kind]
        description = f"{label} {path!r} (series {series}" + (f", level {level})" if level else ")")
        check_data(ser.levels[level], description)
        if axes is None:  # (a header that lies about the data is named first, above)
            _refuse_unread_ome(tif, ser, path)
        keyframe = ser.keyframe
        native = ser.axes
        colour = keyframe.photometric in (_PHOTOMETRIC_RGB, _PHOTOMETRIC_YCBCR)
        _refuse_single_image(native, colour, ser.levels[level].shape, description, path)
        letters, rgb, mapped = _map_axes(native, colour, axes, ser.levels[level].ndim, description)
        note += mapped
        n_colour = len(keyframe.extrasamples) if rgb else 0
        drop = (native.index("S"), 3) if n_colour else None
        shape = list(ser.levels[level].shape)
        if drop is not None:
            shape[drop[0]] = drop[1]
        offset = contiguous(ser, level)
        unit = None if offset is None else region_unit(letters, tuple(shape), rgb=rgb)
        array = TiffArray(path, series, level, drop=drop, whole_pages=whole_pages(ser, level),
                          offset=offset, unit=unit, generic=pagewise)  # fmt: skip
        warnings = []
        if n_colour:
            note.append(f"{n_colour} extra sample(s) (alpha) dropped")
            warnings.append(
                f"{description} has {n_colour} extra sample(s) per pixel (alpha), which are "
                "dropped: fusion uses the colour samples only"
            )
        scale, units, translation, names, colors, said = _metadata(tif, ser, kind)
        warnings += [f"{description}: {w}" for w in said]
        unnamed = [a for a in "TZYX" if a in scale and a not in units and a in native]
        if unnamed:  # (ImageJ's unit is free text: "furlong" was left out in silence)
            warnings.append(
                f"{description} states the pixel size of {', '.join(unnamed).lower()} in a "
                "unit that is not an OME-NGFF unit: written as a number without a unit"
            )
        files = _series_files(ser.levels[level], path)
        name = f" {ser.name!r}" if ser.name else ""
        # said in the run's log and by info: the series beside it (a label, a macro image)
        # were passed over in silence (an adversarial run on inputs, 2026-12-06)
        notes = [f"series {series}{name} of {len(tif.series)}, the only one holding a stack"]
    finally:
        tif.close()  # the array holds its own handle
    _level_scale(scale, ser, level, native)
    keep = {a: letters[native.index(a)] for a in native}
    scale = {keep[a]: v for a, v in scale.items() if a in keep}
    units = {keep[a]: v for a, v in units.items() if a in keep}
    translation = {keep[a]: v for a, v in translation.items() if a in keep}
    if rgb or "c" not in letters or (names and len(names) != array.shape[letters.index("c")]):
        names = colors = None  # an OME RGB image has one Channel element for 3 samples
    if note:
        description += ": " + "; ".join(note)
    return OpenedStack(
        array=array,
        axes=letters,
        kind=kind,
        scale=scale,
        units=units,
        translation=translation,
        channel_names=names,
        channel_colors=colors,
        rgb=rgb,
        files=files,
        description=description,
        notes=tuple(notes) if picked else (),
        warnings=tuple(warnings),
        # OME and ImageJ store colour as RGB samples: channels in pages are separate ones,
        # unless coloured red, green, blue (as an OME-Zarr's omero is read)
        separate_channels=kind != "tiff"
        and "c" in letters
        and not rgb
        and colors != ("FF0000", "00FF00", "0000FF"),
    )


def _refuse_single_image(
    native: str, colour: bool, shape: tuple[int, ...], where: str, path: str
) -> None:
    """A TIFF of one 2-D image (grey, or colour samples) is a plane, not a stack: no axes
    can make it one, so say what to give instead."""
    planar = native.replace("S", "") if colour else native
    if len(planar) != 2:
        return
    rows, cols = (shape[native.index(a)] for a in planar)
    pattern = f"{glob.escape(os.path.dirname(path))}/*{os.path.splitext(path)[1]}"
    raise ValueError(
        f"{where} is a single 2-D image ({rows} x {cols} px), not a focus stack: give the folder "
        f"of the planes, a pattern matching them (e.g. {pattern!r}) "
        "or a multi-page TIFF"
    )


# The first release whose Zarr stores are Zarr 3 stores that decode in threads.
_TIFFFILE_MIN = (2025, 5, 26)


def _tifffile() -> Any:
    tifffile = import_optional("tifffile", extra="tiff", what="reading TIFF files")
    try:
        version = tuple(int(p) for p in tifffile.__version__.split(".")[:3])
    except ValueError:  # a development version: assume it is recent
        return tifffile
    if version < _TIFFFILE_MIN:
        raise MissingExtraError(
            f"reading TIFF files needs tifffile >= 2025.5.26 (its Zarr 3 store; Python >= 3.11), "
            f'found {tifffile.__version__}; install it with: pip install "fstack_dask[tiff]"'
        )
    return tifffile


def _series_files(ser: Any, path: str) -> tuple[str, ...]:
    """Every file a series reads: a multi-file OME-TIFF spreads its planes over several."""
    if not getattr(ser, "is_multifile", False):
        return (path,)
    found = {path}
    for page in ser.pages:
        if page is not None:
            found.add(os.path.abspath(page.parent.filehandle.path))
    return (path, *sorted(found - {path}))


def _check_path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(path):
        raise FileNotFoundError(f"path {path!r} does not exist; expected a TIFF file")
    if not os.path.isfile(path):
        raise ValueError(f"path {path!r} is not a file; expected a TIFF file")
    return path


def _choose_series(found: list, scene: str | None, path: str) -> int:
    """The series ``scene`` names, else the only one holding a stack (more than one plane
    besides y, x and colour samples), else 0. Several stacks and none named: refused, as a
    vendor file's scenes are (a multi-position OME-TIFF was fused from its first position
    in silence)."""
    from .vendor import Scene, choose_scene

    scenes = [Scene(k, s.name or "", f"{s.axes} {'x'.join(map(str, s.shape))}")
              for k, s in enumerate(found)]  # fmt: skip
    stacks = [
        scene_
        for scene_, s in zip(scenes, found, strict=True)
        if np.prod([n for a, n in zip(s.axes, s.shape, strict=True) if a not in "YXS"]) > 1
    ]
    if scene is None and len(stacks) <= 1:
        return stacks[0].index if stacks else 0
    where = f"TIFF {path!r}"
    return choose_scene(stacks if scene is None else scenes, scene, path=path, where=where,
                        word="series").index  # fmt: skip


def _one_page_series(found: list) -> bool:
    """Whether a tifffile-shaped file is pages written one by one (``TiffWriter.write`` once per
    plane, tifffile's default then saves each as a series of its own): at least two series, each
    one page, all alike (shape, type and storage, as tifffile groups pages). A reduced-resolution
    page (a thumbnail, a page's pyramid level) is no plane: as a level of a series, or a series
    of its own, it had the stack refused as "a single 2-D image" (an adversarial run on inputs,
    2026-12-06), though reduced pages are left out of any other stack."""
    full = [s for s in found if not s.keyframe.is_reduced]
    return (
        len(full) > 1
        and all(s.kind == "shaped" and len(s.pages) == 1 for s in full)
        and all(level.keyframe.is_reduced for s in full for level in s.levels[1:])
        and len({s.keyframe.hash for s in full}) == 1
    )


def _refuse_unread_ome(tif: Any, ser: Any, path: str) -> None:
    """An OME-TIFF whose OME-XML tifffile could not read (not well-formed: a channel name
    with a control character, as tifffile itself writes one) came back as a generic series of
    all its pages, and its channels were fused as focus planes of one stack (an adversarial
    run on names, 2026-12-06): without the axes, nothing says which pages are which."""
    if not (tif.is_ome and ser.kind == "generic"):
        return
    try:
        ET.fromstring(tif.ome_metadata)
        why = "tifffile could not map it to the pages"
    except ET.ParseError as exc:
        why = f"not well-formed XML: {exc}"
    raise ValueError(
        f"OME-TIFF {path!r}: its OME-XML cannot be read ({why}), so which of its "
        f"{len(ser.pages)} pages are channels, times or focus planes is unknown; repair the "
        "OME-XML, or, if every page is a focus plane of one stack, say so, e.g. axes='zyx'"
    )


def _refuse_dropped_pages(tif: Any, ser: Any, path: str) -> None:
    """Without ImageJ, OME or shaped metadata, tifffile groups pages into series by shape and
    storage: a plane of another shape (saved rotated, or with other settings) became a series
    of its own and the stack was fused without it, in silence. Every page of the main chain
    must be in the series read, but reduced-resolution ones (pyramid levels, thumbnails)."""
    if ser.kind != "generic":
        return
    held = {p.index for p in ser.pages if p is not None}
    page = next((p for p in tif.pages if p.index not in held and p.shape and not p.is_reduced),
                None)  # fmt: skip
    if page is None:
        return
    this, those = _page_form(page), _page_form(ser.keyframe)
    if this == those:
        this += " stored otherwise (compression, strips or tiles)"
    raise ValueError(
        f"TIFF {path!r}: page {page.index} is {this}, but the {len(held)} pages of the stack "
        f"beside it are {those}; every plane of a stack must have one shape and type (the "
        "stack is not fused without one of its planes)"
    )


def _page_form(page: Any) -> str:
    samples = f" x {page.samplesperpixel} samples" if page.samplesperpixel > 1 else ""
    return f"{page.imagelength} x {page.imagewidth} px{samples} {page.dtype}"


def _check_index(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= 0, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value}")
    return int(value)


def _map_axes(
    native: str, colour: bool, axes: str | None, ndim: int, where: str
) -> tuple[str, bool, list[str]]:
    """Our axes for tifffile's `native` axes: (letters, rgb, notes for the description)."""
    note: list[str] = []
    mapped: list[str | None] = []
    for a in native:
        if a in _SAME:
            mapped.append(_SAME[a])
        elif a == "S":
            mapped.append("c" if "C" not in native else None)
        elif a in "IQ" and "Z" not in native and "z" not in mapped:
            mapped.append("z")  # a plain page sequence: the planes of the stack
            note.append(f"page sequence axis {a!r} read as the focus axis z")
        else:
            mapped.append(a.lower())
    if axes is not None:
        letters = parse_axes(axes, ndim)
        if None not in mapped and "".join(mapped) != letters:
            note = [f"axes {letters!r} given; the file's axes read {''.join(mapped)!r}"]
        else:
            note = []
        rgb = colour and "S" in native and letters[native.index("S")] == "c"
        return letters, rgb, note
    if None in mapped:
        raise ValueError(
            f"axes of {where} cannot be mapped: tifffile reads {native!r}, with both channels "
            f"(C) and colour samples (S); pass axes= with one letter per dimension"
        )
    try:
        letters = parse_axes("".join(mapped), ndim)
    except ValueError as exc:
        raise ValueError(
            f"axes of {where} cannot be mapped: tifffile reads {native!r} ({exc}); pass axes= "
            f"with one letter per dimension, e.g. axes={'z' + ''.join(mapped)[-2:]!r}"
        ) from exc
    return letters, colour and "S" in native, note


# ------------------------------------------------------------------ header against data
