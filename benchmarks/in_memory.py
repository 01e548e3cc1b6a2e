"""An in-memory NumPy source on worker processes and on a cluster: time and workers' memory.

Usage::

    python benchmarks/in_memory.py [--side 2048] [--planes 21] [--repeat 2]

``fuse_zarr`` of one synthetic uint16 stack, given as a NumPy array and as a Zarr store
(chunks of all planes x 512 x 512), with ``scheduler="processes"`` (2 worker processes) and
a ``distributed.LocalCluster`` of 2 single-threaded worker processes; the array also as
every in-memory source went before it was shared (pickled with every task; still the way a
source too large for /dev/shm goes to worker processes). Prints, per case, the best wall
time and the largest sum over all child processes of their proportional set size (PSS:
shared pages counted once), sampled every 20 ms during the run.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import psutil

from fstack_dask import fuse_zarr, synthetic_stack, write_stack
from fstack_dask._sources import share as _share


class _PeakChildrenPss:
    """The largest sum of the PSS of this process's descendants while the block runs."""

    def __enter__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        me = psutil.Process()
        while not self._stop.wait(0.02):
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_full_info().pss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def _as_before():
    """Every in-memory source pickled with every task, as before it was shared (and as a
    source too large for /dev/shm still goes to worker processes)."""
    saved = _share._numpy_data
    _share._numpy_data = lambda src: (None, None)
    try:
        yield
    finally:
        _share._numpy_data = saved


def _case(name, src, dst, scheduler, repeat, **kwargs):
    times, peaks = [], []
    for _ in range(repeat):
        with _PeakChildrenPss() as pss, warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            start = time.perf_counter()
            fuse_zarr(src, dst, scheduler=scheduler, chunks=512, levels=0, progress=False,
                      overwrite=True, **kwargs)  # fmt: skip
            times.append(time.perf_counter() - start)
        peaks.append(pss.peak)
        big = [str(w.message).splitlines()[0] for w in seen if "large graph" in str(w.message)]
    note = f"  ({big[0]})" if big else ""
    print(f"| {name} | {min(times):.2f} | {max(peaks) / 2**20:.0f} |{note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--planes", type=int, default=21)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    zyx = np.ascontiguousarray(
        np.moveaxis(synthetic_stack((args.side,) * 2, args.planes, seed=1).stack, 2, 0)
    )
    tmp = Path(tempfile.mkdtemp())
    write_stack(tmp / "in.zarr", zyx, axes="zyx", chunks=(args.planes, 512, 512))
    print(f"{args.side}^2 x {args.planes} uint16, {zyx.nbytes / 2**20:.0f} MiB in memory\n")
    print("| case | best s | workers' peak PSS MiB |\n|---|---|---|")
    out = tmp / "out.zarr"
    _case("processes, Zarr store", tmp / "in.zarr", out, "processes", args.repeat)
    _case("processes, array in shared memory", zyx, out, "processes", args.repeat, axes="zyx")
    with _as_before():
        _case("processes, array pickled with every task", zyx, out, "processes", args.repeat,
              axes="zyx")  # fmt: skip
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:  # fmt: skip
        _case("cluster, Zarr store", tmp / "in.zarr", out, client, args.repeat)
        _case("cluster, array scattered once", zyx, out, client, args.repeat, axes="zyx")
        with _as_before():
            _case("cluster, array pickled with every task", zyx, out, client, args.repeat,
                  axes="zyx")  # fmt: skip


if __name__ == "__main__":
    main()
