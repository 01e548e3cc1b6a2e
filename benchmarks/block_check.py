"""The per-block engine check's cost (``_runs.blocks._require_engine_here``, 3b856f2/5d7d14e):
a LocalCluster fuses a stack of many small blocks, alternately with the check and with it
replaced by a no-op in every worker, several repeats; the ratio is what counts on a loaded
machine. Also the check's own cost, once this process has passed it (timeit).

    python benchmarks/block_check.py [--repeats 4] [--size 384] [--chunk 24]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import timeit
from pathlib import Path


def _off() -> None:
    from fstack_dask._runs import blocks

    blocks._saved_check = getattr(blocks, "_saved_check", blocks._require_engine_here)
    blocks._require_engine_here = lambda engine: None


def _on() -> None:
    from fstack_dask._runs import blocks

    blocks._require_engine_here = getattr(blocks, "_saved_check", blocks._require_engine_here)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--chunk", type=int, default=24)
    opts = parser.parse_args()

    from distributed import Client, LocalCluster

    from fstack_dask import fuse_zarr, synthetic_stack
    from fstack_dask._runs import blocks

    stack = synthetic_stack((opts.size, opts.size), 5, seed=0).stack
    n_blocks = (-(-opts.size // opts.chunk)) ** 2
    tmp = Path(tempfile.mkdtemp())
    times: dict[str, list[float]] = {"check": [], "no check": []}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        with Client(cluster) as client:
            for i in range(opts.repeats * 2 + 1):  # the first a warm-up, not counted
                kind = "check" if i % 2 else "no check"
                client.run(_on if kind == "check" else _off)
                dst = tmp / f"out{i}.zarr"
                start = time.perf_counter()
                fuse_zarr(stack, str(dst), axes="yxz", chunks=opts.chunk, scheduler=client,
                          progress=False, levels=0)  # fmt: skip
                if i:
                    times[kind].append(time.perf_counter() - start)
                shutil.rmtree(dst)
    from fstack_dask._algorithm.block import ENGINE

    blocks._require_engine_here(ENGINE)
    per_call = min(timeit.repeat(lambda: blocks._require_engine_here(ENGINE),
                                 number=100_000, repeat=5)) / 100_000  # fmt: skip
    print(f"{n_blocks} blocks of {opts.chunk}^2 x 5, LocalCluster 2 processes x 1 thread")
    for kind, found in times.items():
        print(f"  {kind:9s}: " + ", ".join(f"{t:.2f}" for t in found) + " s")
    ratio = (
        sorted(times["check"])[len(times["check"]) // 2]
        / sorted(times["no check"])[len(times["no check"]) // 2]
    )
    print(f"  median ratio check / no check: {ratio:.3f}")
    print(f"  the check once passed: {per_call * 1e9:.0f} ns a call (2 calls a block on a GPU)")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
