"""What the readers of microscope vendors' files share: scenes named after the file, and an
array that reads regions through a reader opened once per process.

A vendor file may hold several images: CZI scenes, ND2 positions, LIF images. One of them is
the stack to fuse, named by a path through the file, as an HDF5 dataset is
(``slide.czi/1``, ``cells.lif/Series003``; the command line's ``--scene 1`` appends it): an
index, or a name the file gives it. A file with several and none named is refused with one
line listing them.
"""

from __future__ import annotations

import abc
import os
import threading
from typing import Any

import numpy as np

from .common import file_stamp, int_axes, region_key

__all__ = ["RegionArray", "Scene", "choose_scene", "split_scene"]


def split_scene(path: str) -> tuple[str, str | None]:
    """``"/d/slide.czi/1"`` as ``("/d/slide.czi", "1")``: the file, and what follows it.

    Examples
    --------
    >>> split_scene("/no/such/slide.czi")
    ('/no/such/slide.czi', None)
    """
    text = os.path.abspath(os.path.expanduser(path))
    head, inner = text, []
    while head and not os.path.isfile(head):
        head, tail = os.path.split(head)
        if not tail:
            return text, None
        inner.insert(0, tail)
    return (head, "/".join(inner) or None) if head else (text, None)


class Scene:
    """One image of a vendor file: its index, its name (may be empty) and a short size."""

    def __init__(self, index: int, name: str, size: str):
        self.index, self.name, self.size = int(index), str(name), size

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"{self.index}{name} ({self.size})"


def choose_scene(
    scenes: list[Scene], spec: str | None, *, path: str, where: str, word: str
) -> Scene:
    """The scene ``spec`` names (an index or a name), or the only one.

    Raises
    ------
    ValueError
        Naming ``where``, listing the scenes: several and none named, or no such scene.
    """
    listed = ", ".join(repr(s) for s in scenes[:12]) + (" ..." if len(scenes) > 12 else "")
    example = scenes[-1].index if scenes else 0
    named = f"{path}/{example}"
    hint = f"name one after the file, e.g. src {named!r} (command line: --scene {example})"
    if spec is None:
        if len(scenes) == 1:
            return scenes[0]
        plural = word if word.endswith("s") else f"{word}s"  # (series)
        raise ValueError(f"{where} holds {len(scenes)} {plural}: {listed}; {hint}")
    # an index first: a series named "2" must not stand for index 2 (the refusal above names
    # them by index; positions numbered from 1 fused the one before, an adversarial run)
    for s in scenes:
        if spec == str(s.index):
            return s
    same = [s for s in scenes if s.name and spec == s.name]
    if len(same) > 1:  # the first was fused in silence (an adversarial run on inputs)
        indices = ", ".join(str(s.index) for s in same)
        raise ValueError(
            f"{where} holds {len(same)} {word if word.endswith('s') else word + 's'} named "
            f"{spec!r} ({indices}); name one by its index, e.g. src "
            f"{f'{path}/{same[-1].index}'!r} (command line: --scene {same[-1].index})"
        )
    if same:
        return same[0]
    raise ValueError(f"{where} has no {word} {spec!r}; it holds {listed}; {hint}")


class RegionArray(abc.ABC):
    """A lazily read array of one image of a vendor file (``shape``, ``dtype``, ``chunks``,
    ``__getitem__`` of step-1 slices).

    Subclasses set the attributes and implement ``_open()`` (the vendor library's reader,
    opened once per process: pickling keeps only what ``_open`` needs) and
    ``_read(reader, region)`` (the NumPy array of a region, a tuple of step-1 slices).
    Reads are serialised per process with a lock: the vendor libraries do not promise
    thread-safe reads, and they hold the GIL while they read.
    """

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reader: Any = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @abc.abstractmethod
    def _open(self) -> Any:
        """Open the vendor's reader (once per array, in the process that reads)."""

    def _close(self, reader: Any) -> None:
        close = getattr(reader, "close", None)
        if close is not None:
            close()

    @abc.abstractmethod
    def _read(self, reader: Any, region: tuple[slice, ...]) -> np.ndarray:
        """The samples of ``region`` (a slice per axis) through ``reader``."""

    def __getitem__(self, key: Any) -> np.ndarray:
        region = region_key(key, self.shape)
        with self._lock:
            if self._reader is None:
                self._reader = self._open()
            out = self._read(self._reader, region)
        squeeze = int_axes(key, self.ndim)
        return out.squeeze(axis=squeeze) if squeeze else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._close(self._reader)
            self._reader = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_lock=None, _reader=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (type(self).__name__, self.path, repr(self.recipe()), *file_stamp(self.path))

    def recipe(self) -> tuple[Any, ...]:
        """What selects this image in its file (for tokens and messages)."""
        return ()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r} {self.recipe()} {self.shape}>"
