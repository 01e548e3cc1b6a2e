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


#: Where a uint16 stack (0 .. 65535) is moved to test samples at the edges of their dtype
#: (an offset, a step): its fusion there must be as independent of chunking as uint16's.
EDGE_DTYPES = {
    "int8": ("int8", -128, 1 / 257),
    "int16 negative": ("int16", -32768, 1),
    "uint32 top": ("uint32", 2**32 - 65536, 1),
    "int32 bottom": ("int32", -(2**31), 1),
    "int64 top": ("int64", 2**63 - 65536 * 1024, 1024),
    "float16": ("float16", 0, 1 / 65535),
    "float32 near 3e38": ("float32", 0, 3.4e38 / 65535),
    "float32 near 1e-38": ("float32", 0, 1e-38 / 65535),
    "float64": ("float64", 0, 1e100 / 65535),
    "big-endian uint16": (">u2", 0, 1),
}


def to_edge_dtype(stack: np.ndarray, kind: str) -> np.ndarray:
    """``stack`` (uint16) moved into the corner of a dtype that :data:`EDGE_DTYPES` names."""
    dtype, offset, step = EDGE_DTYPES[kind]
    if np.dtype(dtype).kind == "f":
        return (stack.astype(np.float64) * step).astype(dtype)
    if step < 1:
        return (stack.astype(np.int64) // round(1 / step) + offset).astype(dtype)
    exact = np.array(offset, dtype=object) + stack.astype(object) * step  # no wrap in int64
    return exact.astype(dtype)


@st.composite
def edge_stacks(draw, max_side: int = 24, max_planes: int = 7) -> np.ndarray:
    """A small stack from :func:`stacks` (grey, uint16) in a dtype at its edges."""
    shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    planes = draw(st.integers(1, max_planes))
    seed = draw(st.integers(0, 2**16))
    stack = synthetic_stack(shape, planes, dtype="uint16", noise=0.03, seed=seed).stack.copy()
    if draw(st.booleans()):  # a dark frame: S undefined where the fit reads it
        stack[..., draw(st.integers(0, planes - 1))] = 0
    return to_edge_dtype(stack, draw(st.sampled_from(sorted(EDGE_DTYPES))))
