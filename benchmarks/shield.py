"""What shielding a local cluster's workers from SIGINT costs a run: the worker plugin of
``_runs.shield`` (registered for the run, removed after) against the ``client.run`` of each
step it replaced (set, then put back, on the workers present at the start).

Usage::

    python benchmarks/shield.py [--workers 2] [--repeat 20]

Starts a ``LocalCluster`` of ``--workers`` worker processes, then times, alternated, one
run's set and restore each way, and one small ``fuse_zarr`` (64 x 64 x 5, one block) on the
cluster for scale. Prints the median of ``--repeat`` of each, in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid

from distributed import Client, LocalCluster

from fstack_dask import fuse_zarr, synthetic_stack, write_stack
from fstack_dask._runs import shield


def _old_set(pgid: int, pid: int, token: str) -> bool:
    if not shield._is_ours(pgid, pid):
        return False
    shield._ignore_interrupts(token)
    return True


def _client_run(client: Client) -> None:
    token = uuid.uuid4().hex
    done = client.run(_old_set, os.getpgrp(), os.getpid(), token, on_error="return")
    assert all(v is True for v in done.values()), done
    client.run(shield._restore_interrupts, token, on_error="return")


def _plugin(client: Client) -> None:
    with shield.shield_local_workers(client):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(
        n_workers=args.workers, threads_per_worker=1, dashboard_address=None
    ) as cluster, Client(cluster) as client:  # fmt: skip
        src = f"{tmp}/s.zarr"
        write_stack(src, synthetic_stack((64, 64), 5, dtype="uint16").stack, axes="yxz")
        times: dict[str, list[float]] = {"client.run": [], "plugin": [], "fuse_zarr": []}
        for i in range(args.repeat + 1):
            for name, step in (
                ("client.run", lambda: _client_run(client)),
                ("plugin", lambda: _plugin(client)),
                (
                    "fuse_zarr",
                    lambda i=i: fuse_zarr(
                        src, f"{tmp}/o{i}.zarr", progress=False, levels=0, scheduler=client
                    ),
                ),
            ):
                start = time.perf_counter()
                step()
                if i:  # the first round warms up
                    times[name].append(time.perf_counter() - start)
        for name, values in times.items():
            print(f"{name:>10}: {statistics.median(values) * 1e3:8.1f} ms (median of "
                  f"{len(values)})")  # fmt: skip


if __name__ == "__main__":
    main()
