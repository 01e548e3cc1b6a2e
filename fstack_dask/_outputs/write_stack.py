"""Storing a focus stack held in memory as an OME-Zarr image, for fusing it out of core."""

from __future__ import annotations

import itertools
import math
import operator
import os
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from .._locations import reach, remove_tree, resolve
from .._ngff import (
    SPACE_UNITS,
    TIME_UNITS,
    WRITE_STACK_UNFINISHED,
    check_ngff_order,
    multiscale_entry,
    positive_scale,
)
from .._params import check_dtype, check_plain_array, parse_axes
from .._public import public
from .destination_checks import IMAGE_SUFFIXES

__all__ = ["write_stack"]


@public
def write_stack(
    path: str | os.PathLike[str],
    stack: Any,
    *,
    axes: str,
    chunks: tuple[int, ...] | None = None,
    scale: Mapping[str, float] | None = None,
    units: Mapping[str, str] | None = None,
    translation: Mapping[str, float] | None = None,
    zarr_format: Literal[2, 3] = 3,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Save a focus stack as a single-level OME-Zarr image group.

    Writes OME-NGFF 0.5 (Zarr v3, with ``dimension_names``) for ``zarr_format=3``, or
    OME-NGFF 0.4 (Zarr v2, ``"/"`` chunk keys and ``_ARRAY_DIMENSIONS``) for
    ``zarr_format=2``; the image is array ``"0"``. Use it to store an in-memory stack (or
    one read with another library) so that :func:`fuse_zarr` can fuse it out of core (the
    selective fusion of Pertuz et al. [1]_).

    Parameters
    ----------
    path : str or os.PathLike
        Local path or fsspec URL of the new group; must not exist (a local one is created
        exclusively: of two calls into one path, the second is refused and the first's store
        kept whole).
    stack : array_like
        The data, one dimension per letter of ``axes`` (a ``zarr.Array`` or an h5py dataset
        is read a few stored chunks at a time, a dask array computed chunk by chunk). A source
        whose chunks each span more than two of ``chunks`` (a plane a chunk, the usual
        layout, into the default chunks of all planes) is rechunked in two passes through a
        temporary uncompressed array inside ``path`` (removed once written, or with ``path``
        after a failure): each source chunk is read once, the time is linear in the voxels,
        and the memory is a source chunk and a chunk of ``chunks`` (about three copies of
        each) per thread, never the stack; the disk needs the stack once more, uncompressed,
        while it runs. (A dask array whose chunks are only cut into smaller ones, gathering
        none, is written in one pass, without that temporary.)
    axes : str
        Axes of ``stack`` in NGFF order ``[t][c]zyx`` (e.g. ``"zyx"``, ``"czyx"``).
    chunks : tuple of int, optional
        Chunk shape; default all planes and channels together, up to 512 along y and x,
        1 along t.
    scale, units, translation : mapping, optional
        Pixel size, unit (e.g. ``{"z": "micrometer"}``) and offset per axis letter.
    zarr_format : {3, 2}
        3 writes OME-NGFF 0.5, 2 writes OME-NGFF 0.4.
    storage_options : dict, optional
        fsspec options for a URL ``path``.

    Raises
    ------
    FileExistsError
        If ``path`` already exists.
    ValueError
        If ``axes``, ``chunks``, ``scale`` or ``zarr_format`` are invalid.

    References
    ----------
    .. [1] S. Pertuz, D. Puig, M. A. Garcia and A. Fusiello, "Generation of
       all-in-focus images by noise-robust selective fusion of limited
       depth-of-field images", IEEE Trans. Image Process. 22(3):1242-1251,
       2013. doi:10.1109/TIP.2012.2231087

    Examples
    --------
    >>> import tempfile, pathlib, zarr
    >>> from fstack_dask import synthetic_stack, write_stack
    >>> data = synthetic_stack((64, 48), 5, seed=0).stack.transpose(2, 0, 1)  # (z, y, x)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "stack.ome.zarr"
    >>> write_stack(path, data, axes="zyx", scale={"z": 2.0, "y": 0.5, "x": 0.5})
    >>> zarr.open_array(str(path / "0")).shape
    (5, 64, 48)
    """
    # what a fusion would refuse later, refused before anything is written (a ninth run)
    check_plain_array(stack, "stack")
    # (getattr's default is evaluated first: np.asarray computed a whole dask stack in memory)
    check_dtype(stack.dtype if hasattr(stack, "dtype") else np.asarray(stack).dtype, "stack")
    data = stack if hasattr(stack, "dask") or _stored(stack) else np.asarray(stack)
    ax = parse_axes(axes, data.ndim)
    if 0 in data.shape:  # (it blamed chunks, which the user did not give: a ninth run)
        raise ValueError(f"stack must not have an empty axis, got shape {data.shape}")
    check_ngff_order(ax)
    zarr_format = _zarr_format(zarr_format)
    for name, value, what in (
        ("scale", scale, "by axis letter"), ("units", units, "by axis letter"),
        ("translation", translation, "by axis letter"),
        ("storage_options", storage_options, "of fsspec options"),
    ):  # fmt: skip
        if value is not None and not isinstance(value, Mapping):  # (0, [] or "" was none)
            raise TypeError(f"{name} must be a dict {what} or None, got {value!r}")
    chunks = _chunks(chunks, ax, data.shape)
    scale_vec = positive_scale(_reals(scale, ax, "scale"), ax, "scale")
    shift = _reals(translation, ax, "translation")
    shift_vec = [shift.get(a, 0.0) for a in ax]
    units = _units(units, ax)
    location = _new_store(path, storage_options)
    multiscale = multiscale_entry(
        name="image", letters=ax, units=units, scales=[scale_vec],
        translations=[shift_vec], paths=["0"],
    )  # fmt: skip
    if zarr_format == 3:
        attrs: dict[str, Any] = {"ome": {"version": "0.5", "multiscales": [multiscale]}}
        array_kwargs: dict[str, Any] = {"dimension_names": list(ax)}
    else:
        attrs = {"multiscales": [{"version": "0.4", **multiscale}]}
        # NGFF 0.4 requires "/" chunk keys; _ARRAY_DIMENSIONS helps xarray.
        array_kwargs = {
            "chunk_key_encoding": {"name": "v2", "separator": "/"},
            "attributes": {"_ARRAY_DIMENSIONS": list(ax)},
        }
    began = _claim(location, zarr_format)
    try:
        group = _create_group(location, zarr_format, claimed=began)
        began = True
        array = group.create_array(name="0", shape=data.shape, dtype=data.dtype, chunks=chunks,
                                   config=_EVERY_CHUNK, **array_kwargs)  # fmt: skip
        _write(data, array, chunks, group)
        if REHEARSAL in group:  # (the two-pass rechunk's)
            remove_tree(location.child(REHEARSAL), owned=lambda loc: None)
        # last, as ome-zarr-py: a store a kill cut short is no image, and says it is unfinished
        group.attrs.put(attrs)
    except BaseException:
        # this call created the store: a half-written one would refuse the retry (only what
        # this call began: another writer's store, begun since the check, removed with it)
        try:
            if began:
                remove_tree(location, owned=lambda loc: None)
        except Exception:  # (what is left, the error below says nothing of)
            pass
        raise


def _zarr_format(zarr_format: Any) -> int:
    """2 or 3 as an int: np.int64(3) failed in zarr's JSON after the folder was made (left
    behind, empty); 3.0 was taken for 3 (a float for an int; a sweep of contract 4)."""
    if not isinstance(zarr_format, (int, np.integer)) or isinstance(zarr_format, (bool, np.bool_)):
        raise TypeError(f"zarr_format must be 2 (OME-NGFF 0.4) or 3 (0.5), got {zarr_format!r} "
                        f"({type(zarr_format).__name__})")  # a wrong type  # fmt: skip
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 (OME-NGFF 0.4) or 3 (0.5), got {zarr_format!r}")
    return 3 if zarr_format == 3 else 2


def _stored(stack: Any) -> bool:
    """A stored array (a ``zarr.Array``, an h5py dataset): read by regions, never whole."""
    return type(stack).__module__.split(".")[0] in ("zarr", "h5py") and hasattr(stack, "shape")


# Every chunk stored, those all fill value too (zarr stores none by default): a chunk missing
# from our stack is then one lost in a copy, where a stack's dark corner was warned of as chunk
# files "never written, or lost" by the fusion reading it.
_EVERY_CHUNK = {"write_empty_chunks": True}

# the two-pass rechunk's temporary array, inside the store this call creates (so removed with
# it, even after a crash), hidden from readers; removed before the image is declared
REHEARSAL = ".fstack-write-stack-rechunk"


def _write(data: Any, array: Any, chunks: tuple[int, ...], group: Any) -> None:
    """Write a NumPy array at once; a dask array and a stored one a chunk per task, each task
    whole chunks (parts of one written at once, without a lock, were lost: zeros). A source
    whose chunks each span more than two of ``chunks`` (a plane a chunk, the usual layout,
    into chunks of all planes) goes through a temporary array in chunks no larger than either
    (:func:`_two_pass`)."""
    import dask.array as da

    here = {}
    if _stored(data):  # (np.asarray read it whole first); in this process: an h5py dataset
        here = {"scheduler": "threads"}
        source = _ByItsChunks(data)
        step = tuple(map(min, source.step, source.shape))
        # (a stack stored whole, read by regions: h5py reads a part, zarr decodes it all)
        if step != source.shape and _spans(step, chunks) > 2:
            _two_pass(source, step, array, chunks, group, here)
            return
        data = da.from_array(source, chunks=chunks, asarray=True, name=False,
                             meta=np.empty((0,) * data.ndim, data.dtype))  # fmt: skip
    if hasattr(data, "dask"):
        step = tuple(map(max, data.chunksize, (1,) * data.ndim))
        # (dask's rechunk holds pieces only where chunks written gather several of its chunks:
        # its chunks cut into smaller ones, each computed once, need no temporary the size
        # of the stack on disk)
        if _spans(step, chunks) > 2 and any(map(operator.lt, step, chunks)):
            _two_pass(data, step, array, chunks, group, here)
            return
        data.rechunk(chunks).store(array, lock=False, **here)
    else:
        array[...] = data


def _spans(step: tuple[int, ...], chunks: tuple[int, ...]) -> int:
    """How many chunks of ``chunks`` one chunk of ``step`` spans at most (reads of it)."""
    return math.prod(-(-s // c) + (s % c != 0 and s > c) for s, c in zip(step, chunks, strict=True))


def _two_pass(
    source: Any, step: tuple[int, ...], array: Any, chunks: tuple[int, ...], group: Any,
    here: dict[str, str],
) -> None:  # fmt: skip
    """Rechunk as the ``rechunker`` project does: each source chunk read once and written
    whole into a temporary uncompressed array whose chunks each lie in one source chunk (so
    no two tasks write one), from which each chunk of ``array`` is read once. Memory: a source
    chunk and a chunk of ``array`` per thread (a plane a chunk was decoded Y/512 x X/512
    times: 8 x 4096^2 uint16 in 57-62 s; a dask stack of planes rechunked by dask held about
    twice the stack); disk: the stack once more, uncompressed, until the image is written."""
    import dask.array as da

    middle = tuple(
        s if s <= c or (s % c and s < n) else c
        for s, c, n in zip(step, chunks, array.shape, strict=True)
    )
    meta = np.empty((0,) * len(chunks), source.dtype)
    if not hasattr(source, "dask"):
        source = da.from_array(source, chunks=step, asarray=True, name=False, meta=meta)
    elif any(len(set(c[:-1])) > 1 or c[-1] > c[0] for c in source.chunks):
        source = source.rechunk(step)  # (irregular chunks: on the grid of step)
    temp = group.create_array(name=REHEARSAL, shape=array.shape, dtype=array.dtype,
                              chunks=middle, compressors=None, fill_value=0)  # fmt: skip
    # (no rechunk: dask's held every plane read, its pieces waiting for their stores)
    source.store(temp, lock=False, **here)
    back = da.from_array(_ByItsChunks(temp), chunks=chunks, asarray=True, name=False, meta=meta)
    back.store(array, lock=False, **here)


class _ByItsChunks:
    """A stored array read a few of its stored chunks (or shards) at a time, as many as hold
    no more than the region read (one where a chunk is larger): zarr decodes all the chunks
    a read spans at once, and a stack stored a plane a chunk had each task hold every plane
    decoded (16 planes of 4096^2 uint16: a traced peak of 819 MiB for a 512 MiB stack; 259
    MiB read so)."""

    def __init__(self, array: Any) -> None:
        self.array, self.shape, self.dtype = array, tuple(array.shape), np.dtype(array.dtype)
        self.ndim = len(self.shape)
        step = getattr(array, "shards", None) or getattr(array, "chunks", None)
        self.step = tuple(step or self.shape)  # an h5py dataset stored whole: None

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        spans = [range(*k.indices(n)) for k, n in zip(key, self.shape, strict=True)]
        cuts = [_cuts(r.start, r.stop, c) for r, c in zip(spans, self.step, strict=True)]
        # as many stored chunks a read as hold no more than the region: chunks smaller than
        # it were read one by one, a zarr call each (16 x 2048^2 in chunks of 1 x 64 x 64:
        # 21.8 s against 12.0 s read by regions)
        room = math.prod(map(len, spans)) // max(1, math.prod(self.step))
        for axis in reversed(range(self.ndim)):
            group = max(1, min(room, len(cuts[axis])))
            room //= group
            c = cuts[axis]
            cuts[axis] = [
                (c[k][0], c[min(k + group, len(c)) - 1][1]) for k in range(0, len(c), group)
            ]
        if all(len(c) == 1 for c in cuts):  # one read: zarr's array as it comes (no copy)
            return np.asarray(self.array[tuple(slice(r.start, r.stop) for r in spans)])
        out = np.empty(tuple(len(r) for r in spans), self.dtype)
        for part in itertools.product(*cuts):
            at = zip(part, spans, strict=True)
            where = tuple(slice(a - r.start, b - r.start) for (a, b), r in at)
            out[where] = self.array[tuple(slice(a, b) for a, b in part)]
        return out


def _cuts(start: int, stop: int, chunk: int) -> list[tuple[int, int]]:
    """``start:stop`` cut at the edges of chunks of ``chunk``."""
    edges = [start, *range((start // chunk + 1) * chunk, stop, chunk), stop]
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def _reals(values: Mapping[str, Any] | None, letters: str, name: str) -> dict[str, float]:
    """``values`` per axis as finite floats: a string, a bool or NaN was written as given (a
    string scale as 1, NaN as non-standard JSON: an adversarial run)."""
    out = {}
    for letter, value in dict(values or {}).items():
        if letter not in letters:
            raise ValueError(f"{name} has axis {letter!r}, which is not in axes {letters!r}")
        if isinstance(value, (bool, np.bool_, str, bytes)) or not np.isscalar(value):
            raise TypeError(f"{name}[{letter!r}] must be a real number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # a 400-digit int
            number = float("inf")
        if not np.isfinite(number):
            raise ValueError(f"{name}[{letter!r}] must be finite, got {value!r}")
        out[letter] = number
    return out


def _units(units: Mapping[str, str] | None, letters: str) -> dict[str, str]:
    """Units that OME-NGFF names (UDUNITS-2: ``micrometer``, ``second``, ...), for the axes
    given: space units for z, y and x, time units for t."""
    out = {}
    for letter, unit in dict(units or {}).items():
        if letter not in letters:
            raise ValueError(f"units has axis {letter!r}, which is not in axes {letters!r}")
        allowed = TIME_UNITS if letter == "t" else SPACE_UNITS if letter in "zyx" else None
        if not isinstance(unit, str) or (allowed is not None and unit not in allowed):
            kind = "a time" if letter == "t" else "a length"
            raise ValueError(
                f"units[{letter!r}] must be {kind} unit as OME-NGFF names it (e.g. "
                f"{'second' if letter == 't' else 'micrometer'!r}), got {unit!r}"
            )
        out[letter] = unit
    return out


def _claim(location: Any, zarr_format: int) -> bool:
    """Create a local store's folder exclusively: two calls into one new path (array jobs
    converting one stack) both passed the check, then wrote into one store, each "done", or
    the one zarr refused removed the other's store as its own failed start. On S3 the
    group's metadata object is created by one conditional request (``If-None-Match: *``, as
    AWS S3 and MinIO honour it; both calls went on there). True where claimed; another
    object store has no exclusive create (zarr's check alone, not atomic)."""
    if not location.is_local:
        return _claim_object(location, zarr_format)
    try:
        os.mkdir(location.path)
    except FileExistsError:
        raise _exists(location) from None
    return True


def _claim_object(location: Any, zarr_format: int) -> bool:
    """Create the new group's metadata object on S3 exclusively, as zarr writes it (marked
    unfinished); False on another object store."""
    import json

    from .lock import _refused
    from .staleness import _s3_object

    meta = location.child("zarr.json" if zarr_format == 3 else ".zgroup")
    s3 = _s3_object(meta)
    if s3 is None:
        return False
    fs, bucket, key = s3
    body = {"zarr_format": 3, "node_type": "group", "attributes": {WRITE_STACK_UNFINISHED: True}}
    try:
        fs.call_s3(
            "put_object",
            Bucket=bucket,
            Key=key,
            IfNoneMatch="*",
            Body=json.dumps(body if zarr_format == 3 else {"zarr_format": 2}).encode(),
        )
    except OSError as exc:
        if _refused(exc):
            raise _exists(location) from None
        raise
    finally:
        fs.invalidate_cache(location.path)
    return True


def _create_group(location: Any, zarr_format: int, *, claimed: bool = False) -> Any:
    """The group, marked unfinished; another writer's begun since the check is refused. On
    an object store where :func:`_claim` created its metadata, that group."""
    import zarr

    store = location.zarr_store(read_only=False)
    if claimed and not location.is_local:
        group = zarr.open_group(store, mode="r+", zarr_format=zarr_format)
        group.attrs.put({WRITE_STACK_UNFINISHED: True})
        return group
    try:
        return zarr.create_group(store, zarr_format=zarr_format,
                                 attributes={WRITE_STACK_UNFINISHED: True})  # fmt: skip
    except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError):
        raise _exists(location) from None  # (not ours to remove)


def _exists(location: Any) -> FileExistsError:
    return FileExistsError(f"path {location.spec!r} already exists; expected a new location")


def _chunks(chunks: Any, axes: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The chunk shape: given (positive ints, one per axis) or by default; a chunk beyond its
    axis holds nothing more, and numpy was asked for a buffer of its size ("array is too big",
    after the store was created: an adversarial run), so it is cut to the axis."""
    if chunks is None:
        chunks = tuple(
            min(n, 512) if a in "yx" else (n if a in "zc" else 1)
            for a, n in zip(axes, shape, strict=True)
        )
    if isinstance(chunks, np.ndarray) and chunks.ndim == 1:  # as fuse takes one
        chunks = chunks.tolist()
    want = f"chunks must be {len(shape)} positive ints (one per axis), got {chunks!r}"
    # (True is an int: (True, 64, 64) was a chunk of 1 plane; a sweep of contract 4)
    if not isinstance(chunks, (tuple, list)) or not all(
        isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in chunks
    ):  # a wrong type: a TypeError, as fuse's chunks
        raise TypeError(f"{want} ({type(chunks).__name__})")
    if len(chunks) != len(shape) or not all(c >= 1 for c in chunks):
        raise ValueError(want)
    return tuple(min(int(c), int(n)) for c, n in zip(chunks, shape, strict=True))


def _new_store(path: Any, storage_options: Mapping[str, Any] | None) -> Any:
    """Where the store goes: a new location, in a folder that exists (as fuse_zarr's dst), not
    named like an image file (it wrote a Zarr folder of that name: an adversarial run)."""
    location = resolve(path, name="path", storage_options=storage_options, writable=True)
    reach(location, name="path", option="storage_options")  # (ftp://: fsspec's TypeError)
    if location.exists():
        raise _exists(location)
    if location.is_local and not os.path.isdir(os.path.dirname(location.path)):
        raise FileNotFoundError(
            f"path {location.spec!r}: its parent folder {os.path.dirname(location.path)!r} does "
            "not exist; create it first (a typo in the path?)"
        )
    bucket = location.missing_bucket()  # (s3fs's "The specified bucket does not exist")
    if bucket is not None:
        raise FileNotFoundError(
            f"path {location.spec!r} cannot be created: its bucket {bucket!r} does not exist; "
            "create it first (a typo in the URL?)"
        )
    suffix = os.path.splitext(location.path.rstrip("/"))[1].lower()
    if suffix in (*IMAGE_SUFFIXES, ".tif", ".tiff"):
        raise ValueError(
            f"path {location.spec!r} names a {suffix[1:].upper()} file, but write_stack writes "
            "an OME-Zarr store: choose a name such as 'stack.ome.zarr'"
        )
    return location
