"""Reading a CZI mosaic z-stack against reading the same pixels from Zarr (issue 20, point 4).

    python benchmarks/vendor.py [--tiles 4] [--planes 8] [--repeat 3] [--bioio DIR]

Writes, in a temporary folder, a CZI mosaic z-stack with ZEISS's pylibCZIrw (``--tiles`` x
``--tiles`` tiles of 1024 x 1024 px overlapping by 104 px, ``--planes`` planes, uint16, smooth
texture with 2 % noise, Zstd level 1 with libCZI's hi/lo byte unpacking: the compression ZEN
calls "zstd1"), and the same pixels, as pylibCZIrw composes them, as a Zarr v3 array with the
same codec family (Zstd level 1) in chunks of (all planes, 512, 512), the chunks fstack_dask's
CZI reader reads. Then, each in a fresh child process, best of ``--repeat``:

- reading the whole stack unit by unit (512 x 512 px of every plane, in raster order, what the
  block pipeline decodes) through fstack_dask's readers: CZI (pylibCZIrw regions with its tile
  cache) and Zarr (zarr-python);
- ``fuse_zarr`` from each (2 threads, ``levels=0``), the whole run;
- with ``--bioio DIR`` (a folder holding bioio and bioio-czi, e.g. made with
  ``pip install --target DIR bioio bioio-czi``; kept apart from the project's environment):
  bioio-czi's reader, whose dask chunks are whole planes, reading the stack plane by plane,
  and one 512 x 512 unit of every plane.

Prints one Markdown table with seconds, MB/s of decoded pixels and the peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

TILE, STEP, UNIT = 1024, 920, 512
ZSTD = "zstd1:ExplicitLevel=1;PreProcess=HiLoByteUnpack"


def make(folder: str, tiles: int, planes: int) -> dict:
    import zarr
    from pylibCZIrw import czi as pyczi
    from zarr.codecs import ZstdCodec

    czi = os.path.join(folder, "mosaic.czi")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:TILE, 0:TILE].astype(np.float32)
    with pyczi.create_czi(czi, exist_ok=True, compression_options=ZSTD) as w:
        for z in range(planes):
            for j in range(tiles):
                for i in range(tiles):
                    y0, x0 = j * STEP, i * STEP
                    texture = np.sin((yy + y0) / (7 + z)) * np.cos((xx + x0) / (11 + z))
                    tile = 20000 + 15000 * texture + rng.normal(0, 600, texture.shape)
                    w.write(tile.astype(np.uint16), location=(x0, y0), plane={"Z": z})
        w.write_metadata(scale_x=0.325e-6, scale_y=0.325e-6, scale_z=2e-6)
    side = STEP * (tiles - 1) + TILE
    store = os.path.join(folder, "same.zarr")
    arr = zarr.create_array(store, shape=(planes, side, side), dtype="uint16",
                            chunks=(planes, UNIT, UNIT), compressors=ZstdCodec(level=1),
                            dimension_names=["z", "y", "x"])  # fmt: skip
    with pyczi.open_czi(czi) as r:
        box = r.total_bounding_rectangle
        for y in range(0, side, UNIT):
            h = min(UNIT, side - y)
            band = np.stack([r.read(roi=(box.x, box.y + y, side, h), plane={"Z": z})[..., 0]
                             for z in range(planes)])  # fmt: skip
            arr[:, y : y + h] = band
    size = lambda p: sum(os.path.getsize(os.path.join(d, f))  # noqa: E731
                         for d, _, fs in os.walk(p) for f in fs) if os.path.isdir(p) \
        else os.path.getsize(p)  # fmt: skip
    return {"czi": czi, "zarr": store, "shape": [planes, side, side],
            "czi_mb": size(czi) / 1e6, "zarr_mb": size(store) / 1e6}  # fmt: skip


# ------------------------------------------------------------------ child measurements


def _units(shape):
    for y in range(0, shape[1], UNIT):
        for x in range(0, shape[2], UNIT):
            yield slice(y, y + UNIT), slice(x, x + UNIT)


def child_read(src: str) -> dict:
    from fstack_dask._sources.open import open_source

    t0 = time.perf_counter()
    source = open_source(src, axes="zyx" if src.endswith(".zarr") else None)
    total = 0
    for ys, xs in _units(source.shape):
        total += source.array[:, ys, xs].nbytes
    return {"s": time.perf_counter() - t0, "bytes": total}


def child_fuse(src: str, dst: str) -> dict:
    import fstack_dask

    t0 = time.perf_counter()
    fstack_dask.fuse_zarr(src, dst, axes="zyx" if src.endswith(".zarr") else None, levels=0,
                          progress=False, scheduler="threads", overwrite=True)  # fmt: skip
    return {"s": time.perf_counter() - t0}


def child_bioio(src: str, planes: int, what: str) -> dict:
    from bioio import BioImage
    from bioio_czi import Reader

    t0 = time.perf_counter()
    image = BioImage(src, reader=Reader)
    data = image.get_image_dask_data("ZYX", T=0, C=0)
    if what == "planes":
        total = sum(data[z].compute().nbytes for z in range(planes))
    else:  # one 512 x 512 unit of every plane
        total = data[:, :UNIT, :UNIT].compute().nbytes
    return {"s": time.perf_counter() - t0, "bytes": total}


def run_child(args: list[str], env=None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                         text=True, check=True, env=env)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def best_of(n: int, args: list[str], env=None) -> dict:
    runs = [run_child(args, env) for _ in range(n)]
    best = min(runs, key=lambda r: r["s"])
    best["all_s"] = [round(r["s"], 3) for r in runs]
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, default=4)
    p.add_argument("--planes", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--bioio", help="a folder holding bioio and bioio-czi (pip install --target)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, *rest = a.child
        fn = {"read": child_read, "fuse": child_fuse, "bioio": child_bioio}[kind]
        result = fn(*[int(r) if r.isdigit() else r for r in rest])
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result["peak_mib"] = usage.ru_maxrss / 1024
        result["cpu_s"] = usage.ru_utime + usage.ru_stime
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as folder:
        info = make(folder, a.tiles, a.planes)
        mb = np.prod(info["shape"]) * 2 / 1e6
        # CZI and Zarr runs alternate, so that drift on a shared machine hits both alike
        sources = (("CZI (pylibCZIrw regions)", info["czi"]), ("Zarr, Zstd 1", info["zarr"]))
        runs: dict = {}
        for _ in range(a.repeat):
            for name, src in sources:
                for kind, extra in (("read", []), ("fuse", [os.path.join(folder, "o.zarr")])):
                    runs.setdefault((name, kind), []).append(run_child([kind, src, *extra]))
        rows = []
        for name, _ in sources:
            picked = []
            for kind in ("read", "fuse"):
                best = min(runs[name, kind], key=lambda r: r["s"])
                best["all_s"] = [round(r["s"], 3) for r in runs[name, kind]]
                picked.append(best)
            rows.append((name, *picked))
        env = None
        if a.bioio:
            env = {**os.environ, "PYTHONPATH": a.bioio}
            whole = best_of(a.repeat, ["bioio", info["czi"], str(a.planes), "planes"], env)
            unit = best_of(a.repeat, ["bioio", info["czi"], str(a.planes), "unit"], env)
        print(f"{info['shape'][0]} planes x {info['shape'][1]} x {info['shape'][2]} uint16 "
              f"({mb:.0f} MB decoded), CZI {info['czi_mb']:.0f} MB, Zarr {info['zarr_mb']:.0f} "
              f"MB on disk; best of {a.repeat}\n")  # fmt: skip
        print("| reader | read every 512 px unit s | MB/s | CPU s | peak MiB | fuse_zarr s "
              "(2 threads) | CPU s | peak MiB |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for name, r, f in rows:
            print(f"| {name} | {r['s']:.2f} {r['all_s']} | {mb / r['s']:.0f} | "
                  f"{r['cpu_s']:.2f} | {r['peak_mib']:.0f} | {f['s']:.2f} {f['all_s']} | "
                  f"{f['cpu_s']:.2f} | {f['peak_mib']:.0f} |")  # fmt: skip
        czi_r, zarr_r = rows[0][1]["s"], rows[1][1]["s"]
        czi_f, zarr_f = rows[0][2]["s"], rows[1][2]["s"]
        cpu = rows[0][1]["cpu_s"] / rows[1][1]["cpu_s"], rows[0][2]["cpu_s"] / rows[1][2]["cpu_s"]
        print(f"\nCZI / Zarr: reading {czi_r / zarr_r:.2f}x ({cpu[0]:.2f}x the CPU time), "
              f"fuse_zarr {czi_f / zarr_f:.2f}x ({cpu[1]:.2f}x the CPU time)")  # fmt: skip
        if a.bioio:
            print(f"\nbioio-czi (whole planes): every plane {whole['s']:.2f} s "
                  f"{whole['all_s']}, {mb / whole['s']:.0f} MB/s, peak {whole['peak_mib']:.0f} "
                  f"MiB; one 512 x 512 unit of every plane {unit['s']:.2f} s {unit['all_s']}, "
                  f"peak {unit['peak_mib']:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
