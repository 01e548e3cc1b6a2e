"""The pyramidal OME-TIFF output: a finished OME-Zarr working store converted tile by tile.

A run into ``fused.ome.tif`` fuses into a hidden OME-Zarr working store beside it (the
resumable, lease-locked machinery of every run), then :func:`write_tiff` converts that store
into a temporary TIFF inside it (an entry its record lists, :data:`PARTIAL`), and
:func:`place_tiff` moves the finished file into place. The TIFF holds exactly the working
store's arrays: a tiled BigTIFF, one page per image plane (batch index and channel) with the
pyramid's levels as its SubIFDs, the same 2 x 2 means as the OME-Zarr levels; the depth and
selectivity maps follow as images of their own. The OME-XML carries the physical pixel sizes,
the channels' names and colours, and our provenance (a ``CommentAnnotation`` in the
:data:`NAMESPACE` namespace) naming the output's id, which the first page's private tag
:data:`ID_TAG` holds too: that is how a later run knows the file is ours. Ownership is by
record, never by name, and a TIFF without both (a user's TIFF saved with our OME-XML copied
into it) is never replaced.

Tiles are read from the store one tile row of one chunk at a time (a chunk is decoded once
per tile row it holds), so memory is bounded by a chunk, whatever the image's size.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .._locations import Location
from .._ngff import OME_LENGTHS, OME_TIMES
from .folders import RENAME_EXCHANGE, RENAME_NOREPLACE, renameat2, take_on_looks
from .ownership import METHOD
from .pyramid import n_levels
from .write import PENDING, TIFF_PARTIAL, fsync_dir, ngff_metadata, open_output

__all__ = [
    "NAMESPACE",
    "PARTIAL",
    "PREVIOUS",
    "TILE",
    "dropped_sizes",
    "is_claim",
    "place_tiff",
    "previous_fate",
    "previous_left",
    "settle_previous",
    "tiff_levels",
    "tiff_owner",
    "write_tiff",
]

TILE = 512  # px: what slide viewers read; QuPath's and bfconvert's default
PARTIAL = TIFF_PARTIAL  # the TIFF being written, inside the working store
# Where an overwrite without an atomic exchange moves what is at dst (:func:`_replace_ours`)
PREVIOUS = f"{PARTIAL}.previous"
NAMESPACE = "fstack_dask/provenance"
#: A private TIFF tag (in the range TIFF 6.0 leaves free for reuse) holding the output's id on
#: the first page, for the provenance to name: OME writers copy the OME-XML, not such tags.
ID_TAG = 65117
COMPRESSION = "zlib"  # lossless, read by libtiff (OpenSlide), Bio-Formats, tifffile
# OME-XML pixel types: 64-bit integers and float16 have none.
TIFF_DTYPES = frozenset("uint8 uint16 uint32 int8 int16 int32 float32 float64".split())
_OME_AXES = {"t": "T", "c": "C", "y": "Y", "x": "X"}
# What XML 1.0 cannot hold, even escaped: control characters, lone surrogates, U+FFFE/FFFF.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def tiff_levels(shape_yx: tuple[int, int]) -> int:
    """Levels beyond full resolution until the image fits in one tile."""
    return n_levels(shape_yx, (TILE, TILE))


def tiff_owner(path: str) -> dict[str, Any] | None:
    """Our provenance in the TIFF at ``path`` (it is ours), or None (not a TIFF, or not one
    fstack_dask wrote)."""
    import logging
    import xml.etree.ElementTree as ET

    import tifffile

    quiet = logging.getLogger("tifffile")
    was = quiet.disabled
    quiet.disabled = True  # tifffile logs what it finds wrong with a file that is not ours
    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.pages.first.description if tif.pages else ""
            tag = tif.pages.first.tags.get(ID_TAG) if tif.pages else None
            tagged = tag.value if tag is not None else None
    except Exception:  # not a TIFF, truncated, unreadable: not ours
        return None
    finally:
        quiet.disabled = was
    if "<OME" not in xml[:2000] or NAMESPACE not in xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("CommentAnnotation") and element.get("Namespace") == NAMESPACE:
            value = next((e.text for e in element if e.tag.endswith("Value")), None)
            try:
                record = json.loads(value or "")
            except (ValueError, RecursionError):  # (nested 100000 deep: not ours)
                return None
            if isinstance(record, dict) and record.get("method") == METHOD:
                # OME-XML copied into a user's TIFF (bioio, Bio-Formats keep annotations) comes
                # without our private tag; a TIFF from before ids has neither
                copied = "output_id" in record and not (
                    isinstance(tagged, str) and tagged and tagged == record["output_id"]
                )
                return None if copied else record
    return None


def check_tiff_output(dtype: np.dtype, image_axes: str, where: str) -> None:
    """Refuse, before anything is written, what an OME-TIFF cannot hold.

    Raises
    ------
    ValueError
        For a dtype without an OME pixel type, or an axis besides t, c, y and x.
    """
    if np.dtype(dtype).name not in TIFF_DTYPES:
        raise ValueError(
            f"{where}: an OME-TIFF cannot hold dtype {np.dtype(dtype).name} (OME-XML has no "
            "such pixel type); write an OME-Zarr dst (.ome.zarr) instead"
        )
    extra = [a for a in image_axes if a not in _OME_AXES]
    if extra:
        raise ValueError(
            f"{where}: the fused image has axes {image_axes!r}, and an OME-TIFF dst holds only "
            f"t, c, y and x (not {extra[0]!r}); write an OME-Zarr dst (.ome.zarr) instead"
        )


def write_tiff(
    store: Location, path: str, *, check: Callable[[], None] | None = None, maxworkers: int = 2
) -> None:
    """Write the complete OME-Zarr output at ``store`` into a pyramidal OME-TIFF at ``path``
    and make it durable (fsync).

    ``check`` runs before each image and at the end (the run's lease: a run whose lock was
    taken over writes nothing more).
    """
    import tifffile

    group = open_output(store, mode="r")
    provenance = dict(group.attrs["fstack_dask"])
    provenance.pop(PENDING, None)  # the store's NGFF metadata, not yet published: not a record
    provenance["complete"] = True
    provenance["format"] = "ome-tiff"
    record = json.dumps(provenance, separators=(",", ":"), allow_nan=False)
    rgb = provenance.get("channels") == "rgb"
    images = [("", "fused")] + [(m, m) for m in ("depth", "selectivity") if m in group]
    # a map's channels are the fused image's: named alike (Bio-Formats showed them unnamed)
    fused_channels = (ngff_metadata(group.attrs.asdict()).get("omero") or {}).get("channels")
    # A file left at ``path`` is unlinked, not rewritten in place: after an overwrite killed
    # right after its exchange it is the previous TIFF, whose inode a user's hard-linked
    # backup may share (a third adversarial run, 2026-12-05).
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for k, (name, label) in enumerate(images):
            if check is not None:
                check()
            node = group[name] if name else group
            meta = _ome_metadata(node, label, rgb=rgb and not name,
                                 channels=fused_channels if name else None)  # fmt: skip
            tags = []
            if k == 0:
                meta["CommentAnnotation"] = {"Namespace": NAMESPACE, "Value": record}
                # not tifffile's uuid1 (this moment and this host's MAC): two runs of one job
                # write the same bytes, as into OME-Zarr (the only bytes that differed)
                meta["UUID"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{NAMESPACE}:{record}"))
                if provenance.get("output_id"):
                    tags = [(ID_TAG, "s", 0, provenance["output_id"], True)]
            _write_image(tif, node, meta, rgb=rgb and not name, maxworkers=maxworkers, tags=tags)
    if check is not None:
        check()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ome_metadata(
    node: Any, label: str, *, rgb: bool, channels: list | None = None
) -> dict[str, Any]:
    """tifffile's OME metadata of one multiscale image: axes, pixel sizes, channels (a map's:
    the names of the fused image's ``channels``), and what a map's values are."""
    attrs = node.attrs.asdict()
    ome = ngff_metadata(attrs)
    multiscale = ome["multiscales"][0]
    axes = [a["name"] for a in multiscale["axes"]]
    scale = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"]
    units = {a["name"]: a.get("unit") for a in multiscale["axes"]}
    meta: dict[str, Any] = {
        "axes": "".join(_OME_AXES[a] for a in axes if not (rgb and a == "c"))
        + ("S" if rgb else ""),
        "Name": label,
    }
    for a, size in zip(axes, scale, strict=True):
        unit = _OME_UNITS.get(units.get(a) or "")
        if a in "yx" and unit is not None:
            meta[f"PhysicalSize{a.upper()}"] = float(size)
            meta[f"PhysicalSize{a.upper()}Unit"] = unit
        elif a == "t" and units.get(a) in OME_TIMES:
            meta["TimeIncrement"] = float(size)
            meta["TimeIncrementUnit"] = OME_TIMES[units[a]]
    meta.update(_positions(node, axes, units, rgb=rgb))
    about = attrs.get("fstack_dask") or {}
    if about.get("map"):  # what its values are, kept in the map's Zarr attributes
        unit = about.get("unit")
        values = str(about.get("values"))
        meta["Description"] = values + (f", in {unit}" if unit and unit not in values else "")
    named = channels is not None  # a map's: names only, its values are not the fused image's
    if channels is None:
        channels = (ome.get("omero") or {}).get("channels") or []
    elif "c" not in axes or len(channels) != node["0"].shape[axes.index("c")]:
        channels = []
    if channels and not rgb and "c" in axes:
        # a source's channel name (an OME-Zarr label, a vendor file's name) may hold any
        # character; one XML cannot hold made the whole OME-XML unreadable (an adversarial run
        # on names, 2026-12-06): replaced, as a decoder shows a byte it cannot read
        names = [str(c.get("label", f"c{i}")) for i, c in enumerate(channels)]
        meta["Channel"] = {"Name": [_NOT_XML.sub("\ufffd", name) for name in names]}
        if not named:
            meta["Channel"]["Color"] = [_ome_colour(c.get("color")) for c in channels]
    return meta


def _positions(node: Any, axes: list[str], units: dict, *, rgb: bool) -> dict[str, Any]:
    """OME's Plane PositionX/PositionY of every plane: the image's translation in y and x (the
    stage position a source recorded), where those axes have length units."""
    dataset = ngff_metadata(node.attrs.asdict())["multiscales"][0]["datasets"][0]
    transforms = dataset["coordinateTransformations"]
    shift = next((t["translation"] for t in transforms if t["type"] == "translation"), None)
    shift = dict(zip(axes, shift or (), strict=False))
    if not any(shift.get(a) for a in "yx"):  # none recorded (0 is NGFF's default)
        return {}
    planes = math.prod(n for a, n in zip(axes, node["0"].shape, strict=True)
                       if a not in "yx" and not (rgb and a == "c"))  # fmt: skip
    out: dict[str, list] = {}
    for a in "xy":
        unit = _OME_UNITS.get(units.get(a) or "")
        if unit is None:
            return {}
        out[f"Position{a.upper()}"] = [float(shift[a])] * planes
        out[f"Position{a.upper()}Unit"] = [unit] * planes
    return {"Plane": out}


def _ome_colour(hex_rgb: Any) -> int:
    """``"RRGGBB"`` as OME's signed 32-bit RGBA integer (opaque)."""
    try:
        value = (int(str(hex_rgb), 16) << 8) | 0xFF
    except ValueError:
        value = 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


_OME_UNITS = {name: symbol for name, (symbol, _) in OME_LENGTHS.items()}


def dropped_sizes(scale: dict[str, float], units: dict[str, str]) -> str | None:
    """What an OME-TIFF leaves out of a source's y/x pixel sizes, said before the run: one in
    a unit OME has no symbol for ('furlong' of an OME-Zarr) or in none was dropped in silence
    an OME-Zarr dst keeps the number."""
    lost = [
        a
        for a in "yx"
        if a in scale and units.get(a) not in _OME_UNITS and (units.get(a) or scale[a] != 1)
    ]  # (a scale of 1 without a unit is NGFF's "none stated")
    if not lost:
        return None
    said = ", ".join(f"{a} {scale[a]:g} {units.get(a) or '(no unit)'}" for a in lost)
    return (
        f"the OME-TIFF gets no pixel size ({', '.join(f'PhysicalSize{a.upper()}' for a in lost)}"
        f"): the source's ({said}) is in no OME length unit; an OME-Zarr dst keeps the number"
    )


def _resolution(node: Any, level: int) -> dict[str, Any]:
    """tifffile's resolution options for one level: pixels per centimetre in x and y where
    their pixel sizes are lengths (readers of plain TIFF tags, such as OpenSlide's and
    tiffslide's, see no pixel size otherwise), else none."""
    multiscale = ngff_metadata(node.attrs.asdict())["multiscales"][0]
    axes = [a["name"] for a in multiscale["axes"]]
    units = {a["name"]: a.get("unit") for a in multiscale["axes"]}
    transforms = multiscale["datasets"][level]["coordinateTransformations"]
    scale = dict(zip(axes, transforms[0]["scale"], strict=True))
    per_cm = []
    for a in "xy":
        length = OME_LENGTHS.get(units.get(a) or "")
        if length is None or not 0 < float(scale[a]) < float("inf"):
            return {}
        per_cm.append(1e-2 / (float(scale[a]) * length[1]))
    if not all(1e-6 <= v <= 2**31 for v in per_cm):  # beyond what a TIFF rational holds
        return {}
    return {"resolution": tuple(per_cm), "resolutionunit": "CENTIMETER"}


def _write_image(
    tif: Any, node: Any, meta: dict[str, Any], *, rgb: bool, maxworkers: int, tags: list
) -> None:
    """One multiscale image: level 0 as pages (the first with ``tags``), the other levels as
    their SubIFDs."""
    n = 0
    while str(n + 1) in node:
        n += 1
    for level in range(n + 1):
        array = node[str(level)]
        shape = tuple(array.shape)
        if rgb:  # ours: [t] c y x; the TIFF's: [t] y x samples
            shape = shape[:-3] + shape[-2:] + (shape[-3],)
        options = dict(
            shape=shape, dtype=array.dtype, tile=(TILE, TILE), compression=COMPRESSION,
            photometric="rgb" if rgb else "minisblack", maxworkers=maxworkers,
            **_resolution(node, level),
        )  # fmt: skip
        if level == 0:
            tif.write(_tiles(array, rgb=rgb), subifds=n, metadata=meta, extratags=tags,
                      software="fstack_dask", **options)  # fmt: skip
        else:
            tif.write(_tiles(array, rgb=rgb), subfiletype=1, metadata=None, **options)


def _tiles(array: Any, *, rgb: bool) -> Iterator[np.ndarray]:
    """Every tile of every plane, in the TIFF's order (plane by plane, rows of tiles), read
    one tile row of one chunk at a time."""
    lead = array.shape[:-3] if rgb else array.shape[:-2]
    ny, nx = array.shape[-2:]
    chunk_x = max(TILE, array.chunks[-1] // TILE * TILE)  # whole tiles per read
    for index in np.ndindex(*lead):
        for y0 in range(0, ny, TILE):
            for cx in range(0, nx, chunk_x):
                part = np.asarray(array[(*index, ..., slice(y0, y0 + TILE),
                                         slice(cx, cx + chunk_x))])  # fmt: skip
                if rgb:
                    part = np.moveaxis(part, 0, -1)
                for x0 in range(0, part.shape[1], TILE):
                    yield np.ascontiguousarray(part[:, x0 : x0 + TILE])


# ------------------------------------------------------------------------ into place


def place_tiff(partial: str, dst: str, *, where: str) -> None:
    """Move the finished TIFF ``partial`` to ``dst`` (same filesystem), never over what is
    not ours.

    ``dst`` absent: moved only if nothing appeared there meanwhile (``RENAME_NOREPLACE``, or a
    hard link, which fails on an existing name). ``dst`` ours: exchanged with the new file
    atomically and checked to be ours once more, swapped back if it is not (where the
    filesystem cannot exchange: :func:`_replace_ours`). ``dst`` the
    claim of a run that stopped at the move (:func:`is_claim`): moved over.

    Raises
    ------
    FileExistsError
        If ``dst`` appeared meanwhile, or is no longer a TIFF fstack_dask wrote.
    """
    parent = os.path.dirname(dst)
    if is_claim(dst, os.path.dirname(partial)):  # ours, left by a run that stopped at the move
        os.replace(partial, dst)
    elif not os.path.lexists(dst):
        try:
            if not renameat2(partial, dst, RENAME_NOREPLACE):
                _link_or_claim(partial, dst)
        except FileExistsError:
            raise FileExistsError(
                f"{where} appeared while this run wrote it; refusing to replace it (the new "
                "TIFF is kept in the working store: rerun with resume=True once dst is moved)"
            ) from None
    else:
        if tiff_owner(dst) is None:
            raise FileExistsError(_not_ours(where))
        take_on_looks(partial, dst)  # a TIFF kept private (600) stays so
        if renameat2(partial, dst, RENAME_EXCHANGE):
            if tiff_owner(partial) is None:  # replaced meanwhile by a user's file: undo
                renameat2(partial, dst, RENAME_EXCHANGE)
                raise FileExistsError(_not_ours(where))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)  # the previous output, now in the working store
        else:
            _replace_ours(partial, dst, where)
    fsync_dir(parent)


def _replace_ours(partial: str, dst: str, where: str) -> None:
    """Replace our TIFF at ``dst`` by ``partial`` where the filesystem cannot exchange them
    (exFAT, NFS, Lustre): what is at ``dst`` now is moved aside into the working store and
    checked there, so that a file a user saved at ``dst`` since it was checked goes back to
    ``dst`` (os.replace over it lost it). A run killed meanwhile leaves the previous TIFF in
    the working store, ``dst`` absent or the new TIFF: :func:`settle_previous`."""
    aside = os.path.join(os.path.dirname(partial), PREVIOUS)
    try:  # never over a file kept there: a user's, saved at dst as an earlier run replaced it
        if not renameat2(dst, aside, RENAME_NOREPLACE):
            _link_or_claim(dst, aside)
    except FileExistsError:
        raise FileExistsError(
            f"{where} was not replaced: its working folder holds {aside!r}, which an earlier "
            "run kept there (a file saved at dst as it replaced it); move it out, then rerun "
            "with resume=True"
        ) from None
    if tiff_owner(aside) is None:
        try:
            _link_or_claim(aside, dst)  # back, never over a file that took dst meanwhile
        except FileExistsError:
            raise FileExistsError(
                f"{_not_ours(where)}; a file saved there while this run replaced it is kept "
                f"as {aside!r}"
            ) from None
        raise FileExistsError(_not_ours(where))
    try:
        _link_or_claim(partial, dst)
    except FileExistsError:
        raise FileExistsError(
            f"{where} appeared while this run replaced it; refusing to replace it (the new "
            f"TIFF is kept in the working store, the previous one as {aside!r}: rerun with "
            "resume=True once dst is moved)"
        ) from None
    os.unlink(aside)


def previous_left(work: str) -> str | None:
    """The previous TIFF that an overwrite without an exchange, killed between its two moves
    (or before removing it), left in the working store ``work``: its path where it is a TIFF
    we wrote (a user's file put back from dst is not: it is left where it is), else None."""
    aside = os.path.join(work, PREVIOUS)
    if os.path.islink(aside) or not os.path.isfile(aside) or tiff_owner(aside) is None:
        return None
    return aside


def previous_fate(work: str, dst: str, new_id: Any) -> str | None:
    """What :func:`settle_previous` does with the previous TIFF left in ``work``: "restore"
    where ``dst`` is missing (or the claim of this store's TIFF), "remove" where ``dst`` is
    the new output (the id ``new_id`` of the working store's), None where there is none to
    settle or ``dst`` holds another file (the previous one is then kept where it is)."""
    if previous_left(work) is None:
        return None
    if not os.path.lexists(dst) or is_claim(dst, work):
        return "restore"
    owner = tiff_owner(dst) if os.path.isfile(dst) and not os.path.islink(dst) else None
    if new_id and owner is not None and owner.get("output_id") == new_id:
        return "remove"
    return None


def settle_previous(work: str, dst: str, new_id: Any) -> str | None:
    """Under the working store's lock: the previous TIFF an overwrite without an exchange left
    in ``work`` goes back to the missing ``dst`` (never over a file that took its name
    meanwhile), or is removed where ``dst`` holds the new output; returns what was done, as
    :func:`previous_fate` says. (It was kept there as a file fstack_dask did not write: dst
    missing, every later overwrite refused, the old TIFF recoverable only by hand.)"""
    fate = previous_fate(work, dst, new_id)
    aside = os.path.join(work, PREVIOUS)
    if fate == "remove":
        os.unlink(aside)
    elif fate == "restore" and is_claim(dst, work):
        os.replace(aside, dst)  # the claim of this store's TIFF: ours
    elif fate == "restore":
        try:
            if not renameat2(aside, dst, RENAME_NOREPLACE):
                _link_or_claim(aside, dst)
        except FileExistsError:
            return None  # a file took dst meanwhile: judged as dst by the run
    if fate is not None:
        fsync_dir(os.path.dirname(dst))
        fsync_dir(work)
    return fate


def _link_or_claim(partial: str, dst: str) -> None:
    """Move ``partial`` to the absent ``dst``, failing with FileExistsError where it appeared
    meanwhile: a hard link; where the filesystem has none (FAT and exFAT, the USB drives and
    SD cards of microscopes: every TIFF there failed with "Operation not permitted"), the
    name claimed exclusively and the TIFF moved over the claim, as the lock
    does."""
    try:
        os.link(partial, dst)  # fails if dst appeared meanwhile
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS):
            raise
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # as the umask says
        made = os.fstat(fd)
        try:
            try:  # (an empty claim, left by a run killed at the move, refused its --resume
                # as a file fstack_dask did not write)
                os.write(fd, _claim_text(os.path.dirname(partial)))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(partial, dst)
        except BaseException:  # (an I/O error at the move left the claim, refusing a resume;
            # so did a full drive at the claim's write, an empty claim)
            with contextlib.suppress(OSError):
                if is_claim(dst, os.path.dirname(partial)) or os.path.samestat(made, os.lstat(dst)):
                    os.unlink(dst)
            raise
        return
    os.unlink(partial)


def _claim_text(work: str) -> bytes:
    return f"fstack_dask: this name is claimed for the TIFF in {os.path.basename(work)}\n".encode()


def is_claim(dst: str, work: str) -> bool:
    """Whether ``dst`` is the claim :func:`_link_or_claim` made for the TIFF of the working
    store ``work``: ours, to be moved over (a run stopped between the claim and the move)."""
    text = _claim_text(work)
    try:
        if not os.path.isfile(dst) or os.path.islink(dst) or os.path.getsize(dst) > 4 * len(text):
            return False
        with open(dst, "rb") as fh:
            held = fh.read(4 * len(text) + 1)
    except OSError:
        return False
    # in any case: FAT and exFAT are case-insensitive, and a resume spelling dst "OUT.tif"
    # was refused the claim of "out.tif" as a file fstack_dask did not write
    return held.decode("utf-8", "replace").casefold() == text.decode().casefold()


def _not_ours(where: str) -> str:
    return (
        f"{where} exists and is not a TIFF fstack_dask wrote; refusing to replace it (only "
        "fstack_dask outputs are ever replaced): choose another dst"
    )
