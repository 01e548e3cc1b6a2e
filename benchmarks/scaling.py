"""Decode each chunk once, on any scheduler at any scale (issue 21): measured and planned.

Scenarios (``--only``):

* ``measured``: each run in a fresh child process on a cached benchmark stack (512-px Zstd
  chunks; ``fuse_zarr`` with its defaults and ``levels=0``), wall time, decoded / stored
  bytes and a digest of the output on the threads scheduler with W threads, our worker
  processes (W; a new pool every run) and a ``distributed.LocalCluster`` of W
  single-thread worker processes (``cluster4x4``: W/4 workers x 4 threads), with halo
  exchange and without it (``FSTACK_DASK_HALO_EXCHANGE=0``: each block reads its halo
  through the unit cache). Each in a child process: its first run (a new process, new
  workers: the kernels loaded) timed apart from the warm ones that follow.
* ``paired``: threads and a LocalCluster of W single-thread workers alternated in one child
  (the 2-core VM's speed drifts by 30 % from minute to minute: a ratio is taken within each
  pair): a threads run with no cluster alive, then a new cluster's first run and a warm run;
  the cluster with our allocator setting (``_runs.allocator``) and without it (its ``hold``
  made a no-op on the workers); each process's user and system CPU seconds.
* ``fresh``: a new LocalCluster of W single-thread workers, its first run then a warm one,
  each block's own seconds (from its outcome: assembling, fusing, writing; the kernel's
  loading too where a worker pays it): a fresh worker's first block against a warm block.
* ``compute``: the compute bound, the plan's blocks with their halos already in memory,
  fused by ``fuse_block`` on W threads (nothing read, written or scheduled).
* ``planned``: a dry run of halo exchange's plan (``_runs.dry_run``: nothing is read or
  computed) for a 100 000 x 100 000 x 21 uint16 stack in 512-px chunks on 16, 64 and 256
  single-thread workers and on 4 workers x 4 threads, and for the 16-core node's
  4096 x 4096 x 51 stack on 16 x 1 and 4 x 4, at the default memory per task: the pixels
  each worker would decode against the image's, and the blocks each would fuse; the same in
  1024-px units (large chunks or shards), whose 512-px blocks go by cells of one unit.
* ``driver``: a metadata-only source (no chunk stored: decoding is filling zeros) in tiny
  blocks, >= 100 000 of them, fused on a cluster of a ``dask scheduler`` and W ``dask
  worker`` processes started apart from the driver (as on an HPC cluster): the driver
  process's CPU seconds per block, its peak memory, and the scheduler's CPU seconds.

Usage::

    python benchmarks/scaling.py --json benchmarks/scaling.json      # everything, ~10 min
    python benchmarks/scaling.py --only planned
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _stacks import stack_path  # noqa: E402
from run import REPORTS, child, machine  # noqa: E402

SCENARIOS = ("measured", "paired", "fresh", "compute", "planned", "driver")
KINDS = ("threads", "processes", "cluster", "cluster4x4")

# One run: "kind" is threads, processes or cluster; a cluster's child runs fresh then warm.
FUSE = (
    REPORTS
    + """
import hashlib, json, os, shutil, time, dask, zarr, fstack_dask

def once(scheduler):
    shutil.rmtree("{dst}", ignore_errors=True)
    reports.items.clear()
    with dask.config.set(num_workers={w}):
        t = time.perf_counter()
        g = fstack_dask.fuse_zarr("{src}", "{dst}", scheduler=scheduler, progress=False,
                                  levels=0)
        wall = time.perf_counter() - t
    r = reports.items[-1]
    nbytes = zarr.open_group("{src}", mode="r")["0"].nbytes
    digest = hashlib.sha256(g["0"][...].tobytes()).hexdigest()[:16]
    return {{"wall_s": wall, "decoded_ratio": r.decoded_bytes / nbytes, "digest": digest}}

if __name__ == "__main__":
    if "{kind}".startswith("cluster"):
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers={w} // {tpw}, threads_per_worker={tpw}, processes=True,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            runs = [once(client) for _ in range({repeat} + 1)]
    else:  # the first run in a new process loads the kernels, as the first on a new cluster
        runs = [once("{kind}") for _ in range({repeat} + 1)]
    out = dict(min(runs[1:], key=lambda r: r["wall_s"]), fresh_s=runs[0]["wall_s"],
               all_wall_s=[r["wall_s"] for r in runs[1:]],
               decoded_ratio=max(r["decoded_ratio"] for r in runs),
               digests=sorted({{r["digest"] for r in runs}}), package=fstack_dask.__file__)
    print(json.dumps(out))
"""
)


def _fuse(kind: str, src: Path, dst: Path, w: int, repeat: int, exchange: bool) -> dict:
    tpw = 4 if kind == "cluster4x4" else 1  # threads per cluster worker
    code = FUSE.format(kind=kind, src=src, dst=dst, w=w, repeat=repeat, tpw=tpw)
    env = {} if exchange else {"FSTACK_DASK_HALO_EXCHANGE": "0"}
    return child(code, env=env)


def scenario_measured(cache: Path, args: argparse.Namespace) -> dict:
    out = {}
    workers, repeat = args.workers, args.repeat
    for name in args.stacks:
        src = stack_path(name, args.layout, cache)
        dst = cache / "scaling.fused.zarr"
        label = name if args.layout == "whole-z" else f"{name} {args.layout}"
        key = f"{label} W={workers}" + (f" ({args.tag})" if args.tag else "")
        table: dict[str, dict] = {}
        variants = (True, False) if args.without_exchange else (True,)
        for kind in args.kinds:  # one child each: a new process's first run, then warm ones
            for exchange in variants:
                run = f"{kind} {'exchange' if exchange else 'no exchange'}"
                found = _fuse(kind, src, dst, workers, repeat, exchange)
                table[run] = {
                    "wall_s": found["wall_s"],
                    "all_wall_s": found.get("all_wall_s", [found["wall_s"]]),
                    "decoded_ratio": found["decoded_ratio"],
                    "digests": sorted(found.get("digests", [found.get("digest")])),
                    "fresh_s": found.get("fresh_s"),
                    "peak_rss_mib": found["peak_rss_mib"],
                    "package": found.get("package"),
                }
                print(f"  {label} W={workers} {run}: {json.dumps(table[run])}", flush=True)
                # saved after every kind: a run cut short (node_check.sh's timeout) keeps it
                base = table.get("threads exchange", {}).get("wall_s")
                for row in table.values():
                    row["vs_threads"] = row["wall_s"] / base if base else None
                digests = {d for row in table.values() for d in row["digests"]}
                out[key] = {"runs": table, "identical": len(digests) == 1}
                _save(args, "measured", out)
    return out


# Threads and a cluster alternated; "plain": the workers' allocator left as the nanny set it.
PAIRED = """
import json, os, shutil, statistics, time, dask, psutil, fstack_dask
from distributed import Client, LocalCluster

def once(scheduler, procs):
    shutil.rmtree("{dst}", ignore_errors=True)
    before = [p.cpu_times() for p in procs]
    with dask.config.set(num_workers={w}):
        t = time.perf_counter()
        fstack_dask.fuse_zarr("{src}", "{dst}", scheduler=scheduler, progress=False, levels=0)
        wall = time.perf_counter() - t
    after = [p.cpu_times() for p in procs]
    return dict(wall_s=wall, user_s=[a.user - b.user for a, b in zip(after, before)],
                system_s=[a.system - b.system for a, b in zip(after, before)])

def plain():
    from fstack_dask._runs import allocator
    allocator.hold = lambda token: None

if __name__ == "__main__":
    me = psutil.Process()
    out = {{}}
    once("threads", [me])  # this process's first run: the kernels loaded
    for variant in ("allocator held", "plain"):
        pairs = []
        for _ in range({repeat}):
            threads = once("threads", [me])  # no cluster alive (an idle one costs ~7 %)
            with LocalCluster(n_workers={w}, threads_per_worker=1, processes=True,
                              dashboard_address=":0") as cluster, Client(cluster) as client:
                if variant == "plain":
                    client.run(plain)
                procs = [me] + [psutil.Process(p) for p in client.run(os.getpid).values()]
                fresh = once(client, procs)  # new workers: the kernels loaded
                pairs.append((threads, once(client, procs), fresh))
        ratios = [c["wall_s"] / t["wall_s"] for t, c, _ in pairs]
        out[variant] = dict(
            median_ratio=statistics.median(ratios), ratios=ratios,
            threads_s=[t["wall_s"] for t, _, _ in pairs],
            cluster_s=[c["wall_s"] for _, c, _ in pairs],
            cluster_fresh_s=[f["wall_s"] for _, _, f in pairs],
            threads_cpu=[[t["user_s"][0], t["system_s"][0]] for t, _, _ in pairs],
            cluster_workers_cpu=[[sum(c["user_s"][1:]), sum(c["system_s"][1:])]
                                 for _, c, _ in pairs],
            cluster_driver_cpu=[[c["user_s"][0], c["system_s"][0]] for _, c, _ in pairs])
    print(json.dumps(out))
"""


def _per_stack(cache: Path, args: argparse.Namespace, scenario: str, code: str, show) -> dict:
    """``code`` (formatted with the stack, dst, W and repeats) in a child per stack; each
    result shown by ``show(name, found)`` and saved under ``scenario``."""
    out = {}
    for name in args.stacks:
        src = stack_path(name, "whole-z", cache)
        dst = cache / "scaling.fused.zarr"
        found = child(code.format(src=src, dst=dst, w=args.workers, repeat=args.repeat))
        show(f"{name} W={args.workers}", found)
        out[f"{name} W={args.workers}"] = found
        _save(args, scenario, out)
    return out


def scenario_paired(cache: Path, args: argparse.Namespace) -> dict:
    def show(label: str, found: dict) -> None:
        for variant, row in found.items():
            if isinstance(row, dict):
                print(f"  {label} cluster/threads, {variant}: median {row['median_ratio']:.2f} "
                      f"of {[round(r, 2) for r in row['ratios']]}", flush=True)  # fmt: skip

    return _per_stack(cache, args, "paired", PAIRED, show)


# A fresh cluster's first blocks against warm ones (each block's seconds, as its outcome says).
FRESH = """
import json, shutil, statistics, time, dask, fstack_dask
from distributed import Client, LocalCluster
from fstack_dask._runs import schedulers

seconds = []
account = schedulers._account
def counting(report, outcomes, bar, shown=0):
    seconds.extend(o.seconds for o in outcomes if o.error is None)
    return account(report, outcomes, bar, shown)
schedulers._account = counting

def once(client):
    shutil.rmtree("{dst}", ignore_errors=True)
    seconds.clear()
    t = time.perf_counter()
    fstack_dask.fuse_zarr("{src}", "{dst}", scheduler=client, progress=False, levels=0)
    return time.perf_counter() - t, list(seconds)

if __name__ == "__main__":
    rows = []
    for _ in range({repeat}):
        with LocalCluster(n_workers={w}, threads_per_worker=1, processes=True,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            fresh_s, fresh = once(client)
            warm_s, warm = once(client)
        typical = statistics.median(warm)
        rows.append(dict(fresh_s=fresh_s, warm_s=warm_s, warm_block_median_s=typical,
                         first_blocks_s=fresh[:{w}], fresh_block_median_s=statistics.median(fresh),
                         first_block_extra_s=max(fresh[:{w}]) - typical))
    print(json.dumps(dict(runs=rows)))
"""


def scenario_fresh(cache: Path, args: argparse.Namespace) -> dict:
    def show(label: str, found: dict) -> None:
        for row in found["runs"]:
            print(f"  {label} fresh cluster: first blocks "
                  f"{[round(x, 2) for x in row['first_blocks_s']]} s, a warm block "
                  f"{row['warm_block_median_s']:.2f} s: +{row['first_block_extra_s']:.2f} s",
                  flush=True)  # fmt: skip

    return _per_stack(cache, args, "fresh", FRESH, show)


# The compute bound: the same blocks (the plan's, with their halos) already in memory, fused
# by fuse_block on W threads; nothing read, written or scheduled.
COMPUTE = (
    REPORTS
    + """
import json, time, numpy as np, zarr
from concurrent.futures import ThreadPoolExecutor
from fstack_dask._algorithm.block import fuse_block
from fstack_dask._runs.fusion import plan_fusion

if __name__ == "__main__":
    plan, _ = plan_fusion("{src}").plan({w}, 1)
    reads = []
    for _ in range(2):  # a read-only pass: every chunk decoded once, zarr's own threads
        t = time.perf_counter()
        data = zarr.open_group("{src}", mode="r")["0"][...]
        reads.append(time.perf_counter() - t)
    blocks = []
    for b in plan.blocks():
        r = plan.region(b)
        blocks.append(np.ascontiguousarray(data[:, r.y[0]:r.y[1], r.x[0]:r.x[1]]))
    del data
    fuse_block(blocks[0][:, :64, :64])  # compiled before the clock starts
    walls = []
    with ThreadPoolExecutor({w}) as pool:
        for _ in range({repeat}):
            t = time.perf_counter()
            list(pool.map(lambda b: fuse_block(b).image, blocks))
            walls.append(time.perf_counter() - t)
    print(json.dumps({{"wall_s": min(walls), "all_wall_s": walls, "blocks": len(blocks),
                      "read_only_s": min(reads),
                      "block": list(plan.block)}}))
"""
)


def scenario_compute(cache: Path, args: argparse.Namespace) -> dict:
    out = {}
    for name in args.stacks:
        src = stack_path(name, "whole-z", cache)
        r = child(COMPUTE.format(src=src, w=args.workers, repeat=args.repeat))
        out[f"{name} W={args.workers}"] = r
        print(f"  compute bound {name} W={args.workers}: {json.dumps(r)}", flush=True)
        _save(args, "compute", out)
    return out


def _stack_meta(path: Path, shape: tuple[int, ...], chunk: int) -> None:
    """A Zarr array with its metadata and no chunk: every read is the fill value."""
    import zarr

    zarr.create_array(str(path), shape=shape, chunks=(shape[0], chunk, chunk), dtype="uint16",
                      dimension_names=list("zyx"), overwrite=True)  # fmt: skip


def scenario_planned(cache: Path, args: argparse.Namespace) -> dict:
    from fstack_dask._runs import waves
    from fstack_dask._runs.dry_run import dry_run
    from fstack_dask._runs.exchange import cells
    from fstack_dask._runs.fusion import plan_fusion

    out = {}
    # the 100 000^2 stack at HPC scale, and the 16-core node's 4096^2 x 51 (8 x 8 blocks); in
    # 512-px chunks, and in 1024-px units (large chunks or shards: 512-px blocks, by cells)
    for n, planes, n_workers, threads, unit in (
        (100_000, 21, 16, 1, 512), (100_000, 21, 64, 1, 512), (100_000, 21, 256, 1, 512),
        (100_000, 21, 4, 4, 512), (4096, 51, 16, 1, 512), (4096, 51, 4, 4, 512),
        (100_000, 21, 16, 1, 1024), (100_000, 21, 64, 1, 1024), (100_000, 21, 256, 1, 1024),
        (4096, 51, 16, 1, 1024), (4096, 51, 4, 4, 1024),
    ):  # fmt: skip
        src = cache / f"planned{n}_{unit}.zarr"
        if not src.exists():
            _stack_meta(src, (planes, n, n), unit)
        # as a run on n_workers processes of `threads` tasks each plans it (Scheduler.workers
        # is the tasks in one process); before 2026-12-05 this passed every worker's tasks as
        # one process's, so the waves' budget was n_workers x too large
        blocks, cache_bytes = plan_fusion(str(src)).plan(threads, n_workers)
        plan = cells(blocks, (unit, unit))  # the grid halo exchange decodes and fuses by
        t = time.perf_counter()
        run = dry_run(plan, itemsize=2, slots=list(range(n_workers)), threads=threads,
                      budget=cache_bytes * n_workers)  # fmt: skip
        seconds = time.perf_counter() - t
        fused = sorted(run.fused.values())
        key = f"{n_workers} x {threads}"
        if n != 100_000:
            key = f"{n}^2 x {planes}, {key}"
        if unit != 512:
            key += f", {unit}-px units"
        out[key] = {
            "decoded_ratio": run.decoded_ratio(plan),
            "fused_once": set(run.fuses.values()) == {1} and len(run.fuses) == plan.n_blocks,
            "block": list(blocks.block),
            "cell": list(plan.block),
            "grid": list(plan.grid),
            "row_segments": _segments(waves, plan, cache_bytes * n_workers, n_workers * threads),
            "idle_workers": sum(f == 0 for f in fused),
            "busiest_vs_even": fused[-1] / (plan.n_blocks / n_workers),
            "dry_run_s": seconds,
        }
        label = key if n != 100_000 else f"{n}^2 x {planes}, {key}"
        print(f"  planned {label}: {json.dumps(out[key])}", flush=True)
    for src in cache.glob("planned*.zarr"):
        shutil.rmtree(src, ignore_errors=True)
    return out


def _segments(waves, plan, budget: int, capacity: int) -> int:
    """The row segments the driver gives a wave of ``plan`` (as many as the memory holds)."""
    core = waves.core_size(plan, 2)
    view = waves.oriented(plan, budget, core)
    width = waves.wave_width(view, budget, core)
    return waves.segments_in_memory(view, width, capacity, waves.depth(view, budget, core))


DRIVER = (
    REPORTS
    + """
import json, resource, time, fstack_dask
from distributed import Client
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
if __name__ == "__main__":
    with Client("{address}") as client:
        base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        c0, t0 = cpu(), time.perf_counter()
        fstack_dask.fuse_zarr("{src}", "{dst}", chunks={block}, scheduler=client,
                              progress=False, levels=0, overwrite=True)
        wall, spent = time.perf_counter() - t0, cpu() - c0
    r = reports.items[-1]
    print(json.dumps({{"wall_s": wall, "driver_cpu_s": spent, "blocks": r.done,
                      "base_rss_mib": base_rss}}))
"""
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scenario_driver(cache: Path, args: argparse.Namespace) -> dict:
    workers = args.workers
    import psutil

    side, planes, block = 10240, 5, 32  # 320 x 320 = 102 400 blocks
    src, dst = cache / "driver.zarr", cache / "driver.fused.zarr"
    _stack_meta(src, (planes, side, side), block)
    address = f"tcp://127.0.0.1:{_free_port()}"
    log = open(cache / "driver.cluster.log", "w")  # noqa: SIM115 - closed below
    dask = [sys.executable, "-m", "dask"]
    scheduler = subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port",
                                  address.rsplit(":", 1)[1], "--dashboard-address", ":0"],
                                 stdout=log, stderr=log)  # fmt: skip
    procs = [scheduler] + [
        subprocess.Popen(
            [*dask, "worker", address, "--nthreads", "1", "--no-dashboard"], stdout=log, stderr=log
        )  # fmt: skip
        for _ in range(workers)
    ]
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
        before = psutil.Process(scheduler.pid).cpu_times()
        r = child(DRIVER.format(address=address, src=src, dst=dst, block=block))
        after = psutil.Process(scheduler.pid).cpu_times()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        log.close()
    sched_cpu = (after.user + after.system) - (before.user + before.system)
    out = {
        "image": f"{side}^2 x {planes} uint16, {block}-px blocks, metadata only",
        "workers": f"{workers} x 1 thread",
        "blocks": r["blocks"],
        "wall_s": r["wall_s"],
        "driver_cpu_s": r["driver_cpu_s"],
        "driver_ms_per_block": 1000 * r["driver_cpu_s"] / r["blocks"],
        "driver_peak_rss_mib": r["peak_rss_mib"],
        "scheduler_cpu_s": sched_cpu,
        "scheduler_ms_per_block": 1000 * sched_cpu / r["blocks"],
    }
    print(f"  driver: {json.dumps(out)}", flush=True)
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(dst, ignore_errors=True)
    return out


def _save(args: argparse.Namespace, scenario: str, found: dict) -> None:
    """Merge ``found`` into the JSON file (after each stack: a run cut short keeps the rest)."""
    if not args.json:
        return
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    results["machine"] = machine()
    results.setdefault(scenario, {}).update(found)
    results[scenario + "_measured"] = time.strftime("%Y-%m-%d %H:%M")
    args.json.write_text(json.dumps(results, indent=1, default=str))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--cache", type=Path, default=HERE / "_cache")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="W")
    parser.add_argument("--stacks", nargs="+", default=["grey2048"], help="_stacks names")
    parser.add_argument("--layout", default="whole-z", help="_stacks layout of 'measured'")
    parser.add_argument(
        "--kinds", nargs="+", choices=KINDS, default=["threads", "processes", "cluster"],
        help="schedulers measured (cluster4x4: W/4 workers x 4 threads)",
    )  # fmt: skip
    parser.add_argument("--without-exchange", action=argparse.BooleanOptionalAction,
                        default=True, help="also measure each with halo exchange off")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write (update) the results here")
    parser.add_argument("--tag", help="appended to 'measured' keys (keeps earlier results)")
    args = parser.parse_args(argv)
    if "cluster4x4" in args.kinds and "measured" in args.only and args.workers < 4:
        parser.error("--kinds cluster4x4 needs --workers 4 or more (W/4 workers of 4 threads)")
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}", flush=True)
    for name in args.only:
        print(f"{name} ...", flush=True)
        found = globals()[f"scenario_{name}"](args.cache, args)
        _save(args, name, found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
