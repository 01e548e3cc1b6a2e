"""Listing a local store's chunk files for the resume fingerprint: ours against os.walk.

Usage::

    python benchmarks/listing.py [--side 2048] [--chunk 32] [--repeat 5]

Writes a 4 x side x side uint16 store with chunks of 1 x chunk x chunk (one file per chunk:
16,384 files by default), then times ``Source.data_files()`` (``os.scandir``, each entry
stat'ed through its folder) and the ``os.walk`` plus ``os.stat`` of each joined path that it
replaced, checking that both list the same files in the same order. Prints the best of
``--repeat`` runs of each, alternated, with the page cache warm (as on a second run); on a
parallel filesystem each stat is a round trip and both take longer.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from fstack_dask import write_stack
from fstack_dask._sources.open import open_source
from fstack_dask._sources.source import _METADATA_FILES


def _os_walk(root: str) -> list[tuple[str, int, int, int, int]]:
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name in _METADATA_FILES or name.endswith(".partial"):
                continue
            path = os.path.join(folder, name)
            st = os.stat(path)
            out.append(
                (os.path.relpath(path, root), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    path = Path(tempfile.mkdtemp()) / "s.zarr"
    data = np.random.default_rng(0).integers(1, 9, (4, args.side, args.side), dtype=np.uint16)
    write_stack(path, data, axes="zyx", chunks=(1, args.chunk, args.chunk))
    source = open_source(path)
    root = source.data_root.path
    ours = list(source.data_files())
    assert ours == _os_walk(root), "the two listings differ"
    best = {"os.walk + os.stat": float("inf"), "data_files (os.scandir)": float("inf")}
    for _ in range(args.repeat):
        for name, list_files in (
            ("os.walk + os.stat", lambda: _os_walk(root)),
            ("data_files (os.scandir)", lambda: list(source.data_files())),
        ):
            start = time.perf_counter()
            list_files()
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"{len(ours)} chunk files, best of {args.repeat}:")
    for name, seconds in best.items():
        print(f"  {name}: {seconds:.3f} s ({seconds / len(ours) * 1e6:.1f} us per file)")
    print(f"  ratio: {best['os.walk + os.stat'] / best['data_files (os.scandir)']:.2f}x")


if __name__ == "__main__":
    main()
