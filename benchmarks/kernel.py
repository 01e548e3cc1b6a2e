"""Time the per-block kernel and the in-memory ``focus_stack``: NumPy engine vs compiled.

Usage::

    python benchmarks/kernel.py [--repeats 5]

Measures, in this one process (so the ratios are fair on a shared machine):

* one haloed 538 x 538 x 51 uint16 block (a 512 x 512 block with the halo of
  ``nhsize=9``), ``fuse_block`` with each engine, on 1 thread and as two blocks
  on 2 threads at once (Mvox/s counts every voxel computed);
* ``focus_stack`` on a 1024 x 1024 x 21 RGB uint8 stack with each engine and
  ``workers`` 1 and 2, and focusweave 2.0.0 (``pip install focusweave==2.0.0``,
  if installed; its own default threads, no alignment) on the same data.

Prints the best and the median of ``--repeats`` runs (wall clock) and the load
average before and after, since other processes skew absolute figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fstack_dask import focus_stack, synthetic_stack
from fstack_dask._algorithm import block as _kernel
from fstack_dask._algorithm.block import fuse_block


def timed(func, repeats):
    func()  # warm up (compilation, caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def block_case(block, engine, threads):
    if threads == 1:
        return lambda: fuse_block(block, engine=engine)
    pool = ThreadPoolExecutor(threads)

    def run():
        list(pool.map(lambda _: fuse_block(block, engine=engine), range(threads)))

    return run


def stack_case(stack, engine, workers):
    def run():
        saved = _kernel.ENGINE
        _kernel.ENGINE = engine
        try:
            focus_stack(stack, workers=workers)
        finally:
            _kernel.ENGINE = saved

    return run


def focusweave_case(stack):
    try:
        import focusweave
    except ImportError:
        return None
    images = [np.ascontiguousarray(stack[:, :, p]) for p in range(stack.shape[2])]
    config = focusweave.FocusStackConfig(images=images, no_align=True)
    return lambda: focusweave.run(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    engines = ["numpy"] + (["compiled"] if _kernel.blend_compiled is not None else [])
    load_before = os.getloadavg()

    grey = synthetic_stack((538, 538), 51, dtype="uint16", noise=0.03, seed=1).stack
    block = np.ascontiguousarray(np.moveaxis(grey, 2, 0))
    rgb = synthetic_stack((1024, 1024), 21, rgb=True, dtype="uint8", noise=0.03, seed=1).stack

    rows = []
    for engine in engines:
        for threads in (1, 2):
            best, median = timed(block_case(block, engine, threads), args.repeats)
            voxels = block.size * threads
            rows.append(("538x538x51 u16 block", engine, threads, best, median, voxels))
    for engine in engines:
        for workers in (1, 2):
            best, median = timed(stack_case(rgb, engine, workers), args.repeats)
            rows.append(("1024x1024x21 RGB focus_stack", engine, workers, best, median, rgb.size))
    weave = focusweave_case(rgb)
    if weave is not None:
        best, median = timed(weave, args.repeats)
        rows.append(("1024x1024x21 RGB focusweave", "focusweave", "auto", best, median, rgb.size))

    print(f"{'case':30} {'engine':10} {'threads':>7} {'best s':>8} {'median s':>9} {'Mvox/s':>7}")
    for case, engine, threads, best, median, voxels in rows:
        mvox = voxels / best / 1e6
        print(f"{case:30} {engine:10} {threads!s:>7} {best:8.3f} {median:9.3f} {mvox:7.0f}")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs; Mvox/s from the best time")  # fmt: skip


if __name__ == "__main__":
    main()
