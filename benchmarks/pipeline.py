"""The host pipeline alone: what any engine, however fast, could reach end to end (issue 19).

``fuse_zarr`` reads each block with its halo, fuses it, writes it and its done-marker. On a
GPU the kernel is a tenth of a block's time (RESULTS "GPU"), so the rest, the host's work,
decides the end-to-end speed. This measures that rest on any machine: per stack, in one
child process per round (each figure the best of ``--repeat`` runs, interleaved, after a
first run that loads the kernels), on the threads scheduler with W threads, ``levels=0``:

* ``read``: a read-only pass over the store (``da.from_zarr(a).max()``), every chunk decoded
  once: the storage's own speed;
* ``pipeline``: ``fuse_zarr`` with the kernel replaced by one that costs nothing (it returns
  the middle plane: the same reads, assembly, digests, writes and markers);
* ``fuse``: ``fuse_zarr`` itself (the CPU engine).

``read / pipeline`` is the most ``read / cuda`` could be with an infinitely fast GPU (issue
19 asks >= 0.7); ``pipeline / fuse`` is the host's share of a CPU run. With ``--tree
LABEL=PATH`` (repeatable) each round runs every tree's package in turn, so that two versions
are compared within the same minutes (the 2-core VM drifts by 30 %); the figures are the
medians of the rounds.

Usage::

    python benchmarks/pipeline.py --json benchmarks/pipeline.json
    git worktree add /tmp/before HEAD~1
    python benchmarks/pipeline.py --tree before=/tmp/before --tree after=. --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _stacks import stack_path  # noqa: E402
from run import child, machine  # noqa: E402

ROUND = """
import sys
sys.path.insert(0, {tree!r})  # before the working directory, which python -c puts first
import json, shutil, time, dask, dask.array as da, numpy as np, zarr, fstack_dask
import fstack_dask._algorithm.block as block

compiled = block._fuse_compiled

def free(stack, nhsize, focus, alpha, sth, rgb, *, s_fill, blend=True):
    # no arithmetic: the middle plane, and 2-D maps of the sizes the engines return (S defined
    # everywhere, so that no block waits for its image's smallest S)
    middle = np.array(stack[:, stack.shape[1] // 2] if rgb else stack[stack.shape[0] // 2])
    yx = stack.shape[-2:]
    return middle, np.zeros(yx, np.float32), np.zeros(yx, np.intp), np.ones(yx, np.float64)

def fuse(kernel):
    block._fuse_compiled = kernel
    shutil.rmtree("{dst}", ignore_errors=True)
    with dask.config.set(num_workers={w}):
        t = time.perf_counter()
        fstack_dask.fuse_zarr("{src}", "{dst}", scheduler="threads", progress=False, levels=0)
        return time.perf_counter() - t

def read():
    a = da.from_zarr(zarr.open_array("{src}/0", mode="r"))
    with dask.config.set(num_workers={w}):
        t = time.perf_counter()
        a.max().compute(scheduler="threads")
        return time.perf_counter() - t

fuse(compiled)  # this process's first run: the kernels loaded, the imports done
read()  # the first read-only pass of a process is 0.2-0.3 s slower than the next ones
times = dict(read=[], pipeline=[], fuse=[])
for _ in range({repeat}):  # interleaved, the best of each
    times["read"].append(read())
    times["pipeline"].append(fuse(free))
    times["fuse"].append(fuse(compiled))
print(json.dumps(dict({{k: min(v) for k, v in times.items()}}, package=fstack_dask.__file__)))
"""


def measure(
    src: Path, dst: Path, workers: int, rounds: int, repeat: int, trees: dict[str, Path]
) -> dict:
    times: dict[str, dict[str, list[float]]] = {t: {} for t in trees}
    for _ in range(rounds):
        for label, tree in trees.items():  # the trees alternate within each round
            found = child(ROUND.format(src=src, dst=dst, w=workers, repeat=repeat,
                                       tree=str(tree)))  # fmt: skip
            if not found["package"].startswith(str(tree)):
                raise RuntimeError(f"tree {label}: imported {found['package']}, not {tree}")
            for key in ("read", "pipeline", "fuse"):
                times[label].setdefault(key, []).append(found[key])
    out = {}
    for label, runs in times.items():
        med = {k: statistics.median(v) for k, v in runs.items()}
        out[label] = {
            "median_s": med,
            "all_s": runs,
            "read_over_pipeline": med["read"] / med["pipeline"],
            "pipeline_over_fuse": med["pipeline"] / med["fuse"],
        }
        print(f"  {label}: read {med['read']:.2f} s, pipeline {med['pipeline']:.2f} s, fuse "
              f"{med['fuse']:.2f} s (medians of {rounds}); read / pipeline "
              f"{out[label]['read_over_pipeline']:.2f}, pipeline / fuse "
              f"{out[label]['pipeline_over_fuse']:.2f}", flush=True)  # fmt: skip
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=HERE / "_cache")
    parser.add_argument("--stacks", nargs="+", default=["grey2048"], help="_stacks names")
    parser.add_argument("--layout", default="whole-z", help="_stacks layout (sharded: units of "
                        "several blocks)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="W threads")
    parser.add_argument("--rounds", type=int, default=3, help="child processes per tree")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each in a child (best)")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                        help="a tree of the package to measure (default: this one)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write (update) the results here")
    parser.add_argument("--tag", help="appended to the result's key (keeps earlier results)")
    args = parser.parse_args(argv)
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": str(HERE.parent)}
    trees = {label: Path(path).resolve() for label, path in trees.items()}
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}", flush=True)
    results = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
    for name in args.stacks:
        src = stack_path(name, args.layout, args.cache)
        found = measure(src, args.cache / "pipeline.fused.zarr", args.workers, args.rounds,
                        args.repeat, trees)  # fmt: skip
        key = name if args.layout == "whole-z" else f"{name} {args.layout}"
        key = f"{key} W={args.workers}" + (f" ({args.tag})" if args.tag else "")
        results[key] = found
        results["machine"] = machine()
        results["measured"] = time.strftime("%Y-%m-%d %H:%M")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
