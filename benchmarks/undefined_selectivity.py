"""The cost of filling undefined selectivity with the image's smallest S (as the reference).

Times ``fuse_zarr`` (in-memory source, 16 blocks) and the lazy ``fuse()`` (4 chunks) on a
1024^2 x 21 uint16 synthetic stack as it is and with a dark first plane (S undefined
wherever the fit reads it: most blocks are fused again in a second pass). Best of
``--repeat`` runs after a first one. Run it with ``PYTHONPATH`` at another tree to compare::

    python benchmarks/undefined_selectivity.py --tag after
    PYTHONPATH=/path/to/older/tree python benchmarks/undefined_selectivity.py --tag before
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import dask.array as da
import numpy as np

from fstack_dask import fuse, fuse_zarr, synthetic_stack


def _best(run, repeat: int) -> float:
    run()  # compiling, caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    stack = synthetic_stack((1024, 1024), 21, dtype="uint16", noise=0.02, seed=1).stack
    planes = np.ascontiguousarray(np.moveaxis(stack, 2, 0))
    rows = {}
    for case in ("as it is", "dark first plane"):
        data = planes.copy()
        if case == "dark first plane":
            data[0] = 0

        def to_zarr(data=data) -> None:
            where = tempfile.mkdtemp()
            try:
                fuse_zarr(data, f"{where}/o.zarr", axes="zyx", chunks=256, progress=False,
                          levels=0)  # fmt: skip
            finally:
                shutil.rmtree(where)

        lazy = da.from_array(data, chunks=(21, 512, 512))
        rows[case] = {
            "fuse_zarr s": round(_best(to_zarr, args.repeat), 3),
            "lazy fuse s": round(
                _best(lambda lazy=lazy: fuse(lazy, axes="zyx").compute(), args.repeat), 3
            ),  # fmt: skip
        }
    print(json.dumps({"tag": args.tag, "results": rows}))


if __name__ == "__main__":
    main()
