"""Hypothesis strategies for focus stacks and their chunkings (after flox/tests/strategies.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from fstack_dask import synthetic_stack


@st.composite
def chunks_for(draw, size: int) -> tuple[int, ...]:
    """A partition of ``size`` into chunks: one chunk, regular, or arbitrary and uneven."""
    kind = draw(st.sampled_from(["one", "regular", "ragged"]))
    if kind == "one" or size == 1:
        return (size,)
    if kind == "regular":
        step = draw(st.integers(1, size))
        return tuple([step] * (size // step) + ([size % step] if size % step else []))
    cuts = draw(st.lists(st.integers(1, size - 1), unique=True, max_size=6))
    edges = [0, *sorted(cuts), size]
    return tuple(b - a for a, b in zip(edges[:-1], edges[1:], strict=True))


@st.composite
def stacks(draw, max_side: int = 48, max_planes: int = 8) -> np.ndarray:
    """A small noisy synthetic stack in the reference layout (y, x, z); sometimes with a
    blank plane or a region without contrast, where ``S`` is undefined and takes the
    image's smallest (a chunked run fuses those blocks in a second pass)."""
    shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    planes = draw(st.integers(1, max_planes))
    dtype = draw(st.sampled_from(["uint8", "uint16", "float32"]))
    seed = draw(st.integers(0, 2**16))
    stack = synthetic_stack(shape, planes, dtype=dtype, noise=0.03, seed=seed).stack.copy()
    blank = draw(st.sampled_from(["none", "plane", "region"]))
    if blank == "plane":
        stack[..., draw(st.integers(0, planes - 1))] = 0
    elif blank == "region":
        y0, x0 = draw(st.integers(0, shape[0] - 1)), draw(st.integers(0, shape[1] - 1))
        stack[y0 : y0 + draw(st.integers(1, 20)), x0 : x0 + draw(st.integers(1, 20))] = 0
    return stack
