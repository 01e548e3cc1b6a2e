"""The pyramid's passes: level ``L`` computed block by block once level ``L - 1`` is complete.

Each pass goes through the same runner, done-markers (``L1_...``) and resume rules as level 0;
a block reads exactly the four chunks below it (no halo) and writes its own chunk of every
multiscale image of the output (the fused image and the maps).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._layout import Layout
from .._locations import Location
from .._outputs.lock import Lease
from .._outputs.pyramid import downsample, level_shape
from .._outputs.state import OutputState
from .._outputs.write import make_durable, open_output, write_block
from . import fence
from .plan import Plan

__all__ = ["PyramidJob", "level_plan"]

_opening = threading.Lock()


@dataclass(frozen=True, eq=False)
class PyramidJob:
    """Writes one level of every multiscale image of an output (image and maps)."""

    output: Location
    level: int
    images: tuple[str, ...]  # "" for the fused image, "depth", "selectivity"
    plan: Plan  # the level's blocks (no halo)
    token: str = "pyramid"
    lease: Lease | None = None  # checked before each block's writes and its marker

    @property
    def fence_key(self) -> str | None:
        """The run's key in :mod:`.fence` (its lock's: a level's job has no token of its
        own); None without a lock, no fence."""
        return None if self.lease is None else f"{self.token}-{self.lease.token}"

    def expect(self, blocks: Sequence[tuple[int, ...]]) -> None:
        """Nothing to announce: a block reads exactly the four chunks below it."""

    forget = expect

    def cache_peak(self) -> int:
        return 0

    def close(self) -> None:
        return None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_opened", None)  # opened again where the job is unpickled
        return state

    def _arrays(self) -> dict[str, tuple[Any, Any]]:
        """Each image's arrays of the level below and of this one, opened once a job in a
        process: a block is a task, and each opened the group (its ``zarr.json`` and each
        level array's, three failed lookups of zarr v2 names: 2.2 MB of ``zarr.json`` read
        for a 2.3 MB output of 1024 blocks, a round trip each on NFS)."""
        with _opening:  # the first blocks start together on every thread
            out = self.__dict__.get("_opened")
            if out is None:
                group = open_output(self.output, mode="r+")
                out = {}
                for image in self.images:
                    node = group[image] if image else group
                    out[image] = (node[str(self.level - 1)], node[str(self.level)])
                object.__setattr__(self, "_opened", out)  # a frozen dataclass's cache
        return out

    def run(
        self,
        blocks: Sequence[tuple[int, ...]],
        *,
        announce: bool = True,
        on_block: Callable[[], None] | None = None,
    ) -> list:
        """Downsample and write ``blocks``; ``on_block`` is called after each (progress)."""
        from .blocks import Outcome

        arrays = self._arrays()
        outcomes = []
        for block in blocks:
            start = time.perf_counter()
            key = self.fence_key
            with fence.writing(key) if key is not None else contextlib.nullcontext():
                self._write_block(arrays, block)
            outcomes.append(Outcome(self.marker(block), None, 0, time.perf_counter() - start))
            if on_block is not None:
                on_block()
        return outcomes

    def _write_block(self, arrays: dict[str, tuple[Any, Any]], block: tuple[int, ...]) -> None:
        """Downsample and write ``block`` of every image, durably, then its marker."""
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
        sizes: list[int] = []
        stored = make_durable(self.output, keys, sizes)
        if self.lease is not None:
            self.lease.check()
        OutputState(self.output).mark_done(self.marker(block), stored=stored, sizes=sizes)

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
