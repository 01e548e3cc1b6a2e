"""Where a CPU run's time goes, end to end: every entry point against the compute bound.

On one stack (default the 2048^2 x 51 uint16 whole-z Zstd store of ``_stacks``), W threads,
in rounds, each case once a round in this order (the first run of the process beforehand
loads the kernels and does the imports):

* ``a_kernel``: ``fuse_block`` (compiled) on the run's blocks with their halo, already in
  memory, on W threads: the compute bound;
* ``b_read``: a read-only pass over the store (``da.from_zarr(a).max()``);
* ``c_fuse_zarr_levels0`` / ``d_fuse_zarr``: ``fuse_zarr`` on the threads scheduler,
  ``levels=0`` / the default pyramid (in this warm process);
* ``e_cli``: ``python -m fstack_dask fuse SRC DST`` (a new process: imports, kernel load);
* ``f_cli_processes``: the same with ``--scheduler processes``;
* ``g_cli_resume_done``: ``--resume`` of e's finished output;
* ``h_lazy_to_zarr``: ``fuse(da.from_zarr(a)).to_zarr(dst)``.

Each case's wall time and CPU time (user + system of this process and its children): on a
machine shared with other work the wall clock drifts by 2x, CPU seconds by about 10 %; the
ratios to a + b are of the medians over the rounds. ``PYTHONDONTWRITEBYTECODE`` makes every
new process compile its imports (0.2-0.5 s more); unset it (or set ``PYTHONPYCACHEPREFIX``)
for what an installed package costs.

Usage::

    python benchmarks/end_to_end.py --rounds 3 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _stacks import stack_path  # noqa: E402


def _cpu() -> float:
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN))  # fmt: skip
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cases(src: Path, out: Path, workers: int, block: int) -> dict:
    import dask
    import dask.array as da
    import zarr

    import fstack_dask
    from fstack_dask import overlap_depth
    from fstack_dask._algorithm.block import fuse_block

    array = zarr.open_array(str(src / "0"), mode="r")
    held: list = []

    def kernel() -> None:
        if not held:
            held.append(array[...])
        stack, halo = held[0], overlap_depth(9)
        ny, nx = stack.shape[-2:]
        regions = [(slice(max(0, y - halo), y + block + halo),
                    slice(max(0, x - halo), x + block + halo))
                   for y in range(0, ny, block) for x in range(0, nx, block)]  # fmt: skip
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda r: fuse_block(stack[:, r[0], r[1]], engine="compiled"), regions))

    def read() -> None:
        da.from_zarr(array).max().compute(scheduler="threads", num_workers=workers)

    def fuse_zarr(name: str, **kwargs) -> None:
        shutil.rmtree(out / name, ignore_errors=True)
        with dask.config.set(num_workers=workers):
            fstack_dask.fuse_zarr(str(src), str(out / name), scheduler="threads",
                                  progress=False, **kwargs)  # fmt: skip

    def cli(name: str, *extra: str, fresh: bool = True) -> None:
        if fresh:
            shutil.rmtree(out / name, ignore_errors=True)
        command = [sys.executable, "-m", "fstack_dask", "fuse", str(src), str(out / name)]
        subprocess.run([*command, "--no-progress", *extra], check=True, stdout=subprocess.DEVNULL)

    def lazy() -> None:
        shutil.rmtree(out / "h.zarr", ignore_errors=True)
        with dask.config.set(num_workers=workers, scheduler="threads"):
            fstack_dask.fuse(da.from_zarr(array), axes="zyx").to_zarr(str(out / "h.zarr"))

    return {
        "a_kernel": kernel,
        "b_read": read,
        "c_fuse_zarr_levels0": lambda: fuse_zarr("c.zarr", levels=0),
        "d_fuse_zarr": lambda: fuse_zarr("d.zarr"),
        "e_cli": lambda: cli("e.zarr"),
        "f_cli_processes": lambda: cli("f.zarr", "--scheduler", "processes"),
        "g_cli_resume_done": lambda: cli("e.zarr", "--resume", fresh=False),
        "h_lazy_to_zarr": lazy,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=HERE / "_cache")
    parser.add_argument("--stack", default="grey2048", help="a _stacks name (whole-z layout)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--block", type=int, default=512, help="the runs' block (a_kernel)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="abcdefgh", help="the cases' letters")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    src = stack_path(args.stack, "whole-z", args.cache)
    out = args.cache / "end_to_end"
    out.mkdir(exist_ok=True)
    run = {k: f for k, f in cases(src, out, args.workers, args.block).items()
           if k[0] in args.only}  # fmt: skip
    run.get("a_kernel", lambda: None)()
    run.get("c_fuse_zarr_levels0", lambda: None)()  # the imports, the kernel loaded
    wall: dict[str, list[float]] = {k: [] for k in run}
    cpu: dict[str, list[float]] = {k: [] for k in run}
    for _ in range(args.rounds):
        for key, case in run.items():
            c0, t0 = _cpu(), time.perf_counter()
            case()
            wall[key].append(time.perf_counter() - t0)
            cpu[key].append(_cpu() - c0)
        print(json.dumps({k: (round(wall[k][-1], 2), round(cpu[k][-1], 2)) for k in run}),
              f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in run}
    bound = None
    if {"a_kernel", "b_read"} <= set(med):
        bound = [med["a_kernel"][i] + med["b_read"][i] for i in (0, 1)]
    print(f"{'case':22} {'wall s':>7} {'CPU s':>7} {'CPU range':>12} {'wall/(a+b)':>10} "
          f"{'CPU/(a+b)':>9}")  # fmt: skip
    for key, (w, c) in med.items():
        ratios = f"{w / bound[0]:10.2f} {c / bound[1]:9.2f}" if bound else ""
        spread = f"{min(cpu[key]):.2f}-{max(cpu[key]):.2f}"
        print(f"{key:22} {w:7.2f} {c:7.2f} {spread:>12} {ratios}")
    if args.json:
        args.json.write_text(json.dumps({"wall_s": wall, "cpu_s": cpu, "rounds": args.rounds,
                                         "load": os.getloadavg()}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
