"""Listing a folder of plane files (their order and the several-stacks check) in checkouts
of fstack_dask side by side: the cost of a change to how plane names are read.

Usage::

    python benchmarks/plane_listing.py CHECKOUT [CHECKOUT ...] [--planes 10000] [--repeat 5]

Makes two folders of ``--planes`` empty ``.tif`` files, ``z00000.tif`` ... (no "p" between
digits) and ``z0p00.tif`` ... (a "p" for a decimal point), and times ``list_plane_files`` of
each in a fresh process per checkout (its package first on ``PYTHONPATH``), the checkouts
alternated; prints each run's CPU seconds (the process's: steadier than the wall clock on a
shared machine; the listing is one thread) and the median, "refused" where a checkout
refuses the names. Only names are read: no file is opened.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

_CHILD = """
import sys, time
from fstack_dask._sources.plane_files import list_plane_files
t = time.process_time()
try:
    list_plane_files(sys.argv[1], "src")
    said = ""
except ValueError:
    said = " refused"
print(f"{time.process_time() - t:.3f}{said}")
"""


def _time(checkout: str, folder: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, folder],
        capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), check=True,
    )  # fmt: skip
    return done.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+")
    parser.add_argument("--planes", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n = args.planes
    folders = {
        "z00000.tif ... (no p)": [f"z{k:05d}.tif" for k in range(n)],
        "z0p00.tif ... (p for a point)": [f"z{k // 100}p{k % 100:02d}.tif" for k in range(n)],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for label, names in folders.items():
            folder = os.path.join(tmp, str(len(os.listdir(tmp))))
            os.mkdir(folder)
            for name in names:
                open(os.path.join(folder, name), "wb").close()
            runs: dict[str, list[str]] = {c: [] for c in args.checkouts}
            for _ in range(args.repeat):
                for checkout in args.checkouts:
                    runs[checkout].append(_time(checkout, folder))
            print(f"{n} planes named {label}:")
            for checkout, said in runs.items():
                median = statistics.median(float(s.split()[0]) for s in said)
                print(f"  {checkout}: median {median:.2f} s  ({', '.join(said)})")


if __name__ == "__main__":
    main()
