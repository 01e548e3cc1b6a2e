"""Stacks for comparing the ``"cuda"`` engine with the compiled CPU engine, and the comparison.

Used in numba's CUDA simulator (``tests/test_gpu.py`` runs :func:`main` in a subprocess
with ``NUMBA_ENABLE_CUDASIM=1``, at tiny sizes: the simulator runs every thread in Python)
and on a real GPU (the ``gpu`` tests, at larger sizes). Each case is a block as
``fuse_block`` takes it: ``(P, Y, X)`` grey or ``(3, P, Y, X)`` RGB.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np

from fstack_dask import synthetic_stack
from fstack_dask._algorithm.block import fuse_block


def _grey(shape, planes, dtype, seed):
    stack = synthetic_stack(shape, planes, dtype=dtype, seed=seed).stack
    return np.ascontiguousarray(np.moveaxis(stack, 2, 0))


def _rgb(shape, planes, seed):
    stack = synthetic_stack(shape, planes, rgb=True, dtype="uint8", seed=seed).stack
    return np.moveaxis(stack, (2, 3), (1, 0))  # (3, P, Y, X), a strided view as focus_stack's


def cases(scale: int = 1) -> dict[str, tuple[np.ndarray, dict]]:
    """Name -> (block, fuse_block keyword arguments); ``scale`` multiplies the image sides."""
    rng = np.random.default_rng(7)
    ny, nx = 14 * scale, 12 * scale
    out: dict[str, tuple[np.ndarray, dict]] = {}
    out["uint16"] = (_grey((ny, nx), 6, "uint16", 0), {"nhsize": 3})
    out["uint8 even window"] = (_grey((ny, nx), 5, "uint8", 1), {"nhsize": 4})
    out["rgb uint8"] = (_rgb((ny, nx), 5, 2), {"nhsize": 3, "rgb": True})
    out["4 planes"] = (_grey((ny, nx), 4, "uint16", 3), {"nhsize": 3})
    out["1 plane"] = (_grey((ny, nx), 1, "uint16", 4), {"nhsize": 3})
    flat = _grey((ny, nx), 5, "uint16", 5)
    flat[:, : ny // 2, : nx // 2] = 1000  # no contrast in any plane: fmax = 0
    flat[:, ny // 2 :, nx // 2 :] = 65535  # saturated
    out["flat and saturated"] = (flat, {"nhsize": 3})
    out["float32"] = (rng.random((5, ny, nx), dtype=np.float32), {"nhsize": 3})
    out["float64 focus alpha sth"] = (
        rng.normal(0, 1e3, (6, ny, nx)),
        {"nhsize": 3, "focus": [0.0, 0.5, 1.5, 2.0, 3.5, 4.0], "alpha": 0.5, "sth": 3.0},
    )
    out["float16"] = (rng.random((5, ny, nx)).astype(np.float16), {"nhsize": 3})
    tiny = rng.random((5, ny, nx)) * 2.0**-512  # variances flushed to 0 in part (compiled.TINY)
    tiny[:, : ny // 2] *= 2.0**20
    out["float64 tiny"] = (tiny, {"nhsize": 3})
    dark = _grey((ny, nx), 6, "uint16", 9)
    dark[0] = 0  # a dark frame: S undefined where the fit reads it, taken as s_fill
    out["dark frame, S filled"] = (dark, {"nhsize": 3, "s_fill": 11.25})
    signed = _grey((ny, nx), 5, "uint16", 6).astype(np.int32) - 30000
    out["int16 negative"] = (signed.astype(np.int16), {"nhsize": 3})
    out["int32"] = (rng.integers(-(2**31), 2**31 - 1, (5, ny, nx), dtype=np.int32), {"nhsize": 3})
    out["uint64"] = (rng.integers(0, 2**64 - 1, (5, ny, nx), dtype=np.uint64), {"nhsize": 3})
    out["big-endian uint16"] = (_grey((ny, nx), 5, ">u2", 8), {"nhsize": 3})
    return out


def compare(block: np.ndarray, kwargs: dict) -> dict:
    """The cuda engine against the compiled one: identical pixels, largest difference."""
    kw = {**kwargs, "with_depth": True, "with_selectivity": True}
    gpu = fuse_block(block, engine="cuda", **kw)
    cpu = fuse_block(block, engine="compiled", **kw)
    diff = np.abs(gpu.image.astype(np.float64) - cpu.image.astype(np.float64))
    return {
        "dtype": str(gpu.image.dtype),
        "same_dtype": gpu.image.dtype == cpu.image.dtype,
        "identical": float(np.mean(gpu.image == cpu.image)),
        "max_diff": float(diff.max()),
        "bits": bool(np.array_equal(gpu.image, cpu.image)),
        "depth_bits": bool(np.array_equal(gpu.depth, cpu.depth, equal_nan=True)),
        "selectivity_bits": bool(np.array_equal(gpu.selectivity, cpu.selectivity, equal_nan=True)),
    }


def main(argv: list[str]) -> int:
    """Print one JSON object: case name -> :func:`compare`'s result."""
    warnings.simplefilter("ignore", RuntimeWarning)  # the simulator's threads: NumPy's warnings
    scale = int(argv[0]) if argv else 1
    results = {name: compare(block, kw) for name, (block, kw) in cases(scale).items()}
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
