"""Throughput, memory and planning of fstack_dask, against the reference and a read-only pass.

Every measurement runs in a fresh child process; wall times are taken inside the child around
the work, except the "process" scenario, which times whole command lines from start to exit as
a user runs them. Peak resident memory is the child's ``ru_maxrss`` from ``os.wait4``.

Scenarios (``--only``):

* ``process``: ``fstack-dask fuse`` against the reference (coppafish 0.1.6 ``focus_stack``
  reading and writing Zarr), whole processes, 2048^2 x 51 uint16 and 2048^2 x 21 RGB.
* ``workers``: ``fuse_zarr`` with 1, 2 and 4 threads: throughput, the share of wall time the
  workers spend computing blocks, decoded bytes / stored bytes; ``fuse`` to memory and a
  read-only pass with the same workers.
* ``layouts``: whole-z chunks, one plane per chunk, sharded.
* ``cluster``: a ``distributed.LocalCluster`` of 2 single-threaded workers against threads.
* ``memory``: peak memory at 2048^2 and 8192^2 against ``workers x memory_per_task + base``.
* ``planning``: 10^5 x 10^5 x 21 with 64 px chunks and 10^6 x 10^6 x 21: time to the first
  finished block and the driver's memory; ``fstack-dask info``.
* ``memory_fuse``: in-memory ``focus_stack`` on 1024^2 x 21 RGB against focusweave.

Usage::

    python benchmarks/run.py --json benchmarks/results.json       # everything, ~15 min
    python benchmarks/run.py --only workers layouts               # some scenarios
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _stacks import SIZES, stack_path  # noqa: E402

SCENARIOS = ("process", "workers", "layouts", "cluster", "memory", "planning", "memory_fuse")

# A child collects fuse_zarr's run reports (logged at DEBUG by fstack_dask._runs.schedulers).
REPORTS = """
import logging
class _Reports(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG); self.items = []
    def emit(self, record):
        if hasattr(record, "fstack_report"): self.items.append(record.fstack_report)
reports = _Reports()
logging.getLogger("fstack_dask._runs.schedulers").addHandler(reports)
logging.getLogger("fstack_dask._runs.schedulers").setLevel(logging.DEBUG)
"""


def child(code: str, timeout: float = 3600, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a fresh interpreter (its environment updated with ``env``); its last
    stdout line is JSON. Adds peak RSS."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )  # fmt: skip
    start = time.perf_counter()
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"child failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    result["child_wall_s"] = time.perf_counter() - start
    return result


def timed_process(cmd: list[str], repeat: int) -> dict:
    """Best wall time (start to exit) and peak memory of a command."""
    walls, peaks = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - start)
        peaks.append(usage.ru_maxrss / 1024)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{cmd} failed: {proc.stderr.read()[-2000:]}")
    return {"wall_s": min(walls), "all_wall_s": walls, "peak_rss_mib": max(peaks)}


def voxels(name: str) -> int:
    (ny, nx), planes, _, rgb = SIZES[name]
    return ny * nx * planes * (3 if rgb else 1)


# ------------------------------------------------------------------------ scenarios


REFERENCE = """
import importlib.util, pathlib, sys, warnings, numpy as np, zarr
spec = importlib.util.find_spec("coppafish")
path = pathlib.Path(spec.submodule_search_locations[0]) / "extract" / "fstack.py"
ms = importlib.util.spec_from_file_location("ref", path)
ref = importlib.util.module_from_spec(ms); ms.loader.exec_module(ref)
warnings.simplefilter("ignore")
a = zarr.open_group(sys.argv[1], mode="r")["0"][...]
yxz = np.moveaxis(a, (0, 1), (3, 2)) if a.ndim == 4 else np.moveaxis(a, 0, 2)
stack = np.ascontiguousarray(yxz)
zarr.create_array(sys.argv[2], data=np.asarray(ref.focus_stack(stack)), overwrite=True)
"""


def scenario_process(cache: Path, repeat: int) -> dict:
    out = {}
    for name in ("grey2048", "rgb2048"):
        src = stack_path(name, "whole-z", cache)
        dst = cache / "process.fused.zarr"
        ours = []
        for _ in range(repeat):
            shutil.rmtree(dst, ignore_errors=True)
            ours.append(timed_process([sys.executable, "-m", "fstack_dask", "fuse", str(src),
                                       str(dst), "--no-progress"], 1))  # fmt: skip
        best = min(ours, key=lambda r: r["wall_s"])
        ref = timed_process([sys.executable, "-c", REFERENCE, str(src),
                             str(cache / "process.ref.zarr")], max(1, repeat - 1))  # fmt: skip
        out[name] = {
            "voxels": voxels(name),
            "fstack_s": best["wall_s"],
            "fstack_all_s": [r["wall_s"] for r in ours],
            "fstack_rss_mib": best["peak_rss_mib"],
            "reference_s": ref["wall_s"],
            "reference_all_s": ref["all_wall_s"],
            "reference_rss_mib": ref["peak_rss_mib"],
            "speedup": ref["wall_s"] / best["wall_s"],
        }
        print(f"  process {name}: {json.dumps(out[name])}", flush=True)
    return out


FUSE_ZARR = (
    REPORTS
    + """
import json, shutil, time, dask, zarr, fstack_dask
shutil.rmtree("{dst}", ignore_errors=True)
with dask.config.set(num_workers={w}):
    t = time.perf_counter()
    g = fstack_dask.fuse_zarr("{src}", "{dst}", progress=False, levels=0{extra})
    wall = time.perf_counter() - t
r = reports.items[-1]
nbytes = zarr.open_group("{src}", mode="r")["0"].nbytes
print(json.dumps({{"wall_s": wall, "busy": r.busy_fraction,
                  "decoded_ratio": r.decoded_bytes / nbytes,
                  "cache_peak_mib": r.cache_peak_bytes / 2**20, "workers": r.workers,
                  "block": list(g["0"].chunks[-2:])}}))
"""
)

FUSE_MEMORY = """
import json, time, dask, dask.array as da, zarr, fstack_dask
a = zarr.open_group("{src}", mode="r")["0"]
lazy = fstack_dask.fuse(da.from_zarr(a), axes="{axes}", chunks={block})
with dask.config.set(num_workers={w}, scheduler="threads"):
    t = time.perf_counter()
    lazy.compute()
print(json.dumps({{"wall_s": time.perf_counter() - t}}))
"""

READ_ONLY = """
import json, time, dask, dask.array as da, zarr
a = zarr.open_group("{src}", mode="r")["0"]
with dask.config.set(num_workers={w}, scheduler="threads"):
    t = time.perf_counter()
    da.from_zarr(a).max().compute()  # decode every chunk once
print(json.dumps({{"wall_s": time.perf_counter() - t}}))
"""


def _best(code: str, repeat: int) -> dict:
    runs = [child(code) for _ in range(repeat)]
    best = min(runs, key=lambda r: r["wall_s"])
    best["all_wall_s"] = [r["wall_s"] for r in runs]
    return best


def scenario_workers(cache: Path, repeat: int) -> dict:
    name = "grey2048"
    src = stack_path(name, "whole-z", cache)
    dst = cache / "workers.fused.zarr"
    out = {}
    for w in (1, 2, 4):
        ours = _best(FUSE_ZARR.format(src=src, dst=dst, w=w, extra=""), repeat)
        block = ours["block"][0]
        mem = _best(FUSE_MEMORY.format(src=src, axes="zyx", block=block, w=w), repeat)
        read = _best(READ_ONLY.format(src=src, w=w), repeat)
        out[w] = {
            "fuse_zarr_s": ours["wall_s"], "fuse_zarr_all_s": ours["all_wall_s"],
            "mvox_s": voxels(name) / ours["wall_s"] / 1e6, "busy": ours["busy"],
            "decoded_ratio": ours["decoded_ratio"], "cache_peak_mib": ours["cache_peak_mib"],
            "rss_mib": ours["peak_rss_mib"], "block": ours["block"],
            "fuse_memory_s": mem["wall_s"], "read_only_s": read["wall_s"],
            "zarr_vs_memory": mem["wall_s"] / ours["wall_s"],
        }  # fmt: skip
        print(f"  workers {w}: {json.dumps(out[w])}", flush=True)
    return out


def scenario_layouts(cache: Path, repeat: int) -> dict:
    out = {}
    for layout in ("whole-z", "z-chunked", "sharded"):
        src = stack_path("grey2048", layout, cache)
        r = _best(FUSE_ZARR.format(src=src, dst=cache / "layout.fused.zarr", w=2, extra=""), repeat)
        out[layout] = {"wall_s": r["wall_s"], "all_wall_s": r["all_wall_s"],
                       "decoded_ratio": r["decoded_ratio"], "block": r["block"],
                       "rss_mib": r["peak_rss_mib"]}  # fmt: skip
        print(f"  layout {layout}: {json.dumps(out[layout])}", flush=True)
    base = out["whole-z"]["wall_s"]
    for layout in out:
        out[layout]["vs_whole_z"] = out[layout]["wall_s"] / base
    return out


CLUSTER = (
    REPORTS
    + """
import json, shutil, time, zarr, fstack_dask
from distributed import Client, LocalCluster
if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        fstack_dask.fuse_zarr("{src}", "{dst}.warm", progress=False, levels=0)  # workers warm
        shutil.rmtree("{dst}", ignore_errors=True)
        t = time.perf_counter()
        fstack_dask.fuse_zarr("{src}", "{dst}", progress=False, levels=0)
        wall = time.perf_counter() - t
    r = reports.items[-1]
    print(json.dumps({{"wall_s": wall, "decoded_ratio": r.decoded_bytes /
                      zarr.open_group("{src}", mode="r")["0"].nbytes}}))
"""
)


def scenario_cluster(cache: Path, repeat: int) -> dict:
    src = stack_path("grey2048", "whole-z", cache)
    dst = cache / "cluster.fused.zarr"
    runs = []
    for _ in range(repeat):
        shutil.rmtree(f"{dst}.warm", ignore_errors=True)
        script = cache / "cluster_child.py"
        script.write_text(textwrap.dedent(CLUSTER.format(src=src, dst=dst)))
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              check=True)  # fmt: skip
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["wall_s"])
    threads = _best(FUSE_ZARR.format(src=src, dst=dst, w=2, extra=""), repeat)
    out = {"cluster_s": best["wall_s"], "cluster_all_s": [r["wall_s"] for r in runs],
           "cluster_decoded_ratio": best["decoded_ratio"], "threads_s": threads["wall_s"],
           "ratio": best["wall_s"] / threads["wall_s"]}  # fmt: skip
    print(f"  cluster: {json.dumps(out)}", flush=True)
    return out


MEMORY = (
    REPORTS
    + """
import json, resource, shutil, time, dask, fstack_dask
import fstack_dask._runs.fuse_zarr, fstack_dask._runs.blocks
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
shutil.rmtree("{dst}", ignore_errors=True)
with dask.config.set(num_workers=2):
    t = time.perf_counter()
    fstack_dask.fuse_zarr("{src}", "{dst}", progress=False)
    wall = time.perf_counter() - t
r = reports.items[0]
print(json.dumps({{"wall_s": wall, "base_mib": base, "decoded_ratio": r.decoded_bytes / {nbytes},
                  "cache_peak_mib": r.cache_peak_bytes / 2**20}}))
"""
)


def scenario_memory(cache: Path, repeat: int) -> dict:
    out = {}
    for name in ("u8_2048x32", "u8_8192x32"):
        src = stack_path(name, "whole-z", cache)
        r = child(MEMORY.format(src=src, dst=cache / "memory.fused.zarr", nbytes=voxels(name)))
        bound = r["base_mib"] + 2 * 256
        out[name] = {"wall_s": r["wall_s"], "mvox_s": voxels(name) / r["wall_s"] / 1e6,
                     "rss_mib": r["peak_rss_mib"], "base_mib": r["base_mib"],
                     "bound_mib": bound, "decoded_ratio": r["decoded_ratio"],
                     "cache_peak_mib": r["cache_peak_mib"]}  # fmt: skip
        print(f"  memory {name}: {json.dumps(out[name])}", flush=True)
    return out


PLANNING = """
import json, os, resource, threading, time, zarr
zarr.create_array("{src}", shape=(21, {n}, {n}), chunks=(21, {c}, {c}), dtype="uint16",
                  dimension_names=list("zyx"), overwrite=True)
import fstack_dask
t0 = time.perf_counter()
def watch():
    done = "{dst}/.fstack_dask/done"
    while True:
        if os.path.isdir(done) and os.listdir(done):
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(json.dumps({{"first_block_s": time.perf_counter() - t0, "driver_rss_mib": rss}}),
                  flush=True)
            os._exit(0)
        time.sleep(0.05)
threading.Thread(target=watch, daemon=True).start()
fstack_dask.fuse_zarr("{src}", "{dst}", progress=False, overwrite=True)
"""


def scenario_planning(cache: Path, repeat: int) -> dict:
    out = {}
    for n, c in ((100_000, 64), (1_000_000, 1024)):
        src, dst = cache / f"plan{n}.zarr", cache / f"plan{n}.fused.zarr"
        shutil.rmtree(dst, ignore_errors=True)
        r = child(PLANNING.format(src=src, dst=dst, n=n, c=c))
        info = timed_process([sys.executable, "-m", "fstack_dask", "info", str(src)], 1)
        out[f"{n}x{n}x21 chunks {c}"] = {
            "first_block_s": r["first_block_s"], "driver_rss_mib": r["driver_rss_mib"],
            "info_s": info["wall_s"],
        }  # fmt: skip
        print(f"  planning {n}: {json.dumps(out[f'{n}x{n}x21 chunks {c}'])}", flush=True)
        shutil.rmtree(dst, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
    return out


MEMORY_FUSE = """
import json, time, numpy as np
from fstack_dask import focus_stack, synthetic_stack
stack = np.ascontiguousarray(synthetic_stack((1024, 1024), 21, rgb=True, dtype="uint8",
                                             noise=0.02, seed=0).stack)
focus_stack(stack)  # compile / load the cache
ours = []
for _ in range({repeat}):
    t = time.perf_counter(); focus_stack(stack); ours.append(time.perf_counter() - t)
peer = None
try:
    import focusweave
    planes = [np.ascontiguousarray(stack[:, :, p]) for p in range(stack.shape[2])]
    config = focusweave.FocusStackConfig(images=planes, no_align=True)
    focusweave.run(config)
    peer = []
    for _ in range({repeat}):
        t = time.perf_counter(); focusweave.run(config); peer.append(time.perf_counter() - t)
except ImportError:
    pass
print(json.dumps({{"ours_s": min(ours), "ours_all_s": ours,
                  "focusweave_s": min(peer) if peer else None, "focusweave_all_s": peer}}))
"""


def scenario_memory_fuse(cache: Path, repeat: int) -> dict:
    r = child(MEMORY_FUSE.format(repeat=max(3, repeat)))
    print(f"  memory_fuse: {json.dumps(r)}", flush=True)
    return r


# ----------------------------------------------------------------------------- main


def machine() -> dict:
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    for module in ("numpy", "numba", "dask", "zarr", "distributed"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem, 1),
            "python": platform.python_version(), "load_before": os.getloadavg(),
            **versions}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--cache", type=Path, default=HERE / "_cache")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (best)")
    parser.add_argument("--json", type=Path, help="write (update) the results here")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
    results["machine"] = machine()
    print(f"machine: {results['machine']}", flush=True)
    for name in args.only:
        print(f"{name} ...", flush=True)
        results[name] = globals()[f"scenario_{name}"](args.cache, args.repeat)
        results[name + "_measured"] = time.strftime("%Y-%m-%d %H:%M")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
