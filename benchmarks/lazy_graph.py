"""The lazy graph (``fuse()``): its build and dask's work before the first task, and the data
the threaded scheduler holds with the chunk reads, each in a fresh child process.

Sources: metadata-only uint16 Zarr stacks of 21 planes (no chunk stored: a read is a fill of
zeros), in (21, 512, 512) chunks, or in strips (21, 64, width) with ``--strips``.

Scenarios (``--only``):

* ``build``: ``fuse(da.from_zarr(src), chunks=512, memory_per_task="128MiB")``, then
  ``dask.compute(out.to_zarr(dst, compute=False))`` stopped at its first task (a callback):
  wall and CPU seconds of the build and of dask's work before the first task (optimize,
  culling, the graph's conversion, ordering, the scheduler's state), the graph's layers and
  its tasks after optimisation, peak RSS.
* ``held``: the same graph written with ``to_zarr`` on 2 threads, the kernel replaced by zeros
  of the block's shape (the graph and the scheduler alone): the peak of the NumPy data in the
  scheduler's cache after each task (a view counted by its base once) and the source chunks
  read per chunk and pass (zarr ``Array.__getitem__`` calls over both passes).

``--trees`` runs each measurement against other checkouts (``git worktree add DIR COMMIT``,
put first on ``sys.path``), alternated round by round, so that a loaded machine loads
them alike; ``--tile`` sets ``lazy_bands.BAND_WIDTH`` (the tile's side in px).

Usage::

    python benchmarks/lazy_graph.py --only build --sizes 32768 100000 --repeat 2 \\
        --trees /tmp/bands . --json /tmp/lazy_graph.json
    python benchmarks/lazy_graph.py --only held --sizes 16384 --tile 4096 8192
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import child, machine  # noqa: E402

SCENARIOS = ("build", "held")

SOURCE = """
import os, time, resource, zarr, dask, dask.array as da, numpy as np
from dask.callbacks import Callback
import fstack_dask
from fstack_dask._runs import lazy_bands
n, strips, tile, cache = {n}, {strips}, {tile}, {cache!r}
if tile:
    lazy_bands.BAND_WIDTH = tile
path = os.path.join(cache, f"src_{{n}}_{{strips}}.zarr")
if not os.path.exists(path):
    zarr.create_array(path, shape=(21, n, n), chunks=(21, 64, n) if strips else (21, 512, 512),
                      dtype="uint16")
src = zarr.open_array(path, mode="r")
dst = os.path.join(cache, f"dst_{{os.getpid()}}.zarr")
"""

BUILD = """
class Stop(Exception):
    pass
class First(Callback):
    def _start(self, dsk):
        found["tasks"] = len(dsk)
    def _pretask(self, key, dsk, state):
        raise Stop
found = {{}}
t0, c0 = time.perf_counter(), time.process_time()
out = fstack_dask.fuse(da.from_zarr(src), chunks=512, memory_per_task="128MiB")
t1, c1 = time.perf_counter(), time.process_time()
try:
    with First():
        dask.compute(out.to_zarr(dst, compute=False, overwrite=True))
except Stop:
    pass
t2, c2 = time.perf_counter(), time.process_time()
found.update(fuse_s=t1 - t0, fuse_cpu_s=c1 - c0, before_s=t2 - t1, before_cpu_s=c2 - c1,
             layers=len(out.dask.layers),
             tree=os.path.dirname(os.path.dirname(fstack_dask.__file__)))
print(json.dumps(found))
"""

HELD = """
import threading
from fstack_dask._runs import lazy_layers

def stats(block, *, halo, block_info=None, **_):
    return np.zeros(block.shape[:-3] + (2, 1, 1))

def fused(block, fills=None, *, halo, n_out, block_info=None, **_):
    loc, grid = block_info[0]["chunk-location"], block_info[0]["num-chunks"]
    y, x = ((halo * (loc[a] > 0), block.shape[a] - halo * (loc[a] < grid[a] - 1))
            for a in (block.ndim - 2, block.ndim - 1))
    return np.zeros(block.shape[:-3] + (n_out, y[1] - y[0], x[1] - x[0]))

lazy_layers.chunk_stats, lazy_layers.fuse_chunk = stats, fused
reads, lock, peak = [0], threading.Lock(), [0]
get = zarr.Array.__getitem__
def counted(self, sel):
    with lock:
        reads[0] += 1
    return get(self, sel)
zarr.Array.__getitem__ = counted

class Held(Callback):
    def _posttask(self, key, result, dsk, state, worker_id):
        bases = {{}}
        for value in list(state["cache"].values()):
            if isinstance(value, np.ndarray):
                base = value if value.base is None else value.base
                bases[id(base)] = getattr(base, "nbytes", value.nbytes)
        peak[0] = max(peak[0], sum(bases.values()))

out = fstack_dask.fuse(da.from_zarr(src), chunks=512, memory_per_task="128MiB")
t0 = time.perf_counter()
with Held(), dask.config.set(scheduler="threads", num_workers=2):
    out.to_zarr(dst, overwrite=True)
chunks = src.nchunks
print(json.dumps(dict(held_mib=peak[0] / 2**20, reads=reads[0], chunks=chunks,
                      reads_per_chunk_pass=reads[0] / chunks / 2, seconds=time.perf_counter() - t0,
                      tree=os.path.dirname(os.path.dirname(fstack_dask.__file__)))))
"""


def _one(scenario: str, tree: Path, n: int, strips: bool, tile: int, cache: Path) -> dict:
    # first on sys.path: a child's "" (its working directory) comes before PYTHONPATH
    code = f"import sys\nsys.path.insert(0, {str(tree.resolve())!r})\n"
    code += SOURCE.format(n=n, strips=strips, tile=tile, cache=str(cache)) + "import json\n"
    code += (BUILD if scenario == "build" else HELD).format()
    found = child(code)
    for dst in cache.glob("dst_*.zarr"):
        shutil.rmtree(dst, ignore_errors=True)
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[16384])
    parser.add_argument("--trees", nargs="+", type=Path, default=[HERE.parent])
    parser.add_argument("--tile", nargs="+", type=int, default=[0], help="0: the tree's own")
    parser.add_argument("--strips", action="store_true", help="sources in 64-row strips")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=HERE / "_cache" / "lazy_graph")
    parser.add_argument("--json", type=Path, help="append the results here")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    results = []
    for scenario in args.only:
        for n in args.sizes:
            for round_ in range(args.repeat):
                for tree in args.trees:
                    for tile in args.tile:
                        found = _one(scenario, tree, n, args.strips, tile, args.cache)
                        found.update(scenario=scenario, n=n, tile=tile, round=round_,
                                     strips=args.strips)  # fmt: skip
                        print(json.dumps(found), flush=True)
                        results.append(found)
    if args.json:
        prior = json.loads(args.json.read_text()) if args.json.exists() else []
        prior.append({"machine": machine(), "runs": results})
        args.json.write_text(json.dumps(prior, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
