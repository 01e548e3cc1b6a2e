"""Which reader opens which input: one entry point, :func:`open_source`, for every kind.

=============================================  ===========================================
input                                          reader
=============================================  ===========================================
a Zarr v2/v3 array, an OME-Zarr image (any     ``zarr.open_zarr`` (local path or URL)
level), an open ``zarr.Array``
a ``.tif``/``.tiff`` file (OME-TIFF, ImageJ)   ``tiff.open_tiff`` (tifffile's Zarr
                                               interface)
a folder, a glob or a list of plane files      ``images.open_image_files``
(TIFF, PNG, JPEG)
an HDF5 dataset (``file.h5/group/dataset``)    ``hdf5.open_hdf5``
a CZI, ND2 or LIF file, or one scene of it     ``czi.open_czi``, ``nd2.open_nd2``,
(``slide.czi/1``)                              ``lif.open_lif``
a NumPy, dask or xarray array                  ``arrays.array_source``
=============================================  ===========================================

Every reader's result becomes one :class:`~.source.Source`, so the rest of the
pipeline never knows where the data came from.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from .._locations import reach, resolve
from .._ngff import SPACE_UNITS, TIME_UNITS
from .share import Shared
from .source import Source, check_dtype_and_extent
from .stack_meta import OpenedStack
from .zarr import open_zarr

__all__ = ["Reopen", "open_source", "portable"]

_TIFF = (".tif", ".tiff", ".btf", ".tf8")
_HDF5 = (".h5", ".hdf5", ".he5", ".hdf")
_ZARR_META = ("zarr.json", ".zarray", ".zgroup")
_PLANES = (".png", ".jpg", ".jpeg")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*(?:://|::)")
# Microscope vendors' formats, each read by its own library (an optional extra).
VENDOR_FORMATS = {".czi": "czi", ".nd2": "nd2", ".lif": "lif"}


def _is_in_memory_array(obj: Any) -> bool:
    if isinstance(obj, np.ndarray):
        return True
    kind = type(obj).__module__.split(".")[0]
    return kind in ("dask", "xarray") and hasattr(obj, "shape")


def _options_apply(src: Any) -> None:
    """Refuse fsspec options for a src they cannot reach: an array, a list or glob of plane
    files (read from local paths, as :func:`open_source` takes them). They were ignored in
    silence, where those for a local path are refused (a fuzzer of option combinations)."""
    if isinstance(src, (str, os.PathLike)):
        text = os.fspath(src)
        if not _local_glob(text):
            return  # a path or URL: resolve() says whether they apply
        what = f"src {text!r} is a glob of local plane files"
    elif isinstance(src, (list, tuple)):
        what = "src is a list of plane files"
    else:
        what = f"src is a {type(src).__module__.split('.')[0]}.{type(src).__name__}, not a URL"
    raise ValueError(f"storage_options only apply to URLs such as 's3://...', but {what}")


def _local_glob(text: str | bytes) -> bool:
    """Whether src is a glob of local plane files. A URL never is: a "?" or "[" in its query
    (a token, a presigned URL) made it one, refused as "matches no files"; globs are read
    from local paths only (a URL's "*" is refused where it is read)."""
    if not isinstance(text, str) or _URL.match(text):  # (a local a::b/*.tif is a glob)
        return False
    return any(ch in text for ch in "*?[") and not os.path.exists(text)


def open_source(
    src: Any,
    *,
    axes: str | None = None,
    level: int = 0,
    storage_options: Mapping[str, Any] | None = None,
) -> Source:
    """Open any supported focus stack; see the module docstring for what goes where.

    Raises
    ------
    FileNotFoundError
        If ``src`` does not exist.
    ValueError, TypeError
        If it is none of the supported inputs, or its metadata or ``axes`` are unusable.
    """
    # for every input, as the Zarr reader checks it (level=[] or None was level 0 for an
    # array, a TIFF or plane files; "1" blamed the array for having no pyramid)
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 0:
        raise TypeError(f"level must be an integer >= 0, got {level!r}")
    if storage_options:
        _options_apply(src)
    if _is_in_memory_array(src):
        from .arrays import array_source

        if level:
            raise ValueError(f"level={level} applies to pyramids; an in-memory array has none")
        return _from_opened(array_source(src, axes=axes), None, in_memory=True)
    if isinstance(src, (list, tuple)):
        from .images import open_image_files

        return _from_opened(open_image_files(list(src), axes=axes, name="src"), None)
    if not isinstance(src, (str, os.PathLike)):
        return open_zarr(src, axes=axes, level=level, storage_options=storage_options)
    text = os.fspath(src)
    if _local_glob(text):
        from .images import open_image_files

        _level0(level, "plane files")
        return _from_opened(open_image_files(text, axes=axes, name="src"), None)
    location = resolve(src, name="src", storage_options=storage_options)
    if not location.is_local:
        ext = os.path.splitext(location.path.split("?")[0].rstrip("/"))[1].lower()
        if ext in _TIFF or ext in VENDOR_FORMATS or ext in _HDF5 or ext in _PLANES:
            raise ValueError(
                f"src {location.spec!r}: {ext} files are read from a local path only (a "
                "mounted filesystem too); copy it here, or convert it to Zarr"
            )
        if "*" in location.path:
            raise ValueError(
                f"src {location.spec!r} is a glob in a URL; globs of plane files are read from "
                "a local path only (a mounted filesystem too); copy them here, or convert them "
                "to Zarr"
            )
        reach(location, name="src")
        return open_zarr(location, axes=axes, level=level, storage_options=storage_options)
    path = location.path
    lower = path.lower()
    vendor = _vendor_file(path)
    if vendor is not None:
        _level0(level, f"{vendor[2].upper()} files")
        with _reading(location.spec):
            return _from_opened(open_vendor(*vendor, axes=axes), location)
    tiff = _tiff_file(path)
    if tiff is not None:
        from .tiff import open_tiff

        with _reading(location.spec):
            return _from_opened(open_tiff(tiff[0], scene=tiff[1], level=level, axes=axes), location)
    if lower.endswith(_HDF5) or _inside_hdf5(path):
        from .hdf5 import open_hdf5

        _level0(level, "HDF5 datasets")
        return _from_opened(open_hdf5(path, axes=axes), location)
    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, m)) for m in _ZARR_META):
        from .images import open_image_files
        from .plane_files import is_image

        if any(is_image(n) for n in os.listdir(path)):
            _level0(level, "plane files")
            with _reading(location.spec):
                return _from_opened(open_image_files(path, axes=axes, name="src"), location)
        _refuse_planes_one_folder_down(path, location.spec)
    if os.path.isfile(path):
        raise ValueError(
            f"src {location.spec!r} is not a Zarr array or group, nor a file fstack_dask can "
            f"read as a focus stack: expected {_READABLE}"
        )
    if not os.path.lexists(path):  # every local reader, not only Zarr's
        raise FileNotFoundError(f"src {location.spec!r} does not exist; expected {_READABLE}")
    return open_zarr(location, axes=axes, level=level)


def _refuse_planes_one_folder_down(path: str, spec: str) -> None:
    """A folder of a folder of planes (a microscope's export folder) is named as such; it was
    refused as "not a Zarr array or group", which pointed nowhere."""
    from .plane_files import is_image

    found = []
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if not entry.is_dir() or entry.name.startswith("."):
                    continue
                if any(os.path.exists(os.path.join(entry.path, m)) for m in _ZARR_META):
                    continue
                with contextlib.suppress(OSError):  # a folder we may not read: not named
                    if any(is_image(n) for n in os.listdir(entry.path)):
                        found.append(entry.name)
    except OSError:
        return  # the Zarr reader says what it says
    if found:
        found.sort()
        names = ", ".join(repr(n) for n in found[:5]) + (" ..." if len(found) > 5 else "")
        raise ValueError(
            f"src {spec!r} holds neither plane files nor Zarr metadata, but its folder(s) "
            f"{names} hold plane files: give one of them, e.g. src "
            f"{os.path.join(spec, found[0])!r}"
        )


_READABLE = (
    "a Zarr or OME-Zarr store, a TIFF file (multi-page, OME-TIFF, ImageJ), a CZI, ND2 or LIF "
    "file, an HDF5 dataset, or a folder or glob of plane files (TIFF, PNG, JPEG)"
)


def _vendor_file(path: str) -> tuple[str, str | None, str] | None:
    """(file, scene, format) for a vendor file, or a path through one (``slide.czi/1``)."""
    from .vendor import split_scene

    kind = VENDOR_FORMATS.get(os.path.splitext(path)[1].lower())
    if kind is not None and os.path.isfile(path):
        return path, None, kind
    if os.path.exists(path):
        return None
    file, scene = split_scene(path)
    kind = VENDOR_FORMATS.get(os.path.splitext(file)[1].lower())
    if kind is None or scene is None or not os.path.isfile(file):
        return None
    return file, scene, kind


def _tiff_file(path: str) -> tuple[str, str | None] | None:
    """(file, series) for a TIFF file, or a path through one to a series (``s.ome.tif/1``)."""
    from .vendor import split_scene

    if os.path.isfile(path):
        return (path, None) if path.lower().endswith(_TIFF) else None
    if os.path.exists(path):
        return None
    file, scene = split_scene(path)
    return (file, scene) if scene is not None and file.lower().endswith(_TIFF) else None


def open_vendor(path: str, scene: str | None, kind: str, *, axes: str | None) -> OpenedStack:
    """Open one scene of a CZI, ND2 or LIF file with its format's reader."""
    if kind == "czi":
        from .czi import open_czi

        return open_czi(path, scene=scene, axes=axes)
    if kind == "nd2":
        from .nd2 import open_nd2

        return open_nd2(path, scene=scene, axes=axes)
    from .lif import open_lif

    return open_lif(path, scene=scene, axes=axes)


def _level0(level: int, what: str) -> None:
    if level:
        raise ValueError(f"level={level} applies to pyramids; {what} have a single level")


def _inside_hdf5(path: str) -> bool:
    """``file.h5/group/dataset``: a path that runs through an HDF5 file."""
    head = path
    while head and head != os.path.dirname(head):
        if os.path.isfile(head):
            return head.lower().endswith(_HDF5)
        head = os.path.dirname(head)
    return False


def _reading(what: str):
    """Errors of a reader's own making (a damaged file) as one ValueError naming ``what``."""
    import contextlib

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except (ValueError, TypeError, OSError, ImportError):
            raise
        except Exception as exc:
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise ValueError(f"src {what!r} cannot be read: {text}") from exc

    return guard()


def _units_of_their_kind(stack: OpenedStack) -> tuple[dict, dict, dict, tuple[str, ...]]:
    """The stack's scale, units and translation, less those of an axis whose unit is not
    of its kind (a file's frames read as z with ``axes``: their interval in seconds is no
    focus step), and a warning for each axis left without."""
    scale, units, shift = dict(stack.scale), dict(stack.units), dict(stack.translation)
    warnings = []
    for a, unit in stack.units.items():
        if (a in "zyx" and unit in TIME_UNITS) or (a == "t" and unit in SPACE_UNITS):
            value = scale.pop(a, None)
            del units[a]
            shift.pop(a, None)
            step = f"a step of {value:g} {unit}" if value is not None else f"the unit {unit}"
            warnings.append(
                f"{stack.description}: the axis read as {a!r} has {step}, which is not a "
                f"{'time' if a == 't' else 'length'}: it is not used as {a}'s scale"
                + (" (the depth map is in plane numbers)" if a == "z" else "")
            )
    return scale, units, shift, tuple(warnings)


def _from_opened(stack: OpenedStack, location: Any, *, in_memory: bool = False) -> Source:
    array = stack.array
    scale, physical_units, shift, unit_warnings = _units_of_their_kind(stack)
    shape = tuple(int(n) for n in array.shape)
    units = tuple(max(1, min(int(c), n)) for c, n in zip(array.chunks, shape, strict=True))
    channels = None
    if "c" in stack.axes and (stack.channel_names or stack.channel_colors):
        n = shape[stack.axes.index("c")]
        channels = []
        for k in range(n):
            ch: dict[str, Any] = {}
            if stack.channel_names:
                ch["label"] = stack.channel_names[k]
            if stack.channel_colors:
                ch["color"] = stack.channel_colors[k]
            channels.append(ch)
    spec = location.spec if location is not None else stack.description
    where = f"src {spec!r}" if location is not None else f"src ({stack.description})"
    check_dtype_and_extent(array.dtype, shape, stack.axes, where)
    # whole-plane formats cache decoded planes in the reader; arrays need no cache
    own_cache = in_memory or stack.kind.endswith(" files") and units[-2:] == shape[-2:]
    meta = repr(
        (stack.kind, shape, str(array.dtype), stack.axes, stack.scale, stack.units,
         stack.translation, stack.channel_names, stack.channel_colors, stack.rgb)
    ) + (" separate channels" if stack.separate_channels else "")  # fmt: skip
    return Source(
        array=array,
        axes=stack.axes,
        unit_shape=units,
        description=where,
        location=location,
        kind=stack.kind,
        scale=scale,
        units=physical_units,
        translation=shift,
        channels=channels,
        rgb=stack.rgb,
        separate_channels=stack.separate_channels,
        files=tuple(stack.files),
        cached_reads=not own_cache,
        metadata_text=meta,
        notes=tuple(stack.notes),
        warnings=tuple(stack.warnings) + unit_warnings,
    )


def portable(
    src: Any, storage_options: Mapping[str, Any] | None = None, *, planes: Any = ()
) -> Any:
    """``src`` as every process reads it, wherever it runs: a local path made absolute (as
    :func:`open_source` resolved it here), a relative glob or list of plane files made
    absolute, and an open Zarr array on a relative local store opened again on the absolute
    one.

    A worker process or cluster worker resolves a relative path against its own working
    directory, which is where it was started, not where this process is now: it would read
    another stack of the same name and write its fusion into this run's output. URLs and
    in-memory arrays are the same everywhere and are returned as they are. ``planes``: the
    files a glob or list of plane files opened here, which the workers then read rather than
    list again (a plane added meanwhile; ``link/..``, which only the OS reads right).
    """
    if _is_in_memory_array(src) or isinstance(src, Shared):
        return src
    if planes:  # a glob or list of plane files: the very files this process listed
        return list(planes)
    if isinstance(src, (list, tuple)):
        return [_absolute(p, storage_options) for p in src]
    if isinstance(src, (str, os.PathLike)):
        text = os.fspath(src)
        if _local_glob(text):  # (a URL's query made it one: workers read a local glob)
            return os.path.abspath(os.path.expanduser(text))  # a glob (as open_source reads it)
        return _absolute(src, storage_options)
    return _zarr_on_absolute_store(src)


def _absolute(path: Any, storage_options: Mapping[str, Any] | None) -> Any:
    """A local path or local URL as the absolute path :func:`resolve` gives it; anything
    else as it is (a remote URL, or what opening will refuse)."""
    if not isinstance(path, (str, os.PathLike)):
        return path
    try:
        location = resolve(path, name="src", storage_options=storage_options)
    except (ValueError, TypeError, OSError):
        return path  # opening it reports the problem
    return location.path if location.is_local else path


def _zarr_on_absolute_store(node: Any) -> Any:
    """A Zarr array or store on a local store with a relative root, on the absolute root."""
    import zarr
    from zarr.storage import LocalStore

    store = node if isinstance(node, LocalStore) else getattr(node, "store", None)
    if not isinstance(store, LocalStore) or os.path.isabs(os.fspath(store.root)):
        return node
    absolute = LocalStore(os.path.abspath(os.fspath(store.root)), read_only=True)
    if node is store:
        return absolute
    return zarr.open_array(store=absolute, path=node.path, mode="r")


class Reopen:
    """Opens the source again in a worker process (a picklable recipe); ``data`` is an
    in-memory source's array where the task brought it (``share``).

    ``expected`` is the :meth:`~.source.Source.identity` of the source the run was planned
    from: a worker that opens another one (a path that names other data there, a source
    changed since) stops the run, before it reads or writes anything, rather than fuse
    another stack into the output.
    """

    def __init__(
        self,
        src: Any,
        axes: Any,
        level: int,
        storage_options: Any,
        by_inner_chunks: bool = False,
        expected: Mapping[str, Any] | None = None,
    ):
        self.src, self.axes, self.level, self.storage_options = src, axes, level, storage_options
        self.by_inner_chunks = by_inner_chunks  # as the run planned its reads
        self.expected = None if expected is None else dict(expected)

    def __call__(self, data: Any = None) -> Source:
        src = self.src.resolve(data) if isinstance(self.src, Shared) else self.src
        source = open_source(
            src, axes=self.axes, level=self.level, storage_options=self.storage_options
        )
        source = replace(source, by_inner_chunks=self.by_inner_chunks)
        if self.expected is not None:
            _check_same_source(self.expected, source)
        return source


_WHAT = {"kind": "format", "unit_shape": "chunking", "metadata_sha256": "metadata"}


def _check_same_source(expected: Mapping[str, Any], source: Source) -> None:
    found = source.identity()
    differ = [_WHAT.get(key, key) for key, value in expected.items() if found.get(key) != value]
    if not differ:
        return
    where = f"{found['location']!r}" if found["location"] is not None else "a copy of it"
    planned = f"{expected['location']!r}" if expected["location"] is not None else "in memory"
    raise ValueError(
        f"src: a worker opened {where}, but this run was planned from {planned} "
        f"({', '.join(differ)} differ); every worker must see src as this process does: "
        f"pass an absolute path or a URL that all workers reach, and do not change src "
        f"during a run"
    )
