"""The array over one image file per plane: decoded on demand, whole planes kept in an LRU
cache (so reading a stack region by region decodes each file once while the cache holds the
stack), thread-safe, and refusing a file that changed since it was opened.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from .common import UnreadableFileError, int_axes, region_key
from .image_headers import _EXIF_TRANSPOSE
from .tiff_array import FileChangedError, file_stamp, read_contiguous

__all__: list[str] = []


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
        planar: tuple[bool, ...] = (),
    ):
        self.files, self.fmt, self.alpha, self.cache_bytes = tuple(files), fmt, alpha, cache_bytes
        self.orientation = orientation  # EXIF: of every PNG or JPEG plane, or one per plane
        self.planar = planar  # per TIFF plane: RGB stored a plane per colour (SYX)
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
                "orientation", "planar")  # fmt: skip
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
                plane = np.moveaxis(plane, 0, -1) if self._planar(z) else plane
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
            planar = self._planar(z)
            expect = (self.shape[1:], self.dtype)
            plane = read_contiguous(self.files[z], rest, expect, planar=planar)
            if plane is None and planar:  # the file's samples first
                plane = tifffile.imread(self.files[z], selection=(rest[-1], *rest[:-1]))
                plane = np.moveaxis(plane, 0, -1)
            elif plane is None:
                plane = tifffile.imread(self.files[z], selection=rest)
        except (ImportError, MemoryError, FileChangedError):
            raise
        except Exception as exc:
            raise UnreadableFileError(self.files[z], _reason(exc)) from exc
        with self._lock:
            self.decodes += 1
        return plane

    def _planar(self, z: int) -> bool:
        return bool(self.planar) and self.planar[z]

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
