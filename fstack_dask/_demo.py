"""``fstack-dask demo``: a synthetic stack with known ground truth, fused end to end.

Writes DIR/stack.ome.zarr (the synthetic stack, marked as the demo's own so that a later
``--overwrite`` may replace it and nothing else), fuses it into DIR/fused.ome.zarr with depth
and selectivity maps, writes PNG previews and prints the PSNR against the ground truth.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

__all__ = ["run_demo"]

DEMO_MARK = "fstack_dask_demo"
Z_STEP, PIXEL = 2.0, 0.65  # micrometer


def _psnr(estimate: Any, truth: Any, peak: float) -> float:
    import numpy as np

    err = np.mean((np.asarray(estimate, dtype=np.float64) - np.asarray(truth, np.float64)) ** 2)
    return math.inf if err == 0 else float(10 * np.log10(peak**2 / err))


def _demo_stack_owner(location: Any) -> str | None:
    """For remove_tree: only a stack the demo wrote may be replaced."""
    import json

    try:
        meta = json.loads(location.child("zarr.json").read_bytes())
    except (FileNotFoundError, ValueError):
        return "it is not a stack written by fstack-dask demo"
    attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
    return None if attrs.get(DEMO_MARK) is True else "it is not a stack written by fstack-dask demo"


def run_demo(
    directory: str,
    *,
    size: int,
    planes: int,
    rgb: bool,
    seed: int,
    overwrite: bool,
    progress: bool,
    scheduler: Any,
) -> None:
    import numpy as np
    import zarr

    from ._locations import remove_tree, resolve
    from ._pipeline import fuse_zarr
    from ._png import to_uint8, write_png
    from ._synthetic import synthetic_stack
    from ._write_stack import write_stack

    out_dir = Path(directory)
    stack_path, fused_path = out_dir / "stack.ome.zarr", out_dir / "fused.ome.zarr"
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"DIR {str(out_dir)!r} exists and is not a directory")
    stack_loc = resolve(stack_path, name="DIR")
    if stack_loc.exists():
        if not overwrite:
            raise FileExistsError(
                f"{str(stack_path)!r} already exists; choose another DIR or pass --overwrite"
            )
        reason = _demo_stack_owner(stack_loc)
        if reason is not None:
            raise FileExistsError(f"{str(stack_path)!r} exists and {reason}; refusing to delete it")
    synth = synthetic_stack(
        (size, size), planes, rgb=rgb, dtype="uint8" if rgb else "uint16", seed=seed
    )
    stack = synth.stack  # (y, x, z[, c])
    data = stack.transpose(3, 2, 0, 1) if rgb else stack.transpose(2, 0, 1)
    axes = "czyx" if rgb else "zyx"
    out_dir.mkdir(parents=True, exist_ok=True)
    if stack_loc.exists():
        remove_tree(stack_loc, owned=_demo_stack_owner)
    write_stack(
        stack_path, data, axes=axes, scale={"z": Z_STEP, "y": PIXEL, "x": PIXEL},
        units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
    )  # fmt: skip
    group = zarr.open_group(str(stack_path), mode="r+")
    group.attrs[DEMO_MARK] = True
    print(
        f"wrote {stack_path}: synthetic focus stack, {axes} {data.shape} {data.dtype} "
        f"(seed {seed})",
        flush=True,
    )

    start = time.perf_counter()
    out = fuse_zarr(
        stack_path, fused_path, depth_map=True, selectivity_map=True, overwrite=overwrite,
        progress=progress, scheduler=scheduler,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    fused = out["0"][...]
    if rgb:
        fused = fused.transpose(1, 2, 0)  # cyx -> yxc, like the truth
    depth = out["depth"]["0"][...] / Z_STEP  # micrometer -> planes, like the truth
    print(
        f"wrote {fused_path}: all-in-focus image + depth, selectivity maps in {seconds:.2f} s",
        flush=True,
    )
    middle = planes // 2
    plane = stack[:, :, middle]
    previews = {
        "plane.png": (plane, f"middle plane (z = {middle})"),
        "fused.png": (fused, "fused all-in-focus image"),
        "depth.png": (depth, "depth map (focus position of the sharpest plane)"),
        "truth.png": (synth.all_in_focus, "ground truth all-in-focus image"),
    }
    for name, (image, what) in previews.items():
        write_png(out_dir / name, to_uint8(image))
        print(f"wrote {out_dir / name}: {what}", flush=True)
    peak = float(np.iinfo(stack.dtype).max)
    ok = np.isfinite(depth)
    depth_rmse = (
        float(np.sqrt(np.mean((depth[ok] - synth.depth[ok]) ** 2))) if ok.any() else math.nan
    )
    print(
        f"PSNR against the ground truth: fused {_psnr(fused, synth.all_in_focus, peak):.2f} dB, "
        f"middle plane {_psnr(plane, synth.all_in_focus, peak):.2f} dB; "
        f"depth RMSE {depth_rmse:.2f} planes",
        flush=True,
    )
