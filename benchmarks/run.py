"""Benchmark fuse_zarr against the reference, Zarr to Zarr, on synthetic stacks.

Each measurement runs in its own child process; wall time is taken around the
work inside the child and peak resident memory from outside (``os.wait4``'s
rusage of that child). Stacks are generated once and cached as Zarr.

Usage::

    python benchmarks/run.py                       # all sizes, reference where it fits
    python benchmarks/run.py --sizes grey2048 --repeat 3
    python benchmarks/run.py --graph-only          # planning a 100 000^2 x 40 run

The reference is coppafish 0.1.6 ``extract/fstack.py`` (``pip install --no-deps
coppafish==0.1.6 opencv-python-headless``), run in memory on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name: (y, x, planes, dtype, rgb, axes, reference?)
SIZES = {
    "grey2048": ((2048, 2048), 51, "uint16", False, True),
    "rgb2048": ((2048, 2048), 21, "uint8", True, True),
    "u8_2048x32": ((2048, 2048), 32, "uint8", False, False),  # the 8192^2 case's per-voxel twin
    "u8_8192x32": ((8192, 8192), 32, "uint8", False, False),  # reference would need ~27 GB
}
SOURCE_CHUNK = 512


def _child(code: str, timeout: float = 3600) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line. Adds peak RSS."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    start = time.perf_counter()
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read()
    err = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
    result["child_wall_s"] = time.perf_counter() - start
    return result


def ensure_stack(name: str, cache: Path) -> Path:
    """Write the synthetic stack for ``name`` to ``cache`` as OME-Zarr once."""
    (ny, nx), planes, dtype, rgb, _ = SIZES[name]
    path = cache / f"{name}.ome.zarr"
    if (path / "zarr.json").exists():
        return path
    code = f"""
import numpy as np, zarr, json, shutil
from fstack_dask import synthetic_stack, write_stack
ny, nx, planes, rgb = {ny}, {nx}, {planes}, {rgb}
tile = min(ny, 2048)
d = synthetic_stack((tile, tile), planes, rgb=rgb, dtype="{dtype}", noise=0.02, seed=0).stack
zyx = np.moveaxis(d, (3, 2), (0, 1)) if rgb else np.moveaxis(d, 2, 0)
axes = "czyx" if rgb else "zyx"
if ny == tile:
    write_stack("{path}.tmp", np.ascontiguousarray(zyx), axes=axes,
                chunks=(1,) * (zyx.ndim - 3) + (planes, {SOURCE_CHUNK}, {SOURCE_CHUNK}))
else:  # larger sizes: tile the 2048^2 stack (periodic content, same statistics)
    small = np.ascontiguousarray(zyx)
    write_stack("{path}.tmp", small[..., :1, :1], axes=axes)
    g = zarr.open_group("{path}.tmp", mode="r+")
    del g["0"]
    arr = g.create_array("0", shape=small.shape[:-2] + (ny, nx), dtype=small.dtype,
                         chunks=(1,) * (zyx.ndim - 3) + (planes, {SOURCE_CHUNK}, {SOURCE_CHUNK}),
                         dimension_names=list(axes))
    for i in range(ny // tile):
        for j in range(nx // tile):
            arr[..., i * tile:(i + 1) * tile, j * tile:(j + 1) * tile] = small
import os; os.replace("{path}.tmp", "{path}")
print(json.dumps({{}}))
"""
    cache.mkdir(parents=True, exist_ok=True)
    print(f"  generating {name} ...", flush=True)
    _child(code)
    return path


def run_fstack(src: Path, dst: Path, scheduler: str, extra: str = "") -> dict:
    code = f"""
import json, shutil, time
shutil.rmtree("{dst}", ignore_errors=True)
import fstack_dask
t = time.perf_counter()
g = fstack_dask.fuse_zarr("{src}", "{dst}", scheduler="{scheduler}", progress=False{extra})
print(json.dumps({{"wall_s": time.perf_counter() - t, "shape": list(g["0"].shape),
                  "chunks": list(g["0"].chunks)}}))
"""
    return _child(code)


def run_read_only(src: Path, scheduler: str) -> dict:
    code = f"""
import json, time, dask.array as da, zarr
a = zarr.open_group("{src}", mode="r")["0"]
t = time.perf_counter()
da.from_zarr(a).max().compute(scheduler="{scheduler}")  # decode every chunk once
print(json.dumps({{"wall_s": time.perf_counter() - t}}))
"""
    return _child(code)


def run_reference(src: Path, dst: Path) -> dict:
    code = f"""
import importlib.util, json, pathlib, time, warnings, numpy as np, zarr
spec = importlib.util.find_spec("coppafish")
path = pathlib.Path(spec.submodule_search_locations[0]) / "extract" / "fstack.py"
ms = importlib.util.spec_from_file_location("ref", path); ref = importlib.util.module_from_spec(ms)
ms.loader.exec_module(ref)
warnings.simplefilter("ignore")
t0 = time.perf_counter()
a = zarr.open_group("{src}", mode="r")["0"][...]
stack = np.moveaxis(a, (0, 1), (3, 2)) if a.ndim == 4 else np.moveaxis(a, 0, 2)  # y x z (c)
stack = np.ascontiguousarray(stack)
t1 = time.perf_counter()
out = ref.focus_stack(stack)
t2 = time.perf_counter()
zarr.create_array("{dst}", data=np.asarray(out), overwrite=True)
t3 = time.perf_counter()
print(json.dumps({{"wall_s": t2 - t1, "read_s": t1 - t0, "write_s": t3 - t2,
                  "zarr_to_zarr_s": t3 - t0}}))
"""
    return _child(code)


def graph_build(ny: int = 100_000, nx: int = 100_000, planes: int = 40) -> dict:
    """Plan (not compute) fuse_zarr's run for a huge stack, and walk every block of it.

    There is no task graph any more: the run walks the plan lazily and keeps a bounded
    window of blocks in flight, so what is measured is the planning (from metadata) and
    the walk over every block (one task each). The result keeps the keys of the graph
    era: ``tasks`` are the blocks, ``materialize_s`` is the walk.
    """
    code = f"""
import json, tempfile, time, zarr
from fstack_dask._fusion import plan_fusion
with tempfile.TemporaryDirectory() as tmp:
    zarr.create_array(tmp + "/big.zarr", shape=({planes}, {ny}, {nx}), dtype="uint16",
                      chunks=({planes}, 1024, 1024), dimension_names=["z", "y", "x"])
    t = time.perf_counter()
    fusion = plan_fusion(tmp + "/big.zarr", memory_per_task=256 * 2**20)
    plan, cache_bytes = fusion.plan(2)
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    n_walked = sum(1 for _ in plan.blocks())
    t_walk = time.perf_counter() - t
print(json.dumps({{"build_s": t_build, "materialize_s": t_walk, "tasks": n_walked,
                  "blocks": plan.n_blocks, "tasks_per_block": n_walked / plan.n_blocks,
                  "block": list(plan.block), "strip": plan.strip}}))
"""
    return _child(code)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--cache", type=Path, default=HERE / "_cache")
    parser.add_argument("--scheduler", default="threads")
    parser.add_argument("--repeat", type=int, default=1, help="fuse_zarr runs per size (best)")
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--graph-only", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    print(f"machine: {machine()}")
    results: dict = {"machine": machine(), "sizes": {}}
    if not args.graph_only:
        for name in args.sizes:
            (ny, nx), planes, dtype, rgb, with_ref = SIZES[name]
            voxels = ny * nx * planes * (3 if rgb else 1)
            src = ensure_stack(name, args.cache)
            dst = args.cache / f"{name}.fused.zarr"
            read = run_read_only(src, args.scheduler)
            runs = [run_fstack(src, dst, args.scheduler) for _ in range(max(1, args.repeat))]
            best = min(runs, key=lambda r: r["wall_s"])
            row = {
                "voxels": voxels,
                "fstack_wall_s": best["wall_s"],
                "fstack_all_wall_s": [r["wall_s"] for r in runs],
                "fstack_peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                "fstack_mvox_per_s": voxels / best["wall_s"] / 1e6,
                "block": best["chunks"],
                "read_only_s": read["wall_s"],
                "ratio_to_read_only": best["wall_s"] / read["wall_s"],
            }
            if with_ref and not args.no_reference:
                ref = run_reference(src, args.cache / f"{name}.ref.zarr")
                row.update(
                    reference_wall_s=ref["wall_s"],
                    reference_zarr_to_zarr_s=ref["zarr_to_zarr_s"],
                    reference_peak_rss_mib=ref["peak_rss_mib"],
                    speedup_vs_reference=ref["wall_s"] / best["wall_s"],
                    memory_ratio_vs_reference=ref["peak_rss_mib"] / row["fstack_peak_rss_mib"],
                )
            results["sizes"][name] = row
            print(f"{name}: " + json.dumps({k: v for k, v in row.items()}, default=str))
    g = graph_build()
    results["graph_100000x100000x40"] = g
    print("graph 100000 x 100000 x 40: " + json.dumps(g))
    print(textwrap.dedent(summary(results)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def summary(results: dict) -> str:
    lines = [
        "",
        "| stack | voxels | fstack_dask s | Mvox/s | peak RSS MiB | read-only s | x read-only "
        "| reference s | reference RSS MiB | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["sizes"].items():
        ref_s = f"{r['reference_wall_s']:.1f}" if "reference_wall_s" in r else "skipped"
        ref_m = f"{r['reference_peak_rss_mib']:.0f}" if "reference_peak_rss_mib" in r else "-"
        sp = f"{r['speedup_vs_reference']:.1f}x" if "speedup_vs_reference" in r else "-"
        lines.append(
            f"| {name} | {r['voxels'] / 1e6:.0f} M | {r['fstack_wall_s']:.2f} "
            f"| {r['fstack_mvox_per_s']:.1f} | {r['fstack_peak_rss_mib']:.0f} "
            f"| {r['read_only_s']:.2f} | {r['ratio_to_read_only']:.1f} | {ref_s} | {ref_m} | {sp} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
