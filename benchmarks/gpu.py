"""GPU benchmark of ``device="cuda"`` (issue 11), on one CUDA GPU, against the CPU engine.

What it measures, in this order (each figure also goes to ``--out``/gpu.json):

1. the card (name, compute capability, memory), driver, numba and numba-cuda versions;
2. the kernel alone on ``--size``^2 x ``--planes`` uint16 (default 4096^2 x 51): samples
   already on the GPU, every kernel of the block, timed from the first launch to the
   stream's end (best of ``--repeat``), in Gvox/s; then the same block with its transfers
   (host -> pinned -> GPU -> host, ``fuse_block(engine="cuda")``);
3. agreement with the CPU engine: a ``--crop`` (default 768 x 1024) of that stack, an RGB
   stack, float32 samples and the shipped real stacks: share of identical pixels, largest
   difference, and whether every bit is the same;
4. end to end, Zarr to Zarr (Zstd, chunks of all planes x 512 x 512, written once): a
   read-only pass over the store (``da.from_zarr(a).max()``), ``fuse_zarr(device="cuda")``
   and ``fuse_zarr(device="cpu")``, all on the threads scheduler with ``--workers``
   threads; the ratio read-only / cuda is the issue's ">= 0.7".

The stack is ``synthetic_stack`` at 1024^2 tiled to the size asked for (periodic content,
the same statistics). Usage::

    python benchmarks/gpu.py --out /tmp/gpu                  # on a GPU machine
    python benchmarks/gpu.py --size 512 --planes 11 --skip-e2e   # a quick look
    python benchmarks/gpu.py --record gpu.json               # add a run to RESULTS.md

``benchmarks/gpu_check.sh`` runs it with the GPU tests in one go.
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


def card() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from numba import cuda

    dev = cuda.get_current_device()
    total = cuda.current_context().get_memory_info()[1]
    name = getattr(dev, "name", "numba's CUDA simulator")  # the simulator's device has none
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


def stack(size: int, planes: int, dtype: str = "uint16", rgb: bool = False) -> np.ndarray:
    """(P, Y, X) or (3, P, Y, X): synthetic 1024^2 (or smaller) tiled to size^2."""
    from fstack_dask import synthetic_stack

    tile = min(size, 1024)
    s = synthetic_stack((tile, tile), planes, rgb=rgb, dtype=dtype, noise=0.02, seed=0).stack
    s = np.moveaxis(s, (2, 3), (1, 0)) if rgb else np.moveaxis(s, 2, 0)
    reps = -(-size // tile)
    big = np.tile(s, (1,) * (s.ndim - 2) + (reps, reps))
    return np.ascontiguousarray(big[..., :size, :size])


def kernel_speed(block: np.ndarray, repeat: int) -> dict:
    """Gvox/s of the kernels alone (samples on the GPU), and of the block with transfers."""
    from fstack_dask._algorithm import cuda as _cuda
    from fstack_dask._algorithm.block import fuse_block

    ws = _cuda.workspace()
    n_planes = block.shape[0]
    focus = np.arange(n_planes, dtype=np.float64)
    d_values = ws.on_device("values", (1, *block.shape), block.dtype)
    d_values.copy_to_device(np.ascontiguousarray(block[None]), stream=ws.stream)

    def once() -> float:
        ws.stream.synchronize()
        t = time.perf_counter()
        _cuda.device_pass(ws, d_values, block.dtype, False, 9, focus, 0.2, 13.0,
                          with_selectivity=False)  # fmt: skip
        ws.stream.synchronize()
        return time.perf_counter() - t

    once()  # compiles the kernels for this dtype
    kernel_s = min(once() for _ in range(repeat))
    fuse_block(block[:, :64, :64], engine="cuda")  # the transfers' buffers' first use

    def with_transfers(pinned: bool) -> float:
        _cuda.PINNED = pinned
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fuse_block(block, engine="cuda")
            times.append(time.perf_counter() - t)
        _cuda.PINNED = True
        return min(times)

    pageable_s = with_transfers(False)
    times = [with_transfers(True)]
    voxels = block.size
    out = {
        "shape": list(block.shape),
        "dtype": str(block.dtype),
        "kernel_s": kernel_s,
        "kernel_gvox_s": voxels / kernel_s / 1e9,
        "with_transfers_s": min(times),
        "with_transfers_gvox_s": voxels / min(times) / 1e9,
        "pageable_s": pageable_s,
        "pageable_gvox_s": voxels / pageable_s / 1e9,
        "device_bytes": ws.device_bytes(),
    }
    ws.device.clear()
    ws.pinned.clear()
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

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="fstack-gpu-"))
    try:
        src = tmp / "stack.ome.zarr"
        t = time.perf_counter()
        write_stack(src, zyx, axes="zyx", chunks=(zyx.shape[0], 512, 512))
        write_s = time.perf_counter() - t
        arr = zarr.open_group(src, mode="r")["0"]
        out: dict = {"write_s": write_s, "workers": workers, "voxels": int(zyx.size)}

        def read_only() -> float:
            t = time.perf_counter()
            da.from_zarr(arr).max().compute(scheduler="threads", num_workers=workers)
            return time.perf_counter() - t

        def fuse(device: str, **kw) -> float:
            dst = tmp / f"{device}.ome.zarr"
            shutil.rmtree(dst, ignore_errors=True)
            t = time.perf_counter()
            with dask.config.set(num_workers=workers):
                fuse_zarr(src, dst, device=device, scheduler="threads", progress=False, **kw)
            return time.perf_counter() - t

        fuse("cuda")  # compiles the kernels in this process
        runs = {"read_only": [], "cuda": [], "cuda_1GiB": [], "cpu": []}
        for _ in range(repeat):
            runs["read_only"].append(read_only())
            runs["cuda"].append(fuse("cuda"))
            runs["cuda_1GiB"].append(fuse("cuda", memory_per_task="1GiB"))
        runs["cpu"].append(fuse("cpu"))
        gpu_img = zarr.open_group(tmp / "cuda.ome.zarr")["0"][...]
        cpu_img = zarr.open_group(tmp / "cpu.ome.zarr")["0"][...]
        for key, values in runs.items():
            out[f"{key}_s"] = min(values)
            out[f"{key}_all_s"] = values
            out[f"{key}_gvox_s"] = zyx.size / min(values) / 1e9
        out["read_only_over_cuda"] = out["read_only_s"] / out["cuda_s"]
        out["read_only_over_cuda_1GiB"] = out["read_only_s"] / out["cuda_1GiB_s"]
        out["cuda_vs_cpu_identical"] = float(np.mean(gpu_img == cpu_img))
        out["cuda_vs_cpu_max_diff"] = float(np.abs(gpu_img.astype(np.int64) - cpu_img).max())
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args) -> dict:
    from fstack_dask._samples import sample_stack

    results: dict = {"date": time.strftime("%Y-%m-%d"), "card": card()}
    print(json.dumps(results["card"]), flush=True)
    big = stack(args.size, args.planes)
    results["kernel"] = kernel_speed(big, args.repeat)
    print("kernel", json.dumps(results["kernel"]), flush=True)
    cy, cx = args.crop
    checks = {
        "crop uint16": (np.ascontiguousarray(big[:, :cy, :cx]), {}),
        "rgb uint8": (stack(min(args.size, 1024), 21, "uint8", rgb=True), {"rgb": True}),
        "float32": (stack(min(args.size, 1024), 21, "float32"), {}),
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
    if not args.skip_e2e:
        results["end_to_end"] = end_to_end(big, args.workers, args.repeat)
        print("end_to_end", json.dumps(results["end_to_end"]), flush=True)
    return results


def markdown(r: dict) -> str:
    c, k = r["card"], r["kernel"]
    lines = [
        f"## GPU (issue 11): {c['name']}, {r['date']}",
        "",
        f"Produced by `python benchmarks/gpu.py` (`benchmarks/gpu_check.sh`). **Card**: "
        f"{c['name']} (compute capability {'.'.join(map(str, c['compute_capability']))}, "
        f"{c['memory_gib']} GiB), driver {c['driver']}; {c['cpus']} CPUs; Python "
        f"{c['python']}, NumPy {c['numpy']}, numba {c['numba']}, numba-cuda {c['numba-cuda']}, "
        f"dask {c['dask']}, zarr {c['zarr']}.",
        "",
        "| measurement | stack | s | Gvox/s |",
        "|---|---|---|---|",
        f"| kernel alone (samples on the GPU) | {' x '.join(map(str, k['shape']))} "
        f"{k['dtype']} | {k['kernel_s']:.3f} | **{k['kernel_gvox_s']:.2f}** |",
        f"| one block with its transfers (pinned buffers) | same | "
        f"{k['with_transfers_s']:.3f} | {k['with_transfers_gvox_s']:.2f} |",
        f"| one block with its transfers (pageable, FSTACK_DASK_CUDA_PINNED=0) | same | "
        f"{k['pageable_s']:.3f} | {k['pageable_gvox_s']:.2f} |",
    ]
    e = r.get("end_to_end")
    if e:
        lines += [
            f"| read-only pass, {e['workers']} threads | Zarr, same stack | "
            f"{e['read_only_s']:.2f} | {e['read_only_gvox_s']:.3f} |",
            f'| `fuse_zarr(device="cuda")` | Zarr to Zarr | {e["cuda_s"]:.2f} | '
            f"{e['cuda_gvox_s']:.3f} |",
            f'| `fuse_zarr(device="cuda", memory_per_task="1GiB")` | Zarr to Zarr | '
            f"{e['cuda_1GiB_s']:.2f} | {e['cuda_1GiB_gvox_s']:.3f} |",
            f'| `fuse_zarr(device="cpu")`, {e["workers"]} threads | Zarr to Zarr | '
            f"{e['cpu_s']:.2f} | {e['cpu_gvox_s']:.3f} |",
            "",
            f"Read-only time / cuda time: **{e['read_only_over_cuda']:.2f}** (default "
            f"memory_per_task), {e['read_only_over_cuda_1GiB']:.2f} (1 GiB); target >= 0.7. "
            f"Zarr output cuda vs cpu: {100 * e['cuda_vs_cpu_identical']:.3f} % identical, "
            f"largest difference {e['cuda_vs_cpu_max_diff']:g}.",
        ]
    lines += ["", "| agreement with the CPU engine | stack | identical | max diff | bits |",
              "|---|---|---|---|---|"]  # fmt: skip
    for name, a in r["agreement"].items():
        lines.append(
            f"| {name} | {' x '.join(map(str, a['shape']))} {a['dtype']} | "
            f"{100 * a['identical']:.4f} % | {a['max_diff']:g} | "
            f"{'yes' if a['bits'] and a['depth_bits'] and a['selectivity_bits'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--planes", type=int, default=51)
    p.add_argument(
        "--crop", type=lambda t: tuple(int(v) for v in t.split(",")), default=(768, 1024)
    )
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--skip-e2e", action="store_true", help="no Zarr-to-Zarr runs")
    p.add_argument("--sample-crop", type=int, help="crop the shipped stacks (quick runs)")
    p.add_argument("--out", type=pathlib.Path, help="folder for gpu.json and gpu.md")
    p.add_argument("--record", type=pathlib.Path, help="append a gpu.json's table to RESULTS.md")
    args = p.parse_args(argv)
    if args.record:
        text = markdown(json.loads(args.record.read_text()))
        with open(RESULTS, "a", encoding="utf-8") as fh:
            fh.write("\n" + text)
        print(text)
        return 0
    results = run(args)
    text = markdown(results)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu.json").write_text(json.dumps(results, indent=1))
        (args.out / "gpu.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
