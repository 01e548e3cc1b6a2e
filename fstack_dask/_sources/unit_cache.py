"""The cache of decoded read units through which a block's haloed read decodes each stored
unit about once, and the per-thread count of bytes decoded outside it.

Every process keeps a :class:`UnitCache` of decoded read units (a chunk, or a shard, with
every plane): the code that plans the blocks announces, with :meth:`UnitCache.expect`, which
units the next blocks will read, and a unit is dropped as soon as the last announced reader
has taken its part; once only its neighbours' halo reads are left, it keeps only the bands of
``halo`` pixels along its edges (its frame). Reading a block through the cache is in
:mod:`.fetch`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

__all__ = ["UnitCache", "count_decoded", "decoded_by_this_thread", "read_kind"]

_local = threading.local()


class _Entry:
    __slots__ = ("busy", "error", "frame", "full", "pending", "used")

    def __init__(self) -> None:
        self.full: np.ndarray | None = None
        self.frame: _Frame | None = None
        self.error: BaseException | None = None
        self.busy = False  # a reader is decoding it
        self.pending = {"full": 0, "frame": 0}
        self.used = 0.0

    def nbytes(self) -> int:
        frame = self.frame.nbytes if self.frame is not None else 0
        return (self.full.nbytes if self.full is not None else 0) + frame


class UnitCache:
    """Decoded read units shared by the threads of one process.

    A unit is kept whole while reads of its interior are announced (its own blocks); once
    only halo reads are left, it keeps only its *frame*, the bands of ``halo`` pixels along
    its four edges (a tenth of a 512-pixel unit for the default halo), which is all the
    neighbouring blocks still read of it.

    Parameters
    ----------
    max_bytes : int
        A safety cap: beyond it the least recently used units nobody is decoding are
        dropped (they are decoded again if needed: only speed suffers, never results).
    halo : int
        Width of the frames (0: units are only kept whole).
    """

    def __init__(self, max_bytes: int, halo: int = 0) -> None:
        self.max_bytes, self.halo = int(max_bytes), int(halo)
        self._lock = threading.Lock()
        self._decoded = threading.Condition(self._lock)
        self._entries: dict[Any, _Entry] = {}
        self.held_bytes = 0
        self.peak_bytes = 0
        self.decoded_bytes = 0

    def expect(self, reads: Iterable[tuple[Any, str]]) -> None:
        """Announce future reads: ``(key, "full" or "frame")`` each."""
        with self._lock:
            for key, kind in reads:
                entry = self._entries.get(key)
                if entry is None:
                    entry = self._entries[key] = _Entry()
                entry.pending[kind] += 1

    def forget(self, reads: Iterable[tuple[Any, str]]) -> None:
        """Withdraw announced reads that will not happen (a block that was cancelled)."""
        with self._lock:
            for key, kind in reads:
                self._release(key, kind)

    def _release(self, key: Any, kind: str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.pending[kind] -= 1
        if entry.busy:
            return
        before = entry.nbytes()
        if entry.pending["full"] <= 0:
            entry.full = None  # only the neighbours' halos are read from now on
        if entry.pending["frame"] <= 0 and entry.pending["full"] <= 0:
            del self._entries[key]
            entry.frame = None
        self.held_bytes -= before - entry.nbytes()

    def take(
        self,
        key: Any,
        kind: str,
        local: tuple[int, int, int, int],
        decode: Any,
        yx: tuple[int, int],
        *,
        wait: bool = True,
    ) -> tuple[np.ndarray, int, int] | None:
        """One read of unit ``key``: ``(array, y0, x0)``, the array holding at least the
        unit-local rows and columns ``local`` (y0, y1, x0, x1), its first row and column
        being the unit's ``y0`` and ``x0``; ``decode()`` decodes the whole unit, ``yx`` are
        its y and x axes. With ``wait=False``, ``None`` (and nothing taken) while another
        reader is decoding the unit."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:  # an unannounced read: decode it for this reader only
                entry = self._entries[key] = _Entry()
                entry.pending[kind] = 1
            if entry.busy and not wait:
                return None
            entry.used = time.monotonic()
            while entry.busy:
                self._decoded.wait()
            try:
                if entry.error is not None:
                    raise entry.error
                if kind == "frame" and entry.frame is not None:
                    result = entry.frame.pick(local)
                    self._release(key, kind)
                    return result
                if entry.full is not None:
                    full = entry.full  # before _release, which may drop it from the cache
                    self._release(key, kind)
                    return full, 0, 0
                entry.busy = True
            except BaseException:
                self._release(key, kind)
                raise
        try:
            full = decode()
            frame = _frame(full, yx, self.halo)
        except BaseException as exc:
            with self._lock:
                entry.error, entry.busy = exc, False
                self._decoded.notify_all()
                self._release(key, kind)
            raise
        with self._lock:
            before = entry.nbytes()
            entry.full, entry.frame, entry.busy = full, frame, False
            self._count(full)
            self.held_bytes += entry.nbytes() - before
            self._decoded.notify_all()
            self._release(key, kind)
            self._trim()
            self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        return full, 0, 0

    def _count(self, array: np.ndarray) -> None:
        self.decoded_bytes += array.nbytes
        _local.decoded = getattr(_local, "decoded", 0) + array.nbytes

    def _trim(self) -> None:
        if self.held_bytes <= self.max_bytes:
            return
        idle = sorted((e.used, k) for k, e in self._entries.items() if not e.busy and e.nbytes())
        for part in ("full", "frame"):  # whole units first: frames are small
            for _, key in idle:
                if self.held_bytes <= self.max_bytes:
                    return
                entry = self._entries[key]
                before = entry.nbytes()
                setattr(entry, part, None)  # decoded again if read again: only speed suffers
                self.held_bytes -= before - entry.nbytes()


class _Frame(NamedTuple):
    """The bands of ``h`` pixels along the four edges of a ``ny x nx`` unit."""

    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray
    ny: int
    nx: int
    h: int

    @property
    def nbytes(self) -> int:
        return self.top.nbytes + self.bottom.nbytes + self.left.nbytes + self.right.nbytes

    def pick(self, local: tuple[int, int, int, int]) -> tuple[np.ndarray, int, int]:
        y0, y1, x0, x1 = local
        if y1 <= self.h:
            return self.top, 0, 0
        if y0 >= self.ny - self.h:
            return self.bottom, self.ny - self.h, 0
        if x1 <= self.h:
            return self.left, 0, 0
        if x0 >= self.nx - self.h:
            return self.right, 0, self.nx - self.h
        raise AssertionError("a read outside the frame was announced as a frame read")


def has_frame(ny: int, nx: int, halo: int) -> bool:
    return halo > 0 and 2 * halo < ny and 2 * halo < nx


def read_kind(local: tuple[int, int, int, int], ny: int, nx: int, halo: int) -> str:
    """``"frame"`` for a read within ``halo`` of a unit's edge (a neighbour's halo), else
    ``"full"``."""
    y0, y1, x0, x1 = local
    if has_frame(ny, nx, halo) and (y1 <= halo or y0 >= ny - halo or x1 <= halo or x0 >= nx - halo):
        return "frame"
    return "full"


def _frame(full: np.ndarray, yx: tuple[int, int], halo: int) -> _Frame | None:
    ay, ax = yx
    ny, nx = full.shape[ay], full.shape[ax]
    if not has_frame(ny, nx, halo):
        return None

    def band(axis: int, lo: int, hi: int) -> np.ndarray:
        index = [slice(None)] * full.ndim
        index[axis] = slice(lo, hi)
        return full[tuple(index)].copy()

    return _Frame(
        band(ay, 0, halo), band(ay, ny - halo, ny), band(ax, 0, halo), band(ax, nx - halo, nx),
        ny, nx, halo,
    )  # fmt: skip


def count_decoded(nbytes: int) -> None:
    """Count bytes decoded outside the cache (a block's core read straight from the store)."""
    _local.decoded = getattr(_local, "decoded", 0) + int(nbytes)


def decoded_by_this_thread() -> int:
    """Bytes this thread has decoded so far (for per-task statistics)."""
    return int(getattr(_local, "decoded", 0))
