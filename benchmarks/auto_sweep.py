"""Training sweep for ``nhsize="auto"`` / ``sth="auto"``: PSNR over a grid of parameters.

Synthetic stacks on *training* seeds only (the quality benchmark uses other seeds),
256 x 256 px, for every noise level, blur rate, plane count and colour mode below;
for each, the PSNR against the ground truth of the fusion at every (nhsize, sth) of
the grid, of focusweave 2.0.0 at its defaults, the best plane and the plane mean.
Writes ``benchmarks/auto_sweep.json``. Single process (about 40 min on one core).

    python benchmarks/auto_sweep.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _fusion_tools import blend, focusweave_fuse, prepare, psnr, round_to, to_planes  # noqa: E402

from fstack_dask import synthetic_stack  # noqa: E402

TRAIN_SEEDS = (100, 101)
NOISE = (0.0, 0.01, 0.02, 0.03, 0.05, 0.1)
MAX_SIGMA = (1.0, 2.0, 4.0, 8.0)
PLANES = (7, 11, 21, 51)
MODES = (("uint16", False), ("uint8", True))
NHSIZE = (5, 7, 9, 11, 15, 21, 31)
STH = (-10.0, -5.0, 0.0, 4.0, 8.0, 13.0, 18.0, 23.0, 28.0)
SHAPE = (256, 256)


def run_one(dtype, rgb, n_planes, noise, max_sigma, seed):
    s = synthetic_stack(
        SHAPE, n_planes, rgb=rgb, dtype=dtype, noise=noise, max_sigma=max_sigma, seed=seed
    )
    planes, _ = to_planes(s.stack)
    truth = np.moveaxis(s.all_in_focus, -1, 0) if rgb else s.all_in_focus
    peak = float(np.iinfo(dtype).max)
    table = {}
    for nh in NHSIZE:
        prep = prepare(planes, rgb, nh)
        for sth in STH:
            fused = round_to(blend(planes, rgb, prep, sth=sth), dtype)
            table[f"{nh},{sth:g}"] = psnr(fused, truth, peak)
    axis = 1 if rgb else 0
    return {
        "dtype": dtype,
        "rgb": rgb,
        "planes": n_planes,
        "noise": noise,
        "max_sigma": max_sigma,
        "seed": seed,
        "psnr": table,
        "focusweave": psnr(focusweave_fuse(planes, rgb), truth, peak),
        "best_plane": max(
            psnr(np.take(planes, p, axis=axis), truth, peak) for p in range(n_planes)
        ),
        "plane_mean": psnr(round_to(planes.mean(axis=axis), dtype), truth, peak),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, 21 planes only")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).with_name("auto_sweep.json")))
    args = ap.parse_args()
    seeds = TRAIN_SEEDS[:1] if args.quick else TRAIN_SEEDS
    planes = (21,) if args.quick else PLANES
    rows = []
    t0 = time.perf_counter()
    for dtype, rgb in MODES:
        for n_planes in planes:
            for noise in NOISE:
                for ms in MAX_SIGMA:
                    for seed in seeds:
                        row = run_one(dtype, rgb, n_planes, noise, ms, seed)
                        rows.append(row)
                        best = max(row["psnr"], key=row["psnr"].get)
                        print(
                            f"{time.perf_counter() - t0:7.0f}s {dtype} rgb={rgb} P={n_planes} "
                            f"noise={noise} ms={ms} seed={seed}: default "
                            f"{row['psnr']['9,13']:.2f} best {best} {row['psnr'][best]:.2f} "
                            f"fw {row['focusweave']:.2f}",
                            flush=True,
                        )
    for row in rows:  # 3 decimals: the file is the record of the fit, not a cache
        row["psnr"] = {k: round(v, 3) for k, v in row["psnr"].items()}
    pathlib.Path(args.out).write_text(json.dumps({"shape": SHAPE, "rows": rows}))


if __name__ == "__main__":
    main()
