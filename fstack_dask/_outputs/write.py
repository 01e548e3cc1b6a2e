"""Writing the fused OME-Zarr 0.5 image: its description, its arrays, durable block writes.

:func:`output_spec` builds the whole description of the output (arrays, chunks, NGFF and
provenance attributes) in memory and validates it, so that a problem found in the source's
metadata (a zero pixel size, say) stops a run before anything on disk is touched.
:func:`create_output` then writes it into a folder the run owns, and :func:`write_block`
writes one block's regions and makes them durable (fsync) before the caller records the
block as done.

Until the run completes, no group declares an image: each group's NGFF metadata (``ome``)
waits in its private attribute (``fstack_dask.pending_ome``), and :func:`publish` moves it
into place as the run's last write, the root last, in one atomic rewrite of each
``zarr.json``. A viewer opening an unfinished output, or one a killed run left, finds a
plain Zarr group, which readers that find images by their NGFF metadata (ome-zarr-py,
ome-zarr-models) do not take for one, rather than an image mostly of fill values;
ome-zarr-py's own writer, too, writes ``multiscales`` after the arrays. :func:`ngff_metadata`
reads either place (outputs begun before 2026-12-06 have ``ome`` from the start).
"""

from __future__ import annotations

import errno
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._layout import Layout
from .._locations import Location
from .._ngff import check_ngff_order, multiscale_entry, omero_entry, positive_scale

__all__ = [
    "ArraySpec",
    "OutputSpec",
    "create_output",
    "ngff_metadata",
    "output_spec",
    "publish",
    "write_block",
]

# The TIFF a TIFF dst's working store converts itself into, before it is moved into place
# (``_outputs.tiff``): one of the store's entries, so that it is ours by record.
TIFF_PARTIAL = "fused.tif.partial"
# NGFF allows only these axis letters' units to be carried over to the 2-D image.
_CARRIED = ("t", "y", "x")
_RGB_COLOURS = ("FF0000", "00FF00", "0000FF")
# Where a group's NGFF metadata waits, inside its private attribute, until the run completes.
PENDING = "pending_ome"
MAPS = ("depth", "selectivity")


@dataclass(frozen=True)
class ArraySpec:
    path: str
    axes: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any


@dataclass(frozen=True)
class OutputSpec:
    """Everything :func:`create_output` writes, validated.

    ``groups`` maps a group path (``""`` the root, ``"depth"``, ``"selectivity"``) to its
    attributes; ``arrays`` are their levels (``"0"``, ``"1"``, ..., ``"depth/0"``, ...).
    """

    arrays: tuple[ArraySpec, ...]
    groups: dict[str, dict[str, Any]]
    levels: int = 0

    def array(self, path: str) -> ArraySpec:
        return next(a for a in self.arrays if a.path == path)

    @property
    def attributes(self) -> dict[str, Any]:
        return self.groups[""]

    @property
    def entries(self) -> tuple[str, ...]:
        """The top-level entries the output has: what its record says fstack_dask wrote."""
        return tuple(self.attributes["fstack_dask"]["entries"])


def _jsonable(value: Any) -> Any:
    """Strict JSON (zarr would write bare NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _channels(source: Any, layout: Layout, dtype: np.dtype) -> list[dict[str, Any]] | None:
    if "c" not in layout.axes:
        return None
    n = layout.size("c")
    given = source.channels if source.channels and len(source.channels) == n else None
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = float(info.min), float(info.max)
    else:
        lo, hi = 0.0, 1.0
    out = []
    for k in range(n):
        ch = dict(given[k]) if given else {}
        if layout.rgb:
            ch.setdefault("label", "RGB"[k] if n == 3 else f"c{k}")
            # the input's colours where it gives them (channels="rgb" on named channels)
            ch.setdefault("color", _RGB_COLOURS[k] if n == 3 else "FFFFFF")
        else:
            ch.setdefault("label", f"c{k}")
            ch.setdefault("color", "FFFFFF")
        window = dict(ch.get("window") or {})
        window.setdefault("min", lo)
        window.setdefault("max", hi)
        window.setdefault("start", window["min"])
        window.setdefault("end", window["max"])
        ch["window"] = window
        out.append(ch)
    return out


def _multiscale_arrays(
    prefix: str, letters: str, size: dict[str, int], block: tuple[int, int], dtype: np.dtype,
    fill: Any, levels: int,
) -> list[ArraySpec]:  # fmt: skip
    out = []
    for level in range(levels + 1):
        f = 2**level
        level_size = {**size, "y": -(-size["y"] // f), "x": -(-size["x"] // f)}
        chunk = {"y": block[0], "x": block[1]}
        out.append(
            ArraySpec(
                f"{prefix}{level}",
                letters,
                tuple(level_size[a] for a in letters),
                tuple(min(chunk.get(a, 1), level_size[a]) for a in letters),
                dtype,
                fill,
            )
        )
    return out


def _level_transforms(
    scale0: list[float], shift0: list[float], letters: str, levels: int
) -> tuple[list[list[float]], list[list[float]]]:
    """Per level: y/x scale times 2^L, and the centre of the first 2^L x 2^L pixel block."""
    scales, shifts = [], []
    for level in range(levels + 1):
        f = 2**level
        scales.append([v * f if a in "yx" else v for a, v in zip(letters, scale0, strict=True)])
        shifts.append(
            [
                t + (f - 1) / 2 * v if a in "yx" else t
                for a, v, t in zip(letters, scale0, shift0, strict=True)
            ]
        )
    return scales, shifts


def output_spec(
    source: Any,
    layout: Layout,
    *,
    block: tuple[int, int],
    dtype: np.dtype,
    maps: tuple[str, ...],
    provenance: Mapping[str, Any],
    depth_unit: str | None = None,
    levels: int = 0,
) -> OutputSpec:
    """The output's groups, arrays and attributes for fusing ``source`` (nothing written).

    The root is an NGFF 0.5 multiscale image named ``"fused"``: arrays ``"0"`` (the fused
    image, axes ``layout.image_axes``: batch axes, ``c``, ``y``, ``x``, in the input's dtype)
    to ``str(levels)``, each a 2 x 2 mean of the one before, chunked like the blocks along y/x
    and 1 along the other axes. Scale, units and translation along t, y and x come from the
    source (per level, as NGFF defines them for downsampled levels), with an ``omero`` block
    for channels. Each map (``"depth"``, ``"selectivity"``, float32, NaN where undefined) is
    an NGFF multiscale image group of its own with the same levels, so that OME-Zarr readers
    open ``dst/depth`` like any image; the depth map's unit is in its ``fstack_dask``
    attributes.

    Raises
    ------
    ValueError
        If the source's metadata cannot make a valid NGFF description (a pixel size that is
        zero, negative or not finite; axes out of NGFF order).
    """
    letters = layout.image_axes
    check_ngff_order(letters)
    size = {a: layout.size(a) for a in layout.axes}
    where = source.description
    carried_scale = {a: v for a, v in source.scale.items() if a in _CARRIED}
    units = {a: u for a, u in source.units.items() if a in _CARRIED}
    shift_of = {a: float(source.translation.get(a, 0.0)) for a in _CARRIED}
    if not all(math.isfinite(v) for v in shift_of.values()):
        raise ValueError(f"the translation of {where} must be finite, got {source.translation}")

    def image(name: str, prefix: str, axes: str, dt: np.dtype, fill: Any):
        scale0 = positive_scale(carried_scale, axes, f"the scale of {where}")
        shift0 = [shift_of.get(a, 0.0) for a in axes]
        scales, shifts = _level_transforms(scale0, shift0, axes, levels)
        entry = multiscale_entry(
            name=name, letters=axes, units=units, scales=scales, translations=shifts,
            paths=[str(k) for k in range(levels + 1)],
        )  # fmt: skip
        arrays = _multiscale_arrays(prefix, axes, size, block, dt, fill, levels)
        return {"version": "0.5", "multiscales": [entry]}, arrays

    ome, arrays = image("fused", "", letters, dtype, 0)
    channels = _channels(source, layout, dtype)
    if channels is not None:
        ome["omero"] = omero_entry(channels, rgb=layout.rgb)
    # Ownership by record: the output lists what it holds of ours (levels, maps).
    entries = ["zarr.json", *(str(k) for k in range(levels + 1)), *maps]
    if provenance.get("output") == "ome-tiff":  # the working store of a TIFF dst
        entries.append(TIFF_PARTIAL)
    provenance = {**provenance, "entries": entries}
    groups = {"": {"ome": _jsonable(ome), "fstack_dask": _jsonable(provenance)}}
    for name in maps:
        map_ome, map_arrays = image(name, f"{name}/", layout.map_axes, np.dtype(np.float32),
                                    np.nan)  # fmt: skip
        about = {
            "depth": "focus position of the plane with the highest focus measure",
            "selectivity": "selectivity S in dB (Pertuz et al. 2013)",
        }[name]
        unit = depth_unit if name == "depth" else "dB"
        if channels is not None and "c" in layout.map_axes:
            # named as the fused image's channels (napari showed "Image", "Image [1]" in
            # magenta and green, bioio one name for two); windows from the data, once written
            map_ome["omero"] = omero_entry([
                {"label": ch["label"], "color": "FFFFFF",
                 "window": {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}}
                for ch in channels
            ])  # fmt: skip
        groups[name] = {
            "ome": _jsonable(map_ome),
            "fstack_dask": {"map": name, "values": about, "unit": unit},
        }
        arrays += map_arrays
    return OutputSpec(tuple(arrays), groups, levels)


def create_output(
    location: Location, spec: OutputSpec, extra: Mapping[str, Any] | None = None
) -> Any:
    """Write the (empty) output groups and arrays described by ``spec`` into ``location``.

    ``location`` must be a folder the caller owns (created by this run, or an empty folder
    it claimed). The root's provenance attribute (with ``extra``: the run's id, the source's
    identity) is written last: a group that has it is complete as a structure, even if the
    process creating it was killed. Each group's ``ome`` waits in its private attribute
    until :func:`publish`.
    """
    import zarr

    def pending(attrs: Mapping[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
        return {"fstack_dask": {**attrs["fstack_dask"], **more, PENDING: attrs["ome"]}}

    extra = _jsonable(dict(extra or {}))
    root = zarr.create_group(store=location.zarr_store(read_only=False), zarr_format=3)
    for path, group_attrs in spec.groups.items():
        if path:
            root.create_group(path, attributes=pending(group_attrs, {}))
    for a in spec.arrays:
        root.create_array(
            name=a.path,
            shape=a.shape,
            dtype=a.dtype,
            chunks=a.chunks,
            shards=None,
            fill_value=a.fill_value,
            dimension_names=list(a.axes),
        )
    root.attrs.update(pending(spec.groups[""], extra))
    return root


def ngff_metadata(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A group's NGFF 0.5 ``ome`` attribute: published, or waiting in our private attribute
    (an unfinished output); ``{}`` where it has neither."""
    ome = attrs.get("ome")
    if ome is None:
        ome = (attrs.get("fstack_dask") or {}).get(PENDING)
    return dict(ome) if isinstance(ome, Mapping) else {}


def set_ngff_metadata(group: Any, ome: Mapping[str, Any]) -> None:
    """Rewrite a group's ``ome`` where it is: published, or still waiting (unfinished)."""
    attrs = group.attrs.asdict()
    if "ome" in attrs or PENDING not in (attrs.get("fstack_dask") or {}):
        group.attrs["ome"] = dict(ome)
    else:
        group.attrs["fstack_dask"] = {**attrs["fstack_dask"], PENDING: dict(ome)}


def publish(location: Location) -> None:
    """The run's last write: each map group's NGFF metadata, then the root's with
    ``complete: true``, each group in one atomic rewrite of its ``zarr.json``. A kill
    between them leaves the root no image; a resume publishes again (idempotent). An output
    begun before 2026-12-06 has its ``ome`` already, and is only marked complete."""
    import zarr

    root = zarr.open_group(store=location.zarr_store(read_only=False), mode="r+")
    for path in [*(m for m in MAPS if m in root), ""]:
        group = root[path] if path else root
        attrs = group.attrs.asdict()
        ours = dict(attrs.get("fstack_dask") or {})
        update: dict[str, Any] = {}
        if PENDING in ours:
            update["ome"] = ours.pop(PENDING)
        if not path:
            ours["complete"] = True
        if update or not path:
            group.attrs.update({**update, "fstack_dask": ours})
    if location.is_local:  # "complete" on disk, and dst's own name in its folder: a power cut
        # after it could lose a new dst's entry (ext4 without dirsync), its state folder gone
        make_durable(location, [f"{m}/zarr.json" for m in MAPS if m in root] + ["zarr.json"])
        fsync_dir(os.path.dirname(location.path.rstrip(os.sep)) or os.sep)


def open_output(location: Location, *, mode: str = "r+") -> Any:
    import zarr

    return zarr.open_group(store=location.zarr_store(read_only=mode == "r"), mode=mode)


def write_block(
    arrays: Mapping[str, Any], regions: Mapping[str, tuple[slice, ...]], data: Mapping[str, Any]
) -> list[str]:
    """Write each array's region; return the chunk keys written (for :func:`make_durable`)."""
    keys = []
    for name, values in data.items():
        array = arrays[name]
        region = regions[name]
        array[region] = values
        ranges = [
            range(s.start // c, (s.stop - 1) // c + 1)
            for s, c in zip(region, array.chunks, strict=True)
        ]
        for index in np.ndindex(*(len(r) for r in ranges)):
            coords = tuple(r[i] for r, i in zip(ranges, index, strict=True))
            keys.append(f"{array.path}/{array.metadata.encode_chunk_key(coords)}")
    return keys


def make_durable(
    location: Location, keys: list[str], sizes: list[int] | None = None
) -> list[str] | None:
    """fsync the written chunk files, their folders and those above them up to ``location``
    (local filesystems only); returns the keys stored (None where not known: an object
    store), and appends their sizes to ``sizes`` (taken from the open file: the done-marker
    records them without a stat each).

    Object stores make a write durable when the request returns; on a local filesystem a
    power cut could otherwise leave a done-marker on disk whose chunk files were still in
    the page cache.
    """
    if not location.is_local:
        return None
    folders, stored = set(), []
    for key in keys:
        path = os.path.join(location.path, *key.split("/"))
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # an all-fill chunk zarr chose not to store
        try:
            os.fsync(fd)
            if sizes is not None:
                sizes.append(os.fstat(fd).st_size)
        finally:
            os.close(fd)
        folders.add(os.path.dirname(path))
        stored.append(key)
    for folder in folders:
        fsync_dir(folder)
    _sync_new_folders(location.path, folders)
    return stored


#: (device, inode) of a chunk folder, its parent's inode and ctime when this process synced the
#: parent: the folder's name is durable while the parent has not changed since
_NAMED: set[tuple[int, int, int, int]] = set()
# A ctime within this of now may not show a change made in the same tick: the kernel's coarse
# clock (a few ms); on filesystems keeping whole seconds (ext4 of 128-byte inodes, ext3, FAT,
# some NFS servers), its second (git's "racily clean" files)
_TICK_NS, _SECONDS_NS = 20_000_000, 2_000_000_000


def _sync_new_folders(root: str, folders: set[str]) -> None:
    """fsync the parent of each folder between a chunk's folder and ``root`` (``0/c/3`` in
    ``0/c``, ``0/c`` in ``0``): zarr creates them as it writes a chunk, and a folder's fsync
    does not make its own name durable, so a power cut could take ``0/c/3`` with the chunk
    files inside it, their done-marker kept. A parent unchanged since this process synced it
    with the folder in it is not synced again (a folder removed and made again changes it)."""
    root = root.rstrip(os.sep) or os.sep
    parents, named = set(), set()
    for folder in folders:
        while folder != root and folder.startswith(root + os.sep):
            parent = os.path.dirname(folder)
            try:
                mine, theirs = os.stat(folder), os.stat(parent)
            except OSError:
                break
            key = (mine.st_dev, mine.st_ino, theirs.st_ino, theirs.st_ctime_ns)
            if key not in _NAMED:
                parents.add(parent)
                if _settled(theirs.st_ctime_ns):
                    named.add(key)
            folder = parent
    for parent in sorted(parents, key=len, reverse=True):  # the deepest first
        fsync_dir(parent)
    if len(_NAMED) > 1 << 16:  # (a long-lived service: syncing again costs only time)
        _NAMED.clear()
    _NAMED.update(named)  # only once synced: another thread's block may rely on them then


# What a filesystem that cannot fsync a folder answers (a FUSE driver, a network filesystem)
_NO_FOLDER_SYNC = frozenset(
    getattr(errno, name)
    for name in ("EINVAL", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "EBADF")
    if hasattr(errno, name)
)


def _settled(ctime_ns: int) -> bool:
    """Whether a parent's ctime is older than its timestamp's granularity, so that any later
    change of it shows in its ctime: within it, a folder removed and made again, its inode
    reused (a run into a dst made anew), kept the ctime the cache had, and its new name was
    not synced (found reviewing the cache)."""
    tick = _SECONDS_NS if ctime_ns % 1_000_000_000 == 0 else _TICK_NS
    return time.time_ns() - ctime_ns > tick


def fsync_dir(path: str) -> None:
    """fsync the folder ``path`` (the names in it). Where the filesystem cannot sync a folder
    this is a no-op; any other failure (EIO: what the folder held may be lost) is raised,
    failing the step that needed it durable (it was ignored)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_FOLDER_SYNC:
            raise OSError(exc.errno, exc.strerror, path) from None  # (naming the folder)
    finally:
        os.close(fd)
