"""Region-read speed of the input readers on the real stacks in shared/realdata.

    python benchmarks/readers.py [REALDATA_DIR]

For each reader it opens the stack, then times (best of --repeats, each on a fresh
reader so no cache carries over unless stated):

- "decode/plane": reading every plane whole, divided by the number of planes
  (for plane files: one file decode each);
- "256² region, cold": one 256 x 256 region of every plane, nothing cached;
- "256² region, warm": the same region again (plane files: from the decoded-plane cache);
- "all 256² blocks": the whole image read block by block (what the pipeline does),
  per plane, with the default cache; and with cache_bytes=0 (every block decodes every file);
- the library alone (tifffile.imread, Pillow) on the same files, for the overhead.

The multi-page readers (open_tiff) use the light-sheet planes rewritten into one ImageJ
hyperstack (uncompressed, one strip per page, as ImageJ writes it) and one OME-TIFF
(zlib, 256 x 256 tiles), in a temporary folder. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from fstack_dask._sources.images import open_image_files  # noqa: E402
from fstack_dask._sources.tiff import open_tiff  # noqa: E402


def best(fn, repeats, setup=None):
    """Best time of `fn(setup())` over `repeats` runs; `setup` is not timed."""
    times = []
    for _ in range(repeats):
        arg = setup() if setup is not None else None
        t0 = time.perf_counter()
        fn(arg) if setup is not None else fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def blocks(shape_yx, side=256):
    for y in range(0, shape_yx[0], side):
        for x in range(0, shape_yx[1], side):
            yield slice(y, y + side), slice(x, x + side)


def measure(name, open_fn, library_fn, n_planes, repeats):
    array = open_fn().array
    yx = array.shape[1:3]
    region = (slice(None), slice(100, 356), slice(100, 356))
    fresh = lambda: open_fn().array  # noqa: E731 - a new reader: empty cache
    rows = {"stack": name, "shape": "x".join(map(str, array.shape)), "chunks": array.chunks}
    rows["open ms"] = best(open_fn, repeats) * 1e3
    rows["decode/plane ms"] = best(lambda a: a[...], repeats, fresh) * 1e3 / n_planes
    rows["library/plane ms"] = best(library_fn, repeats) * 1e3 / n_planes
    rows["256² cold ms/plane"] = best(lambda a: a[region], repeats, fresh) * 1e3 / n_planes
    warm = open_fn().array
    warm[region]
    rows["256² warm ms/plane"] = best(lambda: warm[region], repeats) * 1e3 / n_planes

    def all_blocks(a):
        for ys, xs in blocks(yx):
            a[:, ys, xs]

    rows["all blocks ms/plane"] = best(all_blocks, repeats, fresh) * 1e3 / n_planes
    if "cache" in open_fn.__code__.co_varnames:
        rows["all blocks, no cache"] = (
            best(all_blocks, repeats, lambda: open_fn(cache=0).array) * 1e3 / n_planes
        )
    rows["blocks"] = len(list(blocks(yx)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("realdata", nargs="?", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    root = args.realdata or next(
        p
        for p in (os.path.join(here, "..", "..", "shared", "realdata"), "/work/shared/realdata")
        if os.path.isdir(p)
    )
    import tifffile
    from PIL import Image

    light = os.path.join(root, "dfnn_mitochondria_lightsheet")
    tifs = sorted(glob.glob(os.path.join(light, "*.tif")))
    jpgs = sorted(glob.glob(os.path.join(root, "petteri_pcb", "pcb_*.jpg")))

    def pillow_all():
        for f in jpgs:
            with Image.open(f) as im:
                np.asarray(im)

    results = [
        measure(
            "light-sheet TIFF planes (34 files, uncompressed)",
            lambda cache=256 * 2**20: open_image_files(light, cache_bytes=cache),
            lambda: [tifffile.imread(f) for f in tifs],
            len(tifs),
            args.repeats,
        ),
        measure(
            "PCB JPEG planes (7 files, RGB)",
            lambda cache=256 * 2**20: open_image_files(
                os.path.join(root, "petteri_pcb", "pcb_*.jpg"), cache_bytes=cache
            ),
            pillow_all,
            len(jpgs),
            args.repeats,
        ),
    ]
    stack = np.stack([tifffile.imread(f) for f in tifs])
    with tempfile.TemporaryDirectory() as tmp:
        ij = os.path.join(tmp, "light.tif")
        tifffile.imwrite(ij, stack, imagej=True, metadata={"axes": "ZYX"})
        ome = os.path.join(tmp, "light.ome.tif")
        tifffile.imwrite(
            ome, stack, ome=True, compression="zlib", tile=(256, 256), metadata={"axes": "ZYX"}
        )
        for label, path in (
            ("ImageJ hyperstack (1 strip/page)", ij),
            ("OME-TIFF zlib 256² tiles", ome),
        ):
            results.append(
                measure(
                    f"light-sheet as {label}",
                    lambda path=path: open_tiff(path),
                    lambda path=path: tifffile.imread(path),
                    len(tifs),
                    args.repeats,
                )
            )
    keys = list(results[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in results:
        cells = [f"{r.get(k, '-'):.2f}" if isinstance(r.get(k), float) else str(r.get(k, "-"))
                 for k in keys]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
