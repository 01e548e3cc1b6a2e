"""GPU benchmark of ``device="cuda"`` (issues 11 and 19), on one CUDA GPU, against the CPU.

Every figure of issue 19's table, in this order (each section is added to ``--out``/gpu.json
as soon as it is measured, so that a run cut short keeps what it had):

1. ``card``: the card (name, compute capability, memory), driver, CPUs, versions;
2. ``blocks``: one block of ``--size``^2 x ``--planes`` (default 4096^2 x 51) for each of
   uint16, float32 and RGB uint8, warm: the kernels alone (samples already on the GPU),
   then the block with its transfers (``fuse_block(engine="cuda")``: host -> pinned -> GPU
   -> host), through pinned buffers and from pageable memory; and a float32 block of
   ``--small`` (default 1024^2 x 21). A voxel is one pixel of one plane (RGB: its three
   samples). Targets: uint16 with transfers >= 6 Gvox/s, float32 and RGB within 2x of it;
3. ``startup``: the first block of a new process per dtype (uint16, float32, RGB uint8),
   with an empty disk cache (compiling) and again with the cache that run left (loading):
   the environment check (``cuda_problem``: numba's CUDA target initialised, a tiny kernel
   compiled and run), the first block, the second (the first minus the second is what the
   first block pays to compile or load its kernels; target <= 0.5 s from the cache);
4. ``agreement``: GPU against the CPU engine, bit for bit: a ``--crop`` (768 x 1024) of the
   uint16 stack, RGB uint8, float32 and the shipped real stacks;
5. ``end_to_end``: per stack of ``--e2e`` (default 4096x4096 and 16384x4096, all
   ``--planes``), Zarr to Zarr (Zstd, chunks of all planes x 512 x 512, written once) on the
   threads scheduler with ``--workers`` threads: a read-only pass over the store
   (``da.from_zarr(a).max()``), ``fuse_zarr(device="cuda")`` with its pyramid and with
   ``levels=0`` (and with twice ``--workers`` threads), and ``fuse_zarr(device="cpu")`` the
   same two ways. Targets: read-only
   time / cuda time >= 0.7 and cpu time / cuda time >= 2.5, pyramid included.

The stacks are ``synthetic_stack`` at 1024^2 (or smaller) tiled to the size asked for
(periodic content, the same statistics). Usage::

    python benchmarks/gpu.py --out /tmp/gpu                  # on a GPU machine (~3 min)
    python benchmarks/gpu.py --size 512 --planes 11 --e2e ""   # a quick look
    python benchmarks/gpu.py --record gpu.json [--checks checks.txt]   # add to RESULTS.md

``benchmarks/gpu_check.sh`` runs it with the GPU tests and records the run. In numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``, tiny sizes) it runs as a dry run: its times say
nothing about a GPU, and ``--record`` refuses them.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
SIMULATOR = "numba's CUDA simulator"
DTYPES = {"uint16": ("uint16", False), "float32": ("float32", False), "rgb uint8": ("uint8", True)}


def card() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from numba import cuda

    dev = cuda.get_current_device()
    total = cuda.current_context().get_memory_info()[1]
    name = getattr(dev, "name", SIMULATOR)  # the simulator's device has none
    info = {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "compute_capability": list(getattr(dev, "compute_capability", (0, 0))),
        "memory_gib": round(total / 2**30, 1) if np.isfinite(total) else None,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    for pkg in ("numba", "numba-cuda", "dask", "zarr"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = None
    try:
        smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        info["driver"] = subprocess.run(smi, capture_output=True, text=True).stdout.strip()
    except OSError:
        info["driver"] = None
    return info


_tiles: dict = {}  # the synthetic tiles made so far (seconds each)


def stack(shape, planes: int, dtype: str = "uint16", rgb: bool = False) -> np.ndarray:
    """(P, Y, X) or (3, P, Y, X): synthetic 1024^2 (or smaller) tiled to ``shape`` (Y, X)."""
    from fstack_dask import synthetic_stack

    ny, nx = (shape, shape) if isinstance(shape, int) else shape
    tile = min(max(ny, nx), 1024)
    key = (tile, planes, dtype, rgb)
    if key not in _tiles:
        s = synthetic_stack((tile, tile), planes, rgb=rgb, dtype=dtype, noise=0.02, seed=0).stack
        _tiles[key] = np.moveaxis(s, (2, 3), (1, 0)) if rgb else np.moveaxis(s, 2, 0)
    s = _tiles[key]
    reps = (-(-ny // tile), -(-nx // tile))
    big = np.tile(s, (1,) * (s.ndim - 2) + reps)
    return np.ascontiguousarray(big[..., :ny, :nx])


def _pixels_planes(block: np.ndarray, rgb: bool) -> int:
    return int(block[0].size if rgb else block.size)  # voxels: pixels x planes


def block_speed(block: np.ndarray, rgb: bool, repeat: int) -> dict:
    """Gvox/s of the kernels alone (samples on the GPU), and of the block with transfers."""
    from fstack_dask._algorithm import cuda as _cuda
    from fstack_dask._algorithm.block import fuse_block

    ws = _cuda.workspace()
    values = block if rgb else block[None]
    samples = values.astype(np.float32) if values.dtype == np.float16 else values
    n_planes = values.shape[1]
    focus = np.arange(n_planes, dtype=np.float64)
    d_values = ws.on_device("values", values.shape, samples.dtype)
    d_values.copy_to_device(np.ascontiguousarray(samples), stream=ws.stream)

    def once() -> float:
        ws.stream.synchronize()
        t = time.perf_counter()
        _cuda.device_pass(ws, d_values, block.dtype, rgb, 9, focus, 0.2, 13.0)
        ws.stream.synchronize()
        return time.perf_counter() - t

    once()  # compiles (or loads) the kernels for this dtype
    kernel_s = min(once() for _ in range(repeat))
    fuse_block(block[..., :64, :64], rgb=rgb, engine="cuda")  # the transfers' buffers
    ws.on_host("values", values.shape, samples.dtype)  # pinned at full size before timing

    def with_transfers(pinned: bool) -> float:
        chosen = _cuda.pinned
        _cuda.pinned = lambda: pinned  # (read by each block: fuse_cuda, staging_buffer)
        times = []
        try:
            for _ in range(repeat):
                t = time.perf_counter()
                fuse_block(block, rgb=rgb, engine="cuda")
                times.append(time.perf_counter() - t)
        finally:
            _cuda.pinned = chosen
        return min(times)

    pageable_s = with_transfers(False)
    pinned_s = with_transfers(True)
    voxels = _pixels_planes(block, rgb)
    out = {
        "shape": list(block.shape),
        "dtype": str(block.dtype),
        "rgb": rgb,
        "voxels": voxels,
        "kernel_s": kernel_s,
        "kernel_gvox_s": voxels / kernel_s / 1e9,
        "with_transfers_s": pinned_s,
        "with_transfers_gvox_s": voxels / pinned_s / 1e9,
        "pageable_s": pageable_s,
        "pageable_gvox_s": voxels / pageable_s / 1e9,
        "device_bytes": ws.device_bytes(),
    }
    ws.device.clear()
    ws.pinned.clear()
    return out


STARTUP = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from fstack_dask import synthetic_stack
from fstack_dask._algorithm.block import fuse_block
from fstack_dask._algorithm.device import cuda_problem
t1 = time.perf_counter()
problem = cuda_problem()
t2 = time.perf_counter()
dtype, rgb, planes, side = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
s = synthetic_stack((side, side), planes, rgb=rgb, dtype=dtype, seed=0).stack
block = np.ascontiguousarray(np.moveaxis(s, (2, 3), (1, 0)) if rgb else np.moveaxis(s, 2, 0))
times = []
for _ in range(2):
    t = time.perf_counter()
    fuse_block(block, rgb=rgb, engine="cuda")
    times.append(time.perf_counter() - t)
print(json.dumps({"import_s": t1 - t0, "check_s": t2 - t1, "problem": problem,
                  "first_block_s": times[0], "second_block_s": times[1],
                  "first_minus_second_s": times[0] - times[1]}))
"""


def startup(planes: int, side: int) -> dict:
    """A new process's first block per dtype, with an empty disk cache, then with its own."""
    out: dict = {}
    for name, (dtype, rgb) in DTYPES.items():
        cache = tempfile.mkdtemp(prefix="fstack-gpu-cache-")
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        try:
            for state in ("cold", "warm"):
                args = [sys.executable, "-c", STARTUP, dtype, "1" if rgb else "0", str(planes),
                        str(side)]  # fmt: skip
                done = subprocess.run(args, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    out[f"{name} {state}"] = {"error": done.stderr.strip().splitlines()[-1:]}
                    continue
                out[f"{name} {state}"] = json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return out


def agreement(block: np.ndarray, rgb: bool = False, **kw) -> dict:
    """GPU against the compiled CPU engine on one block (image, depth, selectivity)."""
    from fstack_dask._algorithm.block import fuse_block

    kw = {"rgb": rgb, "with_depth": True, "with_selectivity": True, **kw}
    t = time.perf_counter()
    gpu = fuse_block(block, engine="cuda", **kw)
    gpu_s = time.perf_counter() - t
    t = time.perf_counter()
    cpu = fuse_block(block, engine="compiled", **kw)
    cpu_s = time.perf_counter() - t
    diff = np.abs(gpu.image.astype(np.float64) - cpu.image.astype(np.float64))
    return {
        "shape": list(block.shape),
        "dtype": str(block.dtype),
        "identical": float(np.mean(gpu.image == cpu.image)),
        "max_diff": float(diff.max()),
        "bits": bool(np.array_equal(gpu.image, cpu.image)),
        "depth_bits": bool(np.array_equal(gpu.depth, cpu.depth, equal_nan=True)),
        "selectivity_bits": bool(np.array_equal(gpu.selectivity, cpu.selectivity, equal_nan=True)),
        "gpu_s": gpu_s,
        "cpu_one_thread_s": cpu_s,
    }


def end_to_end(zyx: np.ndarray, workers: int, repeat: int) -> dict:
    import dask
    import dask.array as da
    import zarr

    from fstack_dask import fuse_zarr, write_stack
    from fstack_dask._algorithm.block import fuse_block

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="fstack-gpu-"))
    try:
        src = tmp / "stack.ome.zarr"
        t = time.perf_counter()
        with dask.config.set(num_workers=workers):
            write_stack(src, zyx, axes="zyx", chunks=(zyx.shape[0], 512, 512))
        write_s = time.perf_counter() - t
        arr = zarr.open_group(src, mode="r")["0"]
        out: dict = {"shape": list(zyx.shape), "write_s": write_s, "workers": workers,
                     "voxels": int(zyx.size)}  # fmt: skip

        def read_only() -> float:
            t = time.perf_counter()
            da.from_zarr(arr).max().compute(scheduler="threads", num_workers=workers)
            return time.perf_counter() - t

        def fuse(device: str, threads: int = workers, **kw) -> float:
            dst = tmp / f"{device}{kw.get('levels', '')}.ome.zarr"
            shutil.rmtree(dst, ignore_errors=True)
            t = time.perf_counter()
            with dask.config.set(num_workers=threads):
                fuse_zarr(src, dst, device=device, scheduler="threads", progress=False, **kw)
            return time.perf_counter() - t

        tiny = np.ascontiguousarray(zyx[:, :64, :64])
        fuse_block(tiny, engine="cuda")  # kernels compiled (or loaded) before timing
        fuse_block(tiny, engine="compiled")
        runs: dict = {"read_only": [], "cuda": [], "cuda_levels0": [], "cuda_levels0_2x": [],
                      "cpu": [], "cpu_levels0": []}  # fmt: skip
        for _ in range(repeat):
            runs["read_only"].append(read_only())
            runs["cuda"].append(fuse("cuda"))
            runs["cuda_levels0"].append(fuse("cuda", levels=0))
            # twice as many host threads: one waiting for its block on the GPU leaves its
            # core to another's decoding (RESULTS, "The host's share of a block")
            runs["cuda_levels0_2x"].append(fuse("cuda", threads=2 * workers, levels=0))
        runs["cpu"].append(fuse("cpu"))
        runs["cpu_levels0"].append(fuse("cpu", levels=0))
        for key, values in runs.items():
            out[f"{key}_s"] = min(values)
            out[f"{key}_all_s"] = values
            out[f"{key}_gvox_s"] = zyx.size / min(values) / 1e9
        out["read_only_over_cuda"] = out["read_only_s"] / out["cuda_s"]
        out["read_only_over_cuda_levels0"] = out["read_only_s"] / out["cuda_levels0_s"]
        out["cpu_over_cuda"] = out["cpu_s"] / out["cuda_s"]
        out["cpu_over_cuda_levels0"] = out["cpu_levels0_s"] / out["cuda_levels0_s"]
        gpu_group = zarr.open_group(tmp / "cuda.ome.zarr", mode="r")
        cpu_group = zarr.open_group(tmp / "cpu.ome.zarr", mode="r")
        for name in ("0", "1"):  # full resolution, and the pyramid's first level
            if name not in gpu_group:
                continue
            a, b = gpu_group[name][...], cpu_group[name][...]
            out[f"bits_level{name}"] = bool(np.array_equal(a, b))
            out[f"identical_level{name}"] = float(np.mean(a == b))
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save(results: dict, out: pathlib.Path | None) -> None:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu.json").write_text(json.dumps(results, indent=1))


def run(args) -> dict:
    from fstack_dask._samples import sample_stack

    results: dict = {"date": time.strftime("%Y-%m-%d"), "args": vars(args).copy(),
                     "card": card()}  # fmt: skip
    results["args"]["out"] = str(args.out) if args.out else None
    print(json.dumps(results["card"]), flush=True)
    _save(results, args.out)
    big = stack(args.size, args.planes)
    results["blocks"] = {}
    for name, (dtype, rgb) in DTYPES.items():
        block = big if name == "uint16" else stack(args.size, args.planes, dtype, rgb)
        results["blocks"][name] = block_speed(block, rgb, args.repeat)
        del block
        print(name, json.dumps(results["blocks"][name]), flush=True)
        _save(results, args.out)
    side, planes = args.small
    small = stack(side, planes, "float32")
    results["blocks"]["float32 small"] = block_speed(small, False, args.repeat)
    print("float32 small", json.dumps(results["blocks"]["float32 small"]), flush=True)
    _save(results, args.out)

    if not args.skip_startup:
        results["startup"] = startup(args.startup_planes, args.startup_side)
        print("startup", json.dumps(results["startup"]), flush=True)
        _save(results, args.out)

    cy, cx = args.crop
    side = min(args.size, 1024)
    checks = {
        "crop uint16": (np.ascontiguousarray(big[:, :cy, :cx]), {}),
        "rgb uint8": (stack(side, 21, "uint8", rgb=True), {"rgb": True}),
        "float32": (stack(side, 21, "float32"), {}),
        "mitochondria_lightsheet": (sample_stack("mitochondria_lightsheet"), {}),
        "pcb": (np.moveaxis(sample_stack("pcb"), 3, 0), {"rgb": True}),
    }
    if args.sample_crop:  # a quick look (the simulator): small corners of the real stacks
        for name in ("mitochondria_lightsheet", "pcb"):
            block, kw = checks[name]
            checks[name] = (block[..., : args.sample_crop, : args.sample_crop], kw)
    results["agreement"] = {}
    for name, (block, kw) in checks.items():
        results["agreement"][name] = agreement(block, **kw)
        print(name, json.dumps(results["agreement"][name]), flush=True)
    _save(results, args.out)
    del big

    results["end_to_end"] = {}
    for ny, nx in args.e2e:
        zyx = stack((ny, nx), args.planes)
        key = f"{ny}x{nx}"
        results["end_to_end"][key] = end_to_end(zyx, args.workers, args.repeat)
        del zyx
        print("end_to_end", key, json.dumps(results["end_to_end"][key]), flush=True)
        _save(results, args.out)
    return results


def _shape(values) -> str:
    return " x ".join(map(str, values))


def markdown(r: dict, checks: str = "") -> str:
    c = r["card"]
    lines = [
        f"## GPU (issue 19): {c['name']}, {r['date']}",
        "",
        f"Produced by `benchmarks/gpu_check.sh` (`python benchmarks/gpu.py`). **Card**: "
        f"{c['name']} (compute capability {'.'.join(map(str, c['compute_capability']))}, "
        f"{c['memory_gib']} GiB), driver {c['driver']}; {c['cpus']} CPUs; Python "
        f"{c['python']}, NumPy {c['numpy']}, numba {c['numba']}, numba-cuda {c['numba-cuda']}, "
        f"dask {c['dask']}, zarr {c['zarr']}. Best of {r['args']['repeat']}. A voxel is one "
        "pixel of one plane (RGB: its three samples).",
        "",
        "| one block, warm | stack | kernels alone: s, Gvox/s | with transfers (pinned): s, "
        "Gvox/s | with transfers (pageable): s, Gvox/s |",
        "|---|---|---|---|---|",
    ]
    for name, b in r.get("blocks", {}).items():
        lines.append(
            f"| {name} | {_shape(b['shape'])} {b['dtype']} | {b['kernel_s']:.3f}, "
            f"{b['kernel_gvox_s']:.2f} | {b['with_transfers_s']:.3f}, "
            f"**{b['with_transfers_gvox_s']:.2f}** | {b['pageable_s']:.3f}, "
            f"{b['pageable_gvox_s']:.2f} |"
        )
    blocks = r.get("blocks", {})
    if "uint16" in blocks:
        u = blocks["uint16"]["with_transfers_gvox_s"]
        ratios = ", ".join(
            f"{name} {u / blocks[name]['with_transfers_gvox_s']:.2f}x slower"
            for name in ("float32", "rgb uint8")
            if name in blocks
        )
        lines += ["", f"uint16 with its transfers: {u:.2f} Gvox/s (target >= 6); {ratios} "
                  "than uint16 per voxel (target <= 2x)."]  # fmt: skip
    s = r.get("startup")
    if s:
        lines += [
            "",
            f"| a new process's first block ({r['args']['startup_side']}^2 x "
            f"{r['args']['startup_planes']}) | disk cache | import s | check s "
            "(`cuda_problem`) | first block s | second block s | first - second s |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, v in s.items():
            name, state = key.rsplit(" ", 1)
            if "error" in v:
                lines.append(f"| {name} | {state} | failed: {v['error']} | | | | |")
                continue
            lines.append(
                f"| {name} | {'empty' if state == 'cold' else 'from the run before'} | "
                f"{v['import_s']:.2f} | {v['check_s']:.2f} | {v['first_block_s']:.2f} | "
                f"{v['second_block_s']:.3f} | **{v['first_minus_second_s']:.2f}** |"
            )
    for e in r.get("end_to_end", {}).values():
        w = e["workers"]
        lines += [
            "",
            f"| end to end, {_shape(e['shape'])} uint16, Zstd chunks of 512^2, {w} threads "
            "| s | Gvox/s |",
            "|---|---|---|",
            f"| read-only pass over the store | {e['read_only_s']:.2f} | "
            f"{e['read_only_gvox_s']:.3f} |",
            f'| `fuse_zarr(device="cuda")` | {e["cuda_s"]:.2f} | {e["cuda_gvox_s"]:.3f} |',
            f'| `fuse_zarr(device="cuda", levels=0)` | {e["cuda_levels0_s"]:.2f} | '
            f"{e['cuda_levels0_gvox_s']:.3f} |",
            *(
                [
                    f"| same, {2 * w} threads | {e['cuda_levels0_2x_s']:.2f} | "
                    f"{e['cuda_levels0_2x_gvox_s']:.3f} |"
                ]
                if "cuda_levels0_2x_s" in e
                else []
            ),
            f'| `fuse_zarr(device="cpu")` | {e["cpu_s"]:.2f} | {e["cpu_gvox_s"]:.3f} |',
            f'| `fuse_zarr(device="cpu", levels=0)` | {e["cpu_levels0_s"]:.2f} | '
            f"{e['cpu_levels0_gvox_s']:.3f} |",
            "",
            f"Read-only time / cuda time: **{e['read_only_over_cuda']:.2f}** with the pyramid "
            f"({e['read_only_over_cuda_levels0']:.2f} with levels=0; target >= 0.7); cpu time "
            f"/ cuda time: **{e['cpu_over_cuda']:.2f}** ({e['cpu_over_cuda_levels0']:.2f}; "
            "target >= 2.5). Zarr output, cuda against cpu: "
            + "; ".join(
                f"level {i} {'bit for bit' if e[f'bits_level{i}'] else 'NOT bit for bit'} "
                f"({100 * e[f'identical_level{i}']:.4f} % identical)"
                for i in (0, 1)
                if f"bits_level{i}" in e
            )
            + ".",
        ]
    lines += ["", "| agreement with the CPU engine | stack | identical | max diff | bits |",
              "|---|---|---|---|---|"]  # fmt: skip
    for name, a in r.get("agreement", {}).items():
        lines.append(
            f"| {name} | {_shape(a['shape'])} {a['dtype']} | "
            f"{100 * a['identical']:.4f} % | {a['max_diff']:g} | "
            f"{'yes' if a['bits'] and a['depth_bits'] and a['selectivity_bits'] else 'no'} |"
        )
    if checks.strip():
        lines += ["", "Checks run by `benchmarks/gpu_check.sh` (its own summary lines):", ""]
        lines += [f"- {line.strip()}" for line in checks.strip().splitlines() if line.strip()]
    return "\n".join(lines) + "\n"


def _pair(text: str) -> tuple[int, int]:
    a, b = text.lower().replace(",", "x").split("x")
    return int(a), int(b)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=4096, help="side of the blocks (default 4096)")
    p.add_argument("--planes", type=int, default=51)
    p.add_argument("--small", type=_pair, default=(1024, 21), help="SIDE,PLANES: float32 block")
    p.add_argument("--crop", type=_pair, default=(768, 1024))
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument(
        "--e2e",
        type=lambda t: [_pair(v) for v in t.split() if v],
        default=[(4096, 4096), (16384, 4096)],
        help='stacks for the Zarr-to-Zarr runs, "YxX YxX" (default "4096x4096 16384x4096"; '
        '"" for none)',
    )
    p.add_argument("--skip-startup", action="store_true", help="no new processes' first blocks")
    p.add_argument("--startup-planes", type=int, default=21)
    p.add_argument("--startup-side", type=int, default=64)
    p.add_argument("--sample-crop", type=int, help="crop the shipped stacks (quick runs)")
    p.add_argument("--out", type=pathlib.Path, help="folder for gpu.json and gpu.md")
    p.add_argument("--record", type=pathlib.Path, help="append a gpu.json's tables to RESULTS.md")
    p.add_argument("--checks", type=pathlib.Path, help="with --record: lines to add (the tests)")
    args = p.parse_args(argv)
    if args.record:
        r = json.loads(args.record.read_text())
        if r["card"]["name"] == SIMULATOR:
            print("not recorded: a dry run in numba's CUDA simulator", file=sys.stderr)
            return 2
        checks = args.checks.read_text() if args.checks and args.checks.exists() else ""
        text = markdown(r, checks)
        with open(RESULTS, "a", encoding="utf-8") as fh:
            fh.write("\n" + text)
        print(text)
        return 0
    results = run(args)
    text = markdown(results)
    print(text)
    if args.out:
        _save(results, args.out)
        (args.out / "gpu.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
