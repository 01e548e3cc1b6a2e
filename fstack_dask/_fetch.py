"""Reading a block with its halo from a source, decoding each stored unit about once.

A block's haloed region reaches into its neighbours' chunks. Reading it straight from the
store would decode those chunks again for every neighbour (up to 9 times for a block of one
chunk). Instead every process keeps a :class:`UnitCache` of decoded read units (a chunk, or a
shard, with every plane): the code that plans the blocks announces, with
:meth:`UnitCache.expect`, which units the next blocks will read, and a unit is dropped as
soon as the last announced reader has taken its part. Blocks run in an order that reuses
units (see ``_plan``), so the cache holds about two rows of units of a strip of blocks:
bounded by the plan, not by the image. Reads nobody announced are decoded and not kept.

A unit that cannot be decoded raises :class:`SourceReadError`, and float data holding NaN or
infinity raises :class:`SourceValueError`, both naming the source and the chunk.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._read import Source, SourceReadError, SourceValueError

__all__ = ["BlockRegion", "UnitCache", "fetch_block", "units_of"]

_local = threading.local()


@dataclass(frozen=True)
class BlockRegion:
    """A block's haloed read: ``lead`` indices (letter -> index of batch and independent
    channel axes), the y and x ranges (halo included, clipped to the image), and whether the
    channel axis is read whole (RGB)."""

    lead: tuple[tuple[str, int], ...]
    y: tuple[int, int]
    x: tuple[int, int]
    rgb: bool


class _Entry:
    __slots__ = ("array", "error", "nbytes", "pending", "ready", "used")

    def __init__(self) -> None:
        self.array: np.ndarray | None = None
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.pending = 0
        self.nbytes = 0
        self.used = 0.0


class UnitCache:
    """Decoded read units shared by the threads of one process.

    Parameters
    ----------
    max_bytes : int
        A safety cap: beyond it the least recently used units nobody is waiting for are
        dropped (they are decoded again if needed: only speed suffers, never results).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._entries: dict[Any, _Entry] = {}
        self.held_bytes = 0
        self.peak_bytes = 0
        self.decoded_bytes = 0

    def expect(self, keys: Iterable[Any]) -> None:
        """Announce one future read of each unit in ``keys``."""
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is None:
                    entry = self._entries[key] = _Entry()
                entry.pending += 1

    def forget(self, keys: Iterable[Any]) -> None:
        """Withdraw announced reads that will not happen (a block that was cancelled)."""
        with self._lock:
            for key in keys:
                self._release(key)

    def _release(self, key: Any) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.pending -= 1
        # Not used (never taken, or dropped by _trim): no decode is in flight, so it can go.
        if entry.pending <= 0 and (entry.ready.is_set() or not entry.used):
            del self._entries[key]
            self.held_bytes -= entry.nbytes

    def take(self, key: Any, decode: Any) -> np.ndarray:
        """The decoded unit ``key`` (decoded by ``decode()`` if nobody has), for one read."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:  # an unannounced read: decode it for this reader only
                entry = self._entries[key] = _Entry()
                entry.pending = 1
            owner = entry.array is None and entry.error is None and not entry.used
            entry.used = time.monotonic()
            ready = entry.ready  # _trim may give the entry a new event
        if owner:
            try:
                array = decode()
            except BaseException as exc:
                entry.error = exc
                array = None
            with self._lock:
                entry.array = array
                if array is not None:
                    entry.nbytes = array.nbytes
                    self._count(array)
                    self.held_bytes += array.nbytes
                    self.peak_bytes = max(self.peak_bytes, self.held_bytes)
                ready.set()
                self._trim()
        else:
            ready.wait()
            array = entry.array
        try:
            if entry.error is not None:
                raise entry.error
            if array is None:  # dropped by _trim before this reader got it: decode again
                array = decode()
                with self._lock:
                    self._count(array)
            return array
        finally:
            with self._lock:
                self._release(key)

    def _count(self, array: np.ndarray) -> None:
        self.decoded_bytes += array.nbytes
        _local.decoded = getattr(_local, "decoded", 0) + array.nbytes

    def _trim(self) -> None:
        if self.held_bytes <= self.max_bytes:
            return
        idle = sorted(
            (e.used, k)
            for k, e in self._entries.items()
            if e.ready.is_set() and e.array is not None
        )
        for _, key in idle:
            if self.held_bytes <= self.max_bytes:
                break
            entry = self._entries[key]
            # Dropping it loses only speed: the readers still announced decode it again.
            entry.array, entry.used = None, 0.0
            entry.ready = threading.Event()
            self.held_bytes -= entry.nbytes
            entry.nbytes = 0


def decoded_by_this_thread() -> int:
    """Bytes this thread has decoded so far (for per-task statistics)."""
    return int(getattr(_local, "decoded", 0))


# ------------------------------------------------------------------------------ geometry


def _units(source: Source, region: BlockRegion) -> list[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """(cache key, selection) of every unit the region touches.

    A unit is one chunk (or shard) along y, x and the lead axes, and the whole axis along z
    (and along c for RGB): one read fetches every plane at once, however z is chunked.
    """
    lead = dict(region.lead)
    per_axis = []
    for letter, n, u in zip(source.axes, source.shape, source.unit_shape, strict=True):
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


def units_of(source: Source, region: BlockRegion) -> list[tuple[int, ...]]:
    """Cache keys of the units a block reads (for :meth:`UnitCache.expect`)."""
    if source.in_memory:
        return []
    return [key for key, _ in _units(source, region)]


# ------------------------------------------------------------------------------- reading


def fetch_block(source: Source, region: BlockRegion, cache: UnitCache | None) -> np.ndarray:
    """The haloed block, plane-first: ``(P, Y, X)``, or ``(3, P, Y, X)`` for RGB.

    Native byte order, C-contiguous. Reads go through ``cache`` (units shared with other
    blocks); with ``cache=None`` or an in-memory source, straight from the array.
    """
    lead = dict(region.lead)
    (y0, y1), (x0, x1) = region.y, region.x
    canon = ("c" if region.rgb else "") + "zyx"
    dims = {"z": source.size("z"), "y": y1 - y0, "x": x1 - x0}
    if region.rgb:
        dims["c"] = source.size("c")
    out = np.empty(tuple(dims[a] for a in canon), dtype=source.dtype.newbyteorder("="))
    want = {"y": (y0, y1), "x": (x0, x1)}

    if source.in_memory or cache is None:
        sel = tuple(
            _axis_sel(letter, n, lead, want)
            for letter, n in zip(source.axes, source.shape, strict=True)
        )
        part = _read(source, sel)
        out[...] = _to_canon(part, source.axes, lead, canon)
        _check_finite(source, out, sel)
        return out

    for key, unit_sel in _units(source, region):
        data = cache.take(key, lambda s=unit_sel: _decode(source, s))
        # The part of the unit inside the block, in unit-local and block-local coordinates.
        local, dest = [], {}
        for letter, s in zip(source.axes, unit_sel, strict=True):
            if letter in want:
                lo, hi = max(want[letter][0], s.start), min(want[letter][1], s.stop)
                local.append(slice(lo - s.start, hi - s.start))
                dest[letter] = slice(lo - want[letter][0], hi - want[letter][0])
            elif letter in lead:
                local.append(lead[letter] - s.start)
            else:
                local.append(slice(None))
        part = data[tuple(local)]
        out[tuple(dest.get(a, slice(None)) for a in canon)] = _to_canon(
            part, source.axes, lead, canon
        )
    return out


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


def _read(source: Source, sel: tuple[slice, ...]) -> np.ndarray:
    try:
        return np.asarray(source.array[sel])
    except Exception as exc:
        raise SourceReadError(
            f"cannot read {_where(source, sel)} of {source.description} ({_reason(exc)}); the "
            f"source is corrupt, truncated or unreadable"
        ) from exc


def _decode(source: Source, sel: tuple[slice, ...]) -> np.ndarray:
    data = _read(source, sel)
    _check_finite(source, data, sel)
    return data


def _check_finite(source: Source, data: np.ndarray, sel: tuple[slice, ...]) -> None:
    if data.dtype.kind != "f":
        return
    bad = ~np.isfinite(data)
    if not bad.any():
        return
    first = np.argwhere(bad)[0]
    where = tuple(int(s.start) + int(i) for s, i in zip(sel, first, strict=True))
    value = data[tuple(first)]
    raise SourceValueError(
        f"{_where(source, tuple(slice(w, w + 1) for w in where))} of {source.description} holds "
        f"{value} at {dict(zip(source.axes, where, strict=True))}; NaN and infinite values "
        "cannot be fused: replace them (e.g. by 0) in the source"
    )


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _where(source: Source, sel: tuple[slice, ...]) -> str:
    """'chunk <key>' for the (first) stored chunk or shard a read covered."""
    try:
        first = tuple(int(s.start or 0) // u for s, u in zip(sel, source.unit_shape, strict=True))
        last = tuple(
            max(int(s.stop) - 1, int(s.start or 0)) // u
            for s, u in zip(sel, source.unit_shape, strict=True)
        )
        meta = source.array.metadata
        name = meta.encode_chunk_key(first)
        prefix = source.array.path.strip("/")
        key = f"{prefix}/{name}" if prefix else name
        if first != last:
            return f"chunks {key!r} to {meta.encode_chunk_key(last)!r}"
        return f"chunk {key!r}"
    except Exception:  # not a zarr array, or a key we cannot map
        return f"region {tuple((s.start, s.stop) for s in sel)}"
