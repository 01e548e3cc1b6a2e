"""The per-task memory model that chooses chunk sizes is an upper bound of what a task allocates."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fstack_dask import synthetic_stack
from fstack_dask._kernel import block_memory, fuse_block


@pytest.mark.parametrize(("planes", "dtype", "rgb"), [(21, "uint16", False), (7, "uint8", True)])
def test_block_memory_bounds_allocations(planes, dtype, rgb):
    stack = synthetic_stack((160, 120), planes, rgb=rgb, dtype=dtype, seed=0).stack
    block = np.ascontiguousarray(
        np.moveaxis(stack, (3, 2), (0, 1)) if rgb else np.moveaxis(stack, 2, 0)
    )
    fuse_block(block, rgb=rgb, with_depth=True, with_selectivity=True)  # compile / warm up
    tracemalloc.start()
    fuse_block(block, rgb=rgb, with_depth=True, with_selectivity=True)
    peak = tracemalloc.get_traced_memory()[1] + block.nbytes  # plus the input itself
    tracemalloc.stop()
    estimate = block_memory((160, 120), planes, 3 if rgb else 1, np.dtype(dtype).itemsize, rgb)
    assert peak <= estimate, (peak, estimate)
    assert peak >= 0.3 * estimate, "the model should not be wildly pessimistic"
