"""A focus stack stored as one image file per plane: TIFF, PNG or JPEG, read lazily.

Planes come from a folder, a glob pattern or a list of files. Opening reads only
each file's header (to refuse mixed shapes, dtypes and colour modes early);
pixels are decoded when a region is asked for: TIFF through tifffile (tiled or
striped planes read only the tiles or strips a region overlaps, through
tifffile's Zarr store), PNG and JPEG through Pillow, which can only decode a
whole file, turned upright by their EXIF orientation as viewers show them (all by the
first plane's: one camera's pixels are laid out alike in every plane).
Whole decoded planes are kept in a small LRU cache, so reading a stack region
by region decodes each file once while the cache holds the stack.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._params import parse_axes
from .common import REGION_UNIT, UnreadableFileError, import_optional, int_axes, region_key
from .plane_names import (
    FORMATS,
    files_used,
    list_plane_files,
    natural_key,
    odd_names,
    odd_names_warning,
    order_warning,
)
from .stack_meta import OpenedStack
from .tiff_array import FileChangedError, contiguous, file_stamp, read_contiguous

__all__ = ["DEFAULT_CACHE_BYTES", "natural_key", "open_image_files"]

DEFAULT_CACHE_BYTES = 256 * 2**20
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
        place); a list keeps its order. All files must
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
        decimal numbers might count on instead (``x1.9``, ``x1.10``), planes
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
    files, place, skipped = list_plane_files(spec, name)
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
        orientation,
    )  # fmt: skip
    kind = f"{fmt} files"
    description = f"{len(files)} {fmt.upper()} files {place}"
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
        odd = odd_names(files)
        if odd:
            warnings.append(odd_names_warning(files, odd, where))
        order = order_warning(files, where)
        if order:
            warnings.append(order)
    if turned_alike:
        warnings.append(turned_alike)
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


# ------------------------------------------------------------------- header probes


#: In the OME-XML of every OME-TIFF fstack_dask writes (``_outputs.tiff.NAMESPACE``, the
#: namespace of its provenance): a fused image saved beside the planes is not read as one.
FUSED_MARK = "fstack_dask/provenance"


def _probe_tiff(path: str) -> dict[str, Any]:
    from .tiff import _tifffile
    from .tiff_checks import held_log

    tifffile = _tifffile()
    with held_log():
        return _probe_tiff_file(tifffile, path)


def _probe_tiff_file(tifffile: Any, path: str) -> dict[str, Any]:
    """`_probe_tiff`, with tifffile's log held."""
    from .tiff import _imagej_metadata, _ome_metadata, _resolution_metadata
    from .tiff_checks import check_data

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.pages and FUSED_MARK in (tif.pages.first.description or "")[:65536]:
                return {"fused": True}  # an all-in-focus image we wrote beside the planes
            ser = tif.series[0]
            page = ser.keyframe
            colour = page.photometric in (2, 6)  # RGB, or YCbCr (JPEG) decoded to RGB
            plane_ndim = 2 + (page.samplesperpixel > 1)
            if len(ser.shape) != plane_ndim or (plane_ndim == 3 and ser.axes[-1] != "S"):
                raise ValueError(
                    f"file {path!r} holds {ser.shape} ({ser.axes}), not one plane; open a "
                    f"multi-page TIFF as one stack instead (open_tiff)"
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
            shape = tuple(ser.shape[:2]) + ((3,) if colour else ())
            if contiguous(ser, 0) is not None:  # uncompressed: any region is read alone
                chunk = tuple(min(REGION_UNIT, n) for n in shape[:2]) + shape[2:]
            elif page.is_tiled or len(page.dataoffsets) > 1:
                chunk = tuple(page.chunks[:2]) + shape[2:]
            else:
                chunk = shape
            ome = _ome_metadata(tif.ome_metadata, 0) if tif.is_ome else None
            if ome is not None:  # an image sequence's OME-TIFF planes (their tags say 1/1)
                scale, units, *_ = ome
            elif tif.is_imagej:
                scale, units, *_ = _imagej_metadata(tif.imagej_metadata or {}, page)
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


# --------------------------------------------------------------------------- array


class _PlaneFiles:
    """A (z, y, x[, c]) array over one file per plane, decoding on demand.

    Thread-safe: each read opens its own file; the cache is guarded by a lock,
    and concurrent requests for one uncached plane decode it once (the later
    requests wait for the first). ``decodes`` counts whole-file decodes and
    region reads, for tests and diagnostics. Pickles by file list (no cache).
    """

    def __init__(
        self,
        files: list[str],
        fmt: str,
        plane: tuple[int, ...],
        dtype: np.dtype,
        chunk: tuple[int, ...],
        alpha: bool,
        cache_bytes: int,
        orientation: int | tuple[int, ...] = 1,
    ):
        self.files, self.fmt, self.alpha, self.cache_bytes = tuple(files), fmt, alpha, cache_bytes
        self.orientation = orientation  # EXIF: of every PNG or JPEG plane, or one per plane
        self.shape = (len(files), *plane)
        self.dtype = dtype
        self.ndim = len(self.shape)
        self.chunks = (1, *chunk)
        # Files whose read unit is the whole plane are decoded whole and cached.
        self.whole = chunk == plane
        self._init_state()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._pending: dict[int, threading.Event] = {}
        self.decodes = 0

    def __getstate__(self) -> dict[str, Any]:
        keep = ("files", "fmt", "alpha", "cache_bytes", "shape", "dtype", "ndim", "chunks", "whole",
                "orientation")  # fmt: skip
        return {k: self.__dict__[k] for k in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        stats = [file_stamp(f) for f in self.files]
        return (type(self).__name__, self.files, tuple(stats))

    def __repr__(self) -> str:
        return f"<{len(self.files)} {self.fmt.upper()} files {self.shape} {self.dtype}>"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        region = region_key(key, self.shape)
        zs, rest = region[0], region[1:]
        out = np.empty(tuple(s.stop - s.start for s in region), dtype=self.dtype)
        for i, z in enumerate(range(zs.start, zs.stop)):
            if self.whole:
                out[i] = self._plane(z)[rest]
            else:
                out[i] = self._read_region(z, rest)
        squeeze = int_axes(key, self.ndim)
        return out.squeeze(axis=squeeze) if squeeze else out

    def _plane(self, z: int) -> np.ndarray:
        """Plane `z` decoded whole, from the cache when it is there."""
        while True:
            with self._lock:
                if z in self._cache:
                    self._cache.move_to_end(z)
                    return self._cache[z]
                wait = self._pending.get(z)
                if wait is None:
                    done = self._pending[z] = threading.Event()
                    break
            wait.wait()  # another thread decodes it; then look again
        try:
            plane = self._decode(z)
            with self._lock:
                self.decodes += 1
                if plane.nbytes <= self.cache_bytes:
                    self._cache[z] = plane
                    self._cached_bytes += plane.nbytes
                    while self._cached_bytes > self.cache_bytes:
                        _, old = self._cache.popitem(last=False)
                        self._cached_bytes -= old.nbytes
            return plane
        finally:
            with self._lock:
                del self._pending[z]
            done.set()

    def _decode(self, z: int) -> np.ndarray:
        path = self.files[z]
        try:
            if self.fmt == "tiff":
                import tifffile

                plane = tifffile.imread(path)
            else:
                from PIL import Image

                with Image.open(path) as im:
                    # Upright as viewers show the first plane: its EXIF orientation applied
                    # (to every plane, whatever the plane's own tag says).
                    turn = self.orientation
                    method = _EXIF_TRANSPOSE.get(turn if isinstance(turn, int) else turn[z])
                    upright = im.transpose(getattr(Image.Transpose, method)) if method else im
                    plane = np.asarray(upright)
        except (ImportError, MemoryError):
            raise
        except Exception as exc:  # a truncated or corrupt file: say which
            raise UnreadableFileError(path, _reason(exc)) from exc
        if self.fmt != "tiff" and plane.dtype != self.dtype and self.dtype == np.uint16:
            # 16-bit grey PNG: big-endian "I;16B", or int32 "I" in older Pillow.
            plane = plane.astype(np.uint16)
        if self.alpha:  # RGBA -> RGB, grey + alpha -> grey
            plane = plane[..., :3] if self.ndim == 4 else plane[..., 0]
        plane = self._checked(plane, z)
        plane.setflags(write=False)  # shared through the cache
        return plane

    def _read_region(self, z: int, rest: tuple[slice, ...]) -> np.ndarray:
        """Only the tiles or strips of TIFF plane `z` that `rest` overlaps."""
        import tifffile

        # rest's sample slice lies within RGB, so it also drops any alpha sample.
        try:
            # uncompressed: its rows only (and the plane checked, as a decoded one is)
            plane = read_contiguous(self.files[z], rest, (self.shape[1:], self.dtype))
            if plane is None:
                plane = tifffile.imread(self.files[z], selection=rest)
        except (ImportError, MemoryError, FileChangedError):
            raise
        except Exception as exc:
            raise UnreadableFileError(self.files[z], _reason(exc)) from exc
        with self._lock:
            self.decodes += 1
        return plane

    def _checked(self, plane: np.ndarray, z: int) -> np.ndarray:
        if plane.shape != self.shape[1:] or plane.dtype != self.dtype:
            # The file changed since it was opened.
            raise ValueError(
                f"file {self.files[z]!r} now decodes to shape {plane.shape} and dtype "
                f"{plane.dtype}, expected {self.shape[1:]} and {self.dtype}"
            )
        return plane


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
