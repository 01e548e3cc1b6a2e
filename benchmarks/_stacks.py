"""Benchmark stacks: generated once, cached as Zarr under ``benchmarks/_cache``.

The same synthetic content (``fstack_dask.synthetic_stack``, 2 % noise, seed 0) stored in
the layouts users have: all planes in one chunk ("whole-z"), one plane per chunk ("z-chunked",
what a TIFF conversion gives), and sharded (Zarr v3 shards of several chunks). Larger sizes
tile the 2048^2 stack (the same statistics).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import zarr

# name: ((y, x), planes, dtype, rgb)
SIZES = {
    "grey2048": ((2048, 2048), 51, "uint16", False),
    "rgb2048": ((2048, 2048), 21, "uint8", True),
    "u8_2048x32": ((2048, 2048), 32, "uint8", False),
    "u8_8192x32": ((8192, 8192), 32, "uint8", False),
    "grey4096": ((4096, 4096), 51, "uint16", False),
    "grey4096x16384": ((4096, 16384), 51, "uint16", False),
    "grey4096x512": ((4096, 512), 51, "uint16", False),  # one block wide: more workers than columns
    "f32_2048": ((2048, 2048), 51, "float32", False),  # float samples: checked for NaN
}
CHUNK = 512
LAYOUTS = ("whole-z", "z-chunked", "sharded")


def _synthetic(name: str) -> tuple[np.ndarray, str]:
    from fstack_dask import synthetic_stack

    (ny, nx), planes, dtype, rgb = SIZES[name]
    tile = min(ny, nx, 2048)
    data = synthetic_stack((tile, tile), planes, rgb=rgb, dtype=dtype, noise=0.02, seed=0).stack
    zyx = np.moveaxis(data, (3, 2), (0, 1)) if rgb else np.moveaxis(data, 2, 0)
    return np.ascontiguousarray(zyx), ("czyx" if rgb else "zyx")


def stack_path(name: str, layout: str, cache: Path) -> Path:
    """The cached stack ``name`` in ``layout`` (written on first use, by a child process: the
    benchmark's own process must stay small, since a child it forks starts with its memory
    counted in the child's peak), an OME-Zarr 0.5 image."""
    import subprocess
    import sys

    path = cache / f"{name}.{layout}.ome.zarr"
    if not (path / "zarr.json").exists():
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); " + (
            f"from _stacks import write; write({name!r}, {layout!r}, {str(path)!r})"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
    return path


def write(name: str, layout: str, path_text: str) -> None:
    path = Path(path_text)
    from fstack_dask import write_stack

    print(f"  generating {path.name} ...", flush=True)
    small, axes = _synthetic(name)
    (ny, nx), planes, _, rgb = SIZES[name]
    lead = (3,) if rgb else ()
    if layout == "whole-z":
        chunks, shards = (*lead, planes, CHUNK, CHUNK), None
    elif layout == "z-chunked":
        chunks, shards = (*((1,) if rgb else ()), 1, CHUNK, CHUNK), None
    else:  # 4 x 4 chunks of 256^2 per shard of 1024^2, every plane in each
        chunks, shards = (*lead, planes, 256, 256), (*lead, planes, 1024, 1024)
    tmp = path.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_stack(tmp, small[..., :1, :1], axes=axes)  # the OME metadata; the array replaced:
    group = zarr.open_group(str(tmp), mode="r+")
    del group["0"]
    array = group.create_array(
        "0", shape=small.shape[:-2] + (ny, nx), dtype=small.dtype, chunks=chunks,
        shards=shards, dimension_names=list(axes),
    )  # fmt: skip
    tile = small.shape[-1]
    for i in range(ny // tile):
        for j in range(nx // tile):
            array[..., i * tile : (i + 1) * tile, j * tile : (j + 1) * tile] = small
    tmp.rename(path)
    return path


def stored_bytes(path: Path) -> int:
    """Bytes of the stored (compressed) data files of a stack's level 0."""
    return sum(f.stat().st_size for f in (path / "0").rglob("*") if f.is_file())
