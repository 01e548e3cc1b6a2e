"""write_stack storing every chunk (write_empty_chunks, 72e1eef) against zarr's default of
storing none all fill value, for a mostly-empty stack: time, files and bytes on disk.

    python benchmarks/empty_chunks.py [planes] [side] [chunk] [repeats]

Alternates the two settings in one process, ``repeats`` times each; prints one line a run and
the medians. A tenth of the chunks (along y) hold data, the rest are zero.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

import fstack_dask._outputs.write_stack as ws
from fstack_dask import write_stack


def _disk(path: str) -> tuple[int, int]:
    files = used = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            files += 1
            used += os.stat(os.path.join(dirpath, name)).st_blocks * 512
    return files, used


def main() -> None:
    planes, side, chunk, repeats = (int(a) for a in (sys.argv[1:] + ["16", "4096", "128", "3"])[:4])
    data = np.zeros((planes, side, side), dtype="uint16")
    data[:, : side // 10] = np.random.default_rng(0).integers(0, 4096, (planes, side // 10, side))
    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for i in range(repeats):
            for every in (True, False):
                ws._EVERY_CHUNK = {"write_empty_chunks": every}
                path = os.path.join(tmp, f"s{i}{every}.zarr")
                start = time.perf_counter()
                write_stack(path, data, axes="zyx", chunks=(planes, chunk, chunk))
                times[every].append(time.perf_counter() - start)
                files, used = _disk(path)
                print(
                    f"write_empty_chunks={every}: {times[every][-1]:.2f} s, {files} files, "
                    f"{used / 2**20:.1f} MiB on disk"
                )
                shutil.rmtree(path)
    a, b = statistics.median(times[True]), statistics.median(times[False])
    print(f"median: every chunk {a:.2f} s, empty ones skipped {b:.2f} s, ratio {a / b:.2f}")


if __name__ == "__main__":
    main()
