"""Make ``docs/alignment_pcb.jpg``: what a stack whose planes are not aligned fuses into.

The PCB photographs of PetteriAimonen/focus-stack (``examples/pcb/``, MIT licence; 7 JPEG
planes of 2048 x 1536) were taken by hand: the framing shifts and the magnification changes
a little from plane to plane. fstack_dask fuses each pixel from the planes as they are, so
where they disagree the result holds several shifted copies of an edge. The figure puts two
crops of ``fstack-dask fuse "pcb/pcb_*.jpg" pcb.ome.zarr`` (top) above the same crops of
``expected.jpg``, focus-stack's own result, which aligned the planes first (bottom; it also
crops and rescales the frame a little, so the crops are not pixel for pixel the same place).

Run it from the repository, with the folder of the photographs::

    python docs/alignment_figure.py /path/to/petteri_pcb
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np
from PIL import Image

import fstack_dask

CROPS = ((slice(20, 260), slice(1500, 1860)), (slice(780, 1020), slice(1320, 1680)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=pathlib.Path, help="the PCB photographs and expected.jpg")
    here = pathlib.Path(__file__).resolve().parent
    parser.add_argument("--out", type=pathlib.Path, default=here / "alignment_pcb.jpg")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = fstack_dask.fuse_zarr(
            str(args.folder / "pcb_*.jpg"), pathlib.Path(tmp) / "pcb.ome.zarr", levels=0
        )
        fused = np.moveaxis(out["0"][...], 0, -1)
    with Image.open(args.folder / "expected.jpg") as im:
        aligned = np.asarray(im.convert("RGB"))
    rows = [np.concatenate([image[c] for c in CROPS], axis=1) for image in (fused, aligned)]
    gap = np.full((8, rows[0].shape[1], 3), 255, np.uint8)
    figure = Image.fromarray(np.concatenate([rows[0], gap, rows[1]]))
    figure.save(args.out, quality=92, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
