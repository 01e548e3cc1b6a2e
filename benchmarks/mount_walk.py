"""The cost of finding the mount points inside an output of many folders: the mount table
(``/proc/self/mountinfo``) against the statx walk that replaces it where the table is masked
(``_locations.remove._mount_roots``, f339694), and ``os.walk`` alone, alternated.

    python benchmarks/mount_walk.py --folders 100 --repeats 5   # 100 x 100 folders
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from fstack_dask._locations import remove


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folders", type=int, default=100, help="n: an output of n x n folders")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="mount-walk-")
    try:
        for i in range(args.folders):
            for j in range(args.folders):
                os.makedirs(os.path.join(root, "0", "c", str(i), str(j)))
        count = sum(len(dirs) for _root, dirs, _files in os.walk(root))
        ways = {
            "mount table": lambda: remove.mounts_within(root, itself=True),
            "statx walk": lambda: remove._mount_roots(root, True),
            "os.walk alone": lambda: [None for _ in os.walk(root)],
        }
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.repeats):
            for name, way in ways.items():
                start = time.perf_counter()
                way()
                times[name].append(time.perf_counter() - start)
        print(f"{count} folders, {args.repeats} repeats alternated:")
        for name, seconds in times.items():
            print(f"  {name}: median {statistics.median(seconds) * 1e3:.1f} ms "
                  f"(min {min(seconds) * 1e3:.1f})")  # fmt: skip
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
