"""``device="cuda"`` end to end: ``fuse_zarr``, ``fuse``, ``focus_stack``, against the CPU.

Run by ``tests/test_gpu.py`` in numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, tiny
stacks, synchronous scheduler: the simulator's kernels must not be launched from two
threads at once) and, with ``--gpu``, on a real GPU (larger stacks, threads scheduler).
Prints one JSON object of findings; the test asserts on them.
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
import warnings

import numpy as np
import zarr

from fstack_dask import focus_stack, fuse, fuse_zarr, synthetic_stack, write_stack
from fstack_dask._samples import sample_stack


def _same(a, b) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))


def _contract(a, b) -> dict:
    """GPU against CPU: share of identical pixels (NaN = NaN), the largest difference."""
    a, b = np.asarray(a).astype(np.float64), np.asarray(b).astype(np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    diff = np.abs(a - b)
    return {
        "identical": float(np.mean(same)),
        "max_diff": float(diff[~same].max()) if (~same).any() else 0.0,
    }


def main(argv: list[str]) -> int:
    warnings.simplefilter("ignore", RuntimeWarning)  # the simulator's threads: NumPy's warnings
    gpu = "--gpu" in argv
    side, planes, chunk = ((700, 650), 21, 256) if gpu else ((28, 22), 6, 16)
    scheduler = "threads" if gpu else "synchronous"
    found: dict = {}
    tmp = pathlib.Path(tempfile.mkdtemp())
    zyx = np.moveaxis(synthetic_stack(side, planes, dtype="uint16", seed=11).stack, 2, 0)
    write_stack(tmp / "in.zarr", zyx, axes="zyx", chunks=(planes, chunk, chunk))
    common = {"depth_map": True, "selectivity_map": True, "progress": False, "nhsize": 5}
    fuse_zarr(tmp / "in.zarr", tmp / "gpu.zarr", device="cuda", chunks=chunk,
              scheduler=scheduler, **common)  # fmt: skip
    fuse_zarr(tmp / "in.zarr", tmp / "cpu.zarr", chunks=2 * chunk, scheduler=scheduler,
              **common)  # fmt: skip
    gpu_out, cpu_out = zarr.open_group(tmp / "gpu.zarr"), zarr.open_group(tmp / "cpu.zarr")
    found["fuse_zarr"] = {
        name: _contract(gpu_out[f"{name}/0" if name != "0" else "0"][...],
                        cpu_out[f"{name}/0" if name != "0" else "0"][...])
        for name in ("0", "depth", "selectivity")
    }  # fmt: skip
    found["provenance_device"] = gpu_out.attrs["fstack_dask"]["device"]
    try:
        fuse_zarr(tmp / "in.zarr", tmp / "gpu.zarr", device="cpu", resume=True,
                  scheduler=scheduler, **common)  # fmt: skip
        found["resume_on_cpu"] = "accepted"
    except ValueError as exc:
        found["resume_on_cpu"] = str(exc)

    # fuse: bit for bit across chunkings, and equal to focus_stack on the GPU.
    yxz = np.moveaxis(zyx, 0, 2)
    whole = focus_stack(yxz, nhsize=5, device="cuda")
    found["fuse_chunkings_bits"] = [
        _same(fuse(yxz, axes="yxz", nhsize=5, chunks=c, device="cuda").compute(
            scheduler=scheduler), whole)
        for c in ((chunk // 2 + 3, chunk + 5), (side[0], side[1] // 2))
    ]  # fmt: skip
    found["focus_stack"] = _contract(whole, focus_stack(yxz, nhsize=5))
    found["fuse_zarr_vs_focus_stack_bits"] = _same(gpu_out["0"][...], whole)

    # The shipped real stacks (cropped in the simulator).
    crop = slice(None) if gpu else slice(0, 14)
    for name in ("mitochondria_lightsheet", "pcb"):
        stack = sample_stack(name)[:, crop, crop]
        ref = np.moveaxis(stack, 0, 2)
        found[name] = _contract(focus_stack(ref, device="cuda"), focus_stack(ref))

    if not gpu:  # what one block holds on the (simulated) device, against the formula
        from fstack_dask._algorithm import cuda as _cuda
        from fstack_dask._algorithm.block import fuse_block

        block = zyx[:, :24, :20].copy()
        fuse_block(block, engine="cuda", nhsize=5)
        ws = _cuda.workspace()
        for buffers in (ws.device, ws.pinned):
            buffers.clear()  # the larger blocks before: measure this one alone
        fuse_block(block, engine="cuda", nhsize=5, with_selectivity=True)
        found["device_bytes"] = ws.device_bytes()
        found["device_formula"] = _cuda.device_block_memory((24, 20), planes, 1, 2)
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
