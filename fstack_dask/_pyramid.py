"""The multiscale pyramid of an output: levels 1..N, each a 2 x 2 mean of the one before.

Level ``L`` is computed in a pass of its own once level ``L - 1`` is complete, block by block
through the same runner, done-markers and resume rules as level 0. Each level-``L`` pixel is
the mean of the (up to) 2 x 2 level-``L - 1`` pixels it covers, summed in a fixed order, so
the pyramid is bit-identical whatever the chunking and the scheduler, like level 0. Integer
images are rounded half to even; the depth and selectivity maps average their finite values
(NaN where none is).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._locations import Location
from ._lock import Lease
from ._plan import Layout, Plan
from ._state import OutputState
from ._write import make_durable, open_output, write_block

__all__ = ["PyramidJob", "downsample", "n_levels"]


def n_levels(shape_yx: tuple[int, int], block: tuple[int, int]) -> int:
    """Levels beyond 0 until the image fits in one block (chunk): 0 if it already does."""
    ratio = max(shape_yx[0] / block[0], shape_yx[1] / block[1])
    return max(0, math.ceil(math.log2(ratio))) if ratio > 1 else 0


def level_shape(shape_yx: tuple[int, int], level: int) -> tuple[int, int]:
    f = 2**level
    return math.ceil(shape_yx[0] / f), math.ceil(shape_yx[1] / f)


def _pair_sum(a: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum of neighbouring pairs along ``axis`` (a trailing odd element alone), and counts."""
    even = np.take(a, np.arange(0, a.shape[axis], 2), axis=axis)
    odd = np.take(a, np.arange(1, a.shape[axis], 2), axis=axis)
    total = even.copy()
    index = [slice(None)] * a.ndim
    index[axis] = slice(0, odd.shape[axis])
    total[tuple(index)] += odd
    return total, odd.shape[axis]


def downsample(values: np.ndarray, *, dtype: np.dtype, nan_aware: bool) -> np.ndarray:
    """2 x 2 mean over the last two axes (odd edges average what they have).

    Examples
    --------
    >>> downsample(np.array([[1, 2, 3], [3, 4, 5]], np.uint8), dtype=np.uint8, nan_aware=False)
    array([[2, 4]], dtype=uint8)
    """
    f = values.astype(np.float64)
    finite = np.isfinite(f) if nan_aware else None
    if nan_aware:
        f = np.where(finite, f, 0.0)
    s, _ = _pair_sum(f, f.ndim - 2)
    s, _ = _pair_sum(s, f.ndim - 1)
    if nan_aware:
        n = finite.astype(np.float64)
    else:
        n = np.ones(f.shape[-2:], np.float64)
    n, _ = _pair_sum(n, n.ndim - 2)
    n, _ = _pair_sum(n, n.ndim - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s / n
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.round(mean), info.min, info.max).astype(dtype)
    return mean.astype(dtype)


@dataclass(frozen=True, eq=False)
class PyramidJob:
    """Writes one level of every multiscale image of an output (image and maps)."""

    output: Location
    level: int
    images: tuple[str, ...]  # "" for the fused image, "depth", "selectivity"
    plan: Plan  # the level's blocks (no halo)
    token: str = "pyramid"
    lease: Lease | None = None  # checked before each block's writes and its marker

    def expect(self, blocks: Sequence[tuple[int, ...]]) -> None:
        """Nothing to announce: a block reads exactly the four chunks below it."""

    forget = expect

    def cache_peak(self) -> int:
        return 0

    def close(self) -> None:
        return None

    def _arrays(self) -> dict[str, tuple[Any, Any]]:
        group = open_output(self.output, mode="r+")
        out = {}
        for image in self.images:
            node = group[image] if image else group
            out[image] = (node[str(self.level - 1)], node[str(self.level)])
        return out

    def run(self, blocks: Sequence[tuple[int, ...]], *, announce: bool = True) -> list:
        from ._blocks import Outcome

        arrays = self._arrays()
        outcomes = []
        for block in blocks:
            start = time.perf_counter()
            (y0, y1), (x0, x1) = self.plan.core(block)
            lead = dict(self.plan.region(block).lead)
            keys = []
            for image, (below, here) in arrays.items():
                axes = "".join(here.metadata.dimension_names)
                src_sel, dst_sel = [], []
                for letter in axes:
                    if letter == "y":
                        src_sel.append(slice(2 * y0, min(2 * y1, below.shape[axes.index("y")])))
                        dst_sel.append(slice(y0, y1))
                    elif letter == "x":
                        src_sel.append(slice(2 * x0, min(2 * x1, below.shape[axes.index("x")])))
                        dst_sel.append(slice(x0, x1))
                    elif letter in lead:
                        src_sel.append(slice(lead[letter], lead[letter] + 1))
                        dst_sel.append(slice(lead[letter], lead[letter] + 1))
                    else:  # the colour channels of an RGB image: all of them
                        k = axes.index(letter)
                        src_sel.append(slice(0, below.shape[k]))
                        dst_sel.append(slice(0, here.shape[k]))
                data = downsample(below[tuple(src_sel)], dtype=here.dtype, nan_aware=bool(image))
                if self.lease is not None and not keys:
                    self.lease.check()  # a run whose lock was taken over writes nothing more
                keys += write_block({image: here}, {image: tuple(dst_sel)}, {image: data})
            make_durable(self.output, keys)
            if self.lease is not None:
                self.lease.check()
            OutputState(self.output).mark_done(self.marker(block))
            outcomes.append(Outcome(self.marker(block), None, 0, time.perf_counter() - start))
        return outcomes

    def marker(self, block: tuple[int, ...]) -> str:
        return f"L{self.level}_{Plan.name(block)}"


def level_plan(layout: Layout, block: tuple[int, int], level: int) -> Plan:
    """The blocks of one pyramid level (the same chunk size, no halo)."""
    ny, nx = level_shape(layout.shape_yx, level)
    shape = tuple(
        ny if a == "y" else nx if a == "x" else n
        for a, n in zip(layout.axes, layout.shape, strict=True)
    )
    lay = Layout(layout.axes, shape, layout.rgb)
    strip = max(1, math.ceil(nx / block[1]))
    return Plan(lay, block, 0, strip, tuple(1 for _ in lay.lead_axes))
