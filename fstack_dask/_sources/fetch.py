"""Reading a block with its halo from a source, decoding each stored unit about once.

A block's haloed region reaches into its neighbours' chunks. Reading it straight from the
store would decode those chunks again for every neighbour (up to 9 times for a block of one
chunk). Instead every process keeps a :class:`UnitCache` of decoded read units (a chunk, or a
shard, with every plane): the code that plans the blocks announces, with
:meth:`UnitCache.expect`, which units the next blocks will read, and a unit is dropped as
soon as the last announced reader has taken its part. Blocks run in an order that reuses
units (see ``_runs.plan``), so the cache holds about two rows of units of a strip of blocks:
bounded by the plan, not by the image. Reads nobody announced are decoded and not kept.

A unit that cannot be decoded raises :class:`SourceReadError`, and float data holding NaN or
infinity raises :class:`SourceValueError`, both naming the source and the chunk. The cache
itself is in :mod:`.unit_cache`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import SourceReadError, SourceValueError
from .common import UnreadableFileError
from .source import Source
from .unit_cache import UnitCache, read_kind

__all__ = ["BlockRegion", "block_shape", "fetch_block", "refused_opening", "units_of"]


@dataclass(frozen=True)
class BlockRegion:
    """A block's haloed read: ``lead`` indices (letter -> index of batch and independent
    channel axes), the y and x ranges (halo included, clipped to the image), and whether the
    channel axis is read whole (RGB)."""

    lead: tuple[tuple[str, int], ...]
    y: tuple[int, int]
    x: tuple[int, int]
    rgb: bool


# ------------------------------------------------------------------------------ geometry


def _units(source: Source, region: BlockRegion) -> list[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """(cache key, selection) of every unit the region touches.

    A unit is one read unit (``Source.read_shape``: a chunk, a shard, or a shard's chunk)
    along y, x and the lead axes, and the whole axis along z (and along c for RGB): one read
    fetches every plane at once, however z is chunked.
    """
    lead = dict(region.lead)
    per_axis = []
    for letter, n, u in zip(source.axes, source.shape, source.read_shape, strict=True):
        if letter == "y":
            lo, hi = region.y
        elif letter == "x":
            lo, hi = region.x
        elif letter in lead:
            lo, hi = lead[letter], lead[letter] + 1
        else:
            per_axis.append([(None, slice(0, n))])
            continue
        per_axis.append(
            [(i, slice(i * u, min((i + 1) * u, n))) for i in range(lo // u, (hi - 1) // u + 1)]
        )
    return [
        (tuple(i for i, _ in combo if i is not None), tuple(s for _, s in combo))
        for combo in itertools.product(*per_axis)
    ]


def _reads(source: Source, region: BlockRegion, halo: int):
    """(key, unit selection, unit-local y/x read, read kind) of every unit a block reads."""
    ay, ax = source.axes.index("y"), source.axes.index("x")
    out = []
    for key, sel in _units(source, region):
        sy, sx = sel[ay], sel[ax]
        local = (
            max(region.y[0], sy.start) - sy.start, min(region.y[1], sy.stop) - sy.start,
            max(region.x[0], sx.start) - sx.start, min(region.x[1], sx.stop) - sx.start,
        )  # fmt: skip
        kind = read_kind(local, sy.stop - sy.start, sx.stop - sx.start, halo)
        out.append((key, sel, local, kind))
    return out


def units_of(source: Source, region: BlockRegion, halo: int = 0) -> list[tuple[Any, str]]:
    """The reads a block makes, ``(key, kind)``, for :meth:`UnitCache.expect`."""
    if source.in_memory:
        return []
    return [(key, kind) for key, _, _, kind in _reads(source, region, halo)]


# ------------------------------------------------------------------------------- reading


def block_shape(source: Source, region: BlockRegion) -> tuple[int, ...]:
    """The shape :func:`fetch_block` gives: ``(P, Y, X)``, or ``(3, P, Y, X)`` for RGB."""
    rows, cols = region.y[1] - region.y[0], region.x[1] - region.x[0]
    return ((source.size("c"),) if region.rgb else ()) + (source.size("z"), rows, cols)


def fetch_block(
    source: Source, region: BlockRegion, cache: UnitCache | None, out: np.ndarray | None = None
) -> np.ndarray:
    """The haloed block, plane-first: ``(P, Y, X)``, or ``(3, P, Y, X)`` for RGB.

    Native byte order, C-contiguous (or ``out``, filled: any view of that shape and dtype).
    Reads go through ``cache`` (units shared with other blocks); with ``cache=None`` or an
    in-memory source, straight from the array: a Zarr array then decodes into ``out`` itself.
    """
    lead = dict(region.lead)
    (y0, y1), (x0, x1) = region.y, region.x
    canon = ("c" if region.rgb else "") + "zyx"
    shape, dtype = block_shape(source, region), source.dtype.newbyteorder("=")
    if out is None:
        out = np.empty(shape, dtype=dtype)
    elif out.shape != shape or out.dtype != dtype:
        raise ValueError(f"out must have shape {shape} and dtype {dtype}, got {out.shape} "
                         f"and {out.dtype}")  # fmt: skip
    want = {"y": (y0, y1), "x": (x0, x1)}

    if source.in_memory or cache is None:
        sel = tuple(
            _axis_sel(letter, n, lead, want)
            for letter, n in zip(source.axes, source.shape, strict=True)
        )
        if _decodes_into(source):  # one copy fewer: the chunks land in out
            _read(source, sel, into=_from_canon(out, source.axes, lead, canon))
        else:
            out[...] = _to_canon(_read(source, sel), source.axes, lead, canon)
        _check_finite(source, out, sel)
        return out

    yx = (source.axes.index("y"), source.axes.index("x"))
    # Units another thread is decoding come last: meanwhile this thread decodes (or copies)
    # the block's other units, instead of waiting while neighbouring blocks, which share
    # units, would otherwise decode them one thread at a time.
    later = []
    for read in _reads(source, region, cache.halo):
        key, unit_sel, local_yx, kind = read
        taken = cache.take(key, kind, local_yx, lambda s=unit_sel: _decode(source, s), yx,
                           wait=False)  # fmt: skip
        if taken is None:
            later.append(read)
        else:
            _place(out, taken, source, unit_sel, lead, want, canon)
    for key, unit_sel, local_yx, kind in later:
        taken = cache.take(key, kind, local_yx, lambda s=unit_sel: _decode(source, s), yx)
        _place(out, taken, source, unit_sel, lead, want, canon)
    return out


def _place(out, taken, source: Source, unit_sel, lead, want, canon) -> None:
    """Copy a unit's part inside the block into ``out``; ``taken`` is what
    :meth:`UnitCache.take` gave."""
    data, oy, ox = taken
    offset = {"y": oy, "x": ox}
    # The part of the unit inside the block, in the held array's and the block's
    # coordinates (a unit may be held as its frame only: offsets say where that starts).
    local, dest = [], {}
    for letter, s in zip(source.axes, unit_sel, strict=True):
        if letter in want:
            lo, hi = max(want[letter][0], s.start), min(want[letter][1], s.stop)
            shift = s.start + offset[letter]
            local.append(slice(lo - shift, hi - shift))
            dest[letter] = slice(lo - want[letter][0], hi - want[letter][0])
        elif letter in lead:
            local.append(lead[letter] - s.start)
        else:
            local.append(slice(None))
    part = data[tuple(local)]
    out[tuple(dest.get(a, slice(None)) for a in canon)] = _to_canon(part, source.axes, lead, canon)


def _axis_sel(letter: str, n: int, lead: dict[str, int], want: dict[str, tuple[int, int]]):
    if letter in want:
        return slice(*want[letter])
    if letter in lead:
        return slice(lead[letter], lead[letter] + 1)
    return slice(0, n)


def _to_canon(part: np.ndarray, axes: str, lead: dict[str, int], canon: str) -> np.ndarray:
    """Drop the (length-1 or indexed) lead axes and order the rest as ``canon``."""
    kept = [a for a in axes if a not in lead]
    if part.ndim != len(kept):  # lead axes still present with length 1
        part = part.reshape([n for a, n in zip(axes, part.shape, strict=True) if a not in lead])
    return part.transpose([kept.index(a) for a in canon])


def _from_canon(out: np.ndarray, axes: str, lead: dict[str, int], canon: str) -> np.ndarray:
    """The view of ``out`` (ordered as ``canon``) that a read of the source's ``axes`` fills:
    :func:`_to_canon`'s inverse, the lead axes as length 1."""
    kept = [a for a in axes if a not in lead]
    view = out.transpose([canon.index(a) for a in kept])
    return np.expand_dims(view, tuple(i for i, a in enumerate(axes) if a in lead))


def _decodes_into(source: Source) -> bool:
    """Whether the source's array is a Zarr array of native byte order, which decodes into a
    buffer it is given."""
    import zarr

    return isinstance(source.array, zarr.Array) and source.dtype.isnative


def _read(source: Source, sel: tuple[slice, ...], into: np.ndarray | None = None) -> np.ndarray:
    """``source.array[sel]``; with ``into``, decoded into that view (a Zarr array's ``out``)."""
    try:
        if into is not None:
            from zarr.core.buffer import default_buffer_prototype

            nd = default_buffer_prototype().nd_buffer.from_numpy_array(into)
            source.array.get_basic_selection(sel, out=nd)
            return into
        return np.asarray(source.array[sel])
    except UnreadableFileError as exc:  # a plane file: name it, not the stack's region
        raise SourceReadError(
            f"cannot read file {exc.path!r} of {source.description} ({exc.reason}); the file "
            "is corrupt, truncated or unreadable"
        ) from exc
    except Exception as exc:
        unserved = _unserved(exc)
        if unserved is not None:
            raise SourceReadError(
                f"the server no longer serves {_unserved_chunk(source, sel, exc)} of "
                f"{source.description} "
                f"(HTTP 404, {unserved!r}), though its folder lists it (a store being replaced, "
                "a server reconfigured?); rerun with --resume once it serves it again"
            ) from exc
        refused = _http_refusal(exc)
        if refused is not None:
            raise SourceReadError(
                f"{refused[0]} {_where(source, sel)} of {source.description} ({refused[1]}); "
                f"{refused[2]}"
            ) from exc
        raise SourceReadError(
            f"cannot read {_where(source, sel)} of {source.description} ({_reason(exc)}); the "
            f"source is corrupt, truncated or unreadable"
        ) from exc


def _decode(source: Source, sel: tuple[slice, ...]) -> np.ndarray:
    data = _read(source, sel)
    _check_finite(source, data, sel)
    return data


def _check_finite(source: Source, data: np.ndarray, sel: tuple[slice, ...]) -> None:
    if data.dtype.kind != "f" or data.size == 0:
        return
    # NaN propagates through max and min, and either meets any infinity: two vectorised
    # passes (about 19 GB/s a core) instead of a mask (2.5 GB/s); the mask only to say where
    if np.isfinite(data.max()) and np.isfinite(data.min()):
        return
    bad = ~np.isfinite(data)
    first = np.argwhere(bad)[0]
    where = tuple(int(s.start) + int(i) for s, i in zip(sel, first, strict=True))
    value = data[tuple(first)]
    raise SourceValueError(
        f"{_where(source, tuple(slice(w, w + 1) for w in where))} of {source.description} holds "
        f"{value} at {dict(zip(source.axes, where, strict=True))}; NaN and infinite values "
        "cannot be fused: replace them (e.g. by 0) in the source"
    )


def _reason(exc: BaseException) -> str:
    from .._locations import redact_urls  # aiohttp's errors name the URL, token and all

    text = redact_urls(" ".join(str(exc).split()))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _unserved(exc: BaseException | None) -> str | None:
    """The URL (its query hidden) of a chunk its HTTP server lists and answered 404 for, read
    as the fill value before (:class:`~.._locations.http_store.UnservedChunkError`)."""
    from .._locations import redact_urls

    exc = _unserved_error(exc)
    return None if exc is None else redact_urls(exc.url)


def _unserved_error(exc: BaseException | None) -> Any:
    from .._locations.http_store import UnservedChunkError

    while exc is not None and not isinstance(exc, UnservedChunkError):
        exc = exc.__cause__ or exc.__context__
    return exc


def _unserved_chunk(source: Source, sel: tuple[slice, ...], exc: BaseException) -> str:
    """'chunk <key>' of the chunk that answered 404, as its store names it: the read's first
    to last chunk named served ones too, the last without the array's path ("chunks
    '0/c/0/2/0' to 'c/0/3/1'" where c/0/3/ alone was not served)."""
    url = str(getattr(_unserved_error(exc), "url", ""))
    root = str(getattr(getattr(source.array, "store", None), "path", "")).rstrip("/")
    if root and url.startswith(root + "/"):
        return f"chunk {url[len(root) + 1 :]!r}"
    return _where(source, sel)


def _http_refusal(exc: BaseException) -> tuple[str, str, str] | None:
    """(what the server did, its status and the URL, what to do) where an HTTP server answered
    a read with an error status (aiohttp's ``ClientResponseError``): an expired token's 403
    or a server's 503 was told as "the source is corrupt, truncated or unreadable".
    None for any other failure."""
    from .._locations import redact_urls

    while exc is not None and not (
        isinstance(getattr(exc, "status", None), int) and hasattr(exc, "request_info")
    ):
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    if exc is None:
        return None
    status, url = exc.status, redact_urls(str(getattr(exc.request_info, "real_url", "")))
    told = f"HTTP {status}, {url!r}"
    if status in (401, 403):
        return ("the server refused access to", told, "the URL's token or signature may have "
                "expired: rerun with --resume and a renewed URL to continue")  # fmt: skip
    if status >= 500 or status in (408, 429):
        return ("the server failed to send", told, "the server's own failure (overloaded or "
                "down?): rerun with --resume to continue once it answers")  # fmt: skip
    return ("the server would not send", told, "check the URL; rerun with --resume to continue")


def refused_opening(exc: BaseException) -> SourceReadError | None:
    """A worker process's opening of the source that its HTTP server refused (an expired
    token's 403 on its metadata mid-run), as a run's read refused is told; None for any other
    failure. aiohttp's error holds the answer's headers, which cannot be pickled back to the
    run: it failed "can't pickle ... CIMultiDictProxy objects", exit 2."""
    refused = _http_refusal(exc)
    if refused is None:
        return None
    return SourceReadError(f"{refused[0]} the metadata of src ({refused[1]}); {refused[2]}")


def _where(source: Source, sel: tuple[slice, ...]) -> str:
    """'chunk <key>' for the (first) stored chunk or shard a read covered."""
    try:
        first = tuple(int(s.start or 0) // u for s, u in zip(sel, source.unit_shape, strict=True))
        last = tuple(
            max(int(s.stop) - 1, int(s.start or 0)) // u
            for s, u in zip(sel, source.unit_shape, strict=True)
        )
        meta = source.array.metadata
        prefix = source.array.path.strip("/")
        # (both with the array's path: the last was named without it, 'c/0/1/1')
        key, end = (f"{prefix}/{meta.encode_chunk_key(u)}".lstrip("/") for u in (first, last))
        return f"chunks {key!r} to {end!r}" if first != last else f"chunk {key!r}"
    except Exception:  # not a zarr array, or a key we cannot map
        return f"region {tuple((s.start, s.stop) for s in sel)}"
