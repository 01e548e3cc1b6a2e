"""The cost of finding ``chattr`` marks (immutable, append-only) inside an old output before
an overwrite: :func:`~fstack_dask._outputs.removal.unremovable`'s walk with a ``statx``
of each file against the same walk without the marks (a stat of no file), alternated, on an
output whose level 0 holds n x n chunk folders of ten files each.

    python benchmarks/mark_walk.py --folders 100 --repeats 5   # 10^4 folders, 10^5 files
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from fstack_dask import fuse_zarr, write_stack
from fstack_dask._locations import resolve
from fstack_dask._outputs import removal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folders", type=int, default=100, help="n: n x n chunk folders")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="mark-walk-")
    try:
        src, dst = os.path.join(root, "src.zarr"), os.path.join(root, "out.zarr")
        stack = np.random.default_rng(0).integers(0, 4096, (5, 64, 64), dtype=np.uint16)
        write_stack(src, stack, axes="zyx")
        fuse_zarr(src, dst, progress=False)
        for i in range(args.folders):
            for j in range(args.folders):
                folder = os.path.join(dst, "0", "c", str(i + 1), str(j))
                os.makedirs(folder)
                for k in range(10):
                    open(os.path.join(folder, str(k)), "wb").close()
        folders = sum(len(d) for _r, d, _f in os.walk(dst))
        files = sum(len(f) for _r, _d, f in os.walk(dst))
        location, real = resolve(dst, name="dst"), removal.marks_reader
        ways = {"walk with marks (statx a file)": real, "walk without marks": lambda _top: None}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        for _ in range(args.repeats):
            for name, reader in ways.items():
                removal.marks_reader = reader
                start, cpu = time.perf_counter(), time.process_time()
                assert removal.unremovable(location) is None
                times[name].append((time.perf_counter() - start, time.process_time() - cpu))
        removal.marks_reader = real
        print(f"{folders} folders, {files} files, {args.repeats} repeats alternated:")
        for name, pairs in times.items():
            wall, cpu = ([p[i] for p in pairs] for i in (0, 1))
            print(f"  {name}: wall median {statistics.median(wall):.3f} s (min {min(wall):.3f}), "
                  f"CPU median {statistics.median(cpu):.3f} s")  # fmt: skip
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
