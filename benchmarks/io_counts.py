"""A run's I/O, counted: system calls on the source and on dst, per block (Linux, strace).

Usage::

    python benchmarks/io_counts.py [--blocks 4,64,1024] [--markdown]

Each case runs the real command line (``python -m fstack_dask fuse ...``) under
``strace -f -ff -y`` on a fresh local source (6 x side x side uint16, blocks of 32 x 32) and
counts, from the trace, the calls on paths under the source and under dst (its staging folder
beside it included): opens, stats, folder listings (``O_DIRECTORY`` opens), fsyncs of files
and of folders, renames, unlinks, bytes read and written, and the lock's and the done-markers'
opens. Counts are exact where timings on a shared machine are not: on NFS, Lustre or GPFS
each open, stat, listing and fsync is a round trip. Timing under strace means nothing and is
not printed.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from fstack_dask import write_stack

_LINE = re.compile(r"^(?:\d+ +)?([a-z0-9_]+)\((.*)\) += (-?\d+)")
_FD = re.compile(r"^-?\d+<([^>]*)>")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_STATS = {"newfstatat", "stat", "lstat", "fstat", "statx", "access", "faccessat", "faccessat2"}
_READS = {"read", "pread64", "readv", "preadv", "preadv2"}
_WRITES = {"write", "pwrite64", "writev", "pwritev", "pwritev2"}


def _paths(name: str, args: str, ret: str, rest: str) -> list[str]:
    """The paths a call names: its fd's (``-y``), its quoted absolute paths, the new fd's."""
    out = []
    fd = _FD.match(args)
    if fd:
        out.append(fd.group(1))
    out += [p for p in _QUOTED.findall(args) if p.startswith("/")]
    if name in ("openat", "open"):
        new = _FD.match(f"{ret}{rest}")
        if new:
            out.append(new.group(1))
    return out


def count(trace_prefix: str, src: str, dst: str) -> Counter:
    """Counts of the calls in the traces ``trace_prefix.*`` that touch ``src`` or ``dst``."""
    parent, base = os.path.split(dst.rstrip("/"))
    src = src.rstrip("/")

    def where(path: str) -> str | None:
        if path == src or path.startswith(src + "/"):
            return "src"
        if os.path.dirname(path.split(base, 1)[0] + "x") == parent and base in path:
            return "dst"  # dst, its staging folder and what lies beside it named after it
        return None

    c: Counter = Counter()
    for trace in glob.glob(trace_prefix + ".*"):
        folders: set[str] = set()  # this thread's fds opened as folders (fsync_dir)
        with open(trace, errors="replace") as fh:
            for line in fh:
                m = _LINE.match(line)
                if not m:
                    continue
                name, args, ret = m.groups()
                rest = line[m.end() :]
                paths = _paths(name, args, ret, rest)
                sides = {w for w in map(where, paths) if w}
                if not sides:
                    continue
                side = "dst" if "dst" in sides else "src"
                n = int(ret)
                if any(p.endswith("/.fstack_dask/lock") for p in paths):
                    c["lock: system calls"] += 1
                if name in _READS and n > 0 and paths[0].endswith("zarr.json"):
                    c[f"{side} zarr.json bytes read"] += n
                if name in ("openat", "open"):
                    if n < 0:
                        c[f"{side} failed opens"] += 1
                        continue
                    if "O_DIRECTORY" in args:
                        c[f"{side} folder opens"] += 1
                        folders.add(ret)
                    else:
                        c[f"{side} opens"] += 1
                        folders.discard(ret)
                    path = paths[-1]
                    if path.endswith("/.fstack_dask/lock"):
                        c["lock: opens"] += 1
                    elif "/.fstack_dask/done/" in path and "O_CREAT" in args:
                        c["markers written"] += 1
                    elif "/.fstack_dask/done/" in path:
                        c["markers read"] += 1
                elif name in _STATS:
                    c[f"{side} stats"] += 1
                elif name == "getdents64" and n > 0:
                    c[f"{side} listing reads"] += 1
                elif name in ("fsync", "fdatasync"):
                    kind = "folder" if args.split("<", 1)[0] in folders else "file"
                    c[f"{side} fsyncs ({kind})"] += 1
                elif name.startswith("rename"):
                    c[f"{side} renames"] += 1
                elif name in ("unlink", "unlinkat", "rmdir"):
                    c[f"{side} unlinks"] += 1
                elif name in _READS and n > 0:
                    c[f"{side} bytes read"] += n
                elif name in _WRITES and n > 0:
                    c[f"{side} bytes written"] += n
    return c


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def run_case(work: Path, label: str, src: str, dst: str, options: list[str]) -> dict:
    prefix = str(work / f"trace-{label}")
    for old in glob.glob(prefix + ".*"):
        os.unlink(old)
    cmd = [sys.executable, "-m", "fstack_dask", "fuse", src, dst, "--no-progress", *options]
    strace = ["strace", "-f", "-ff", "-y", "-qq", "-o", prefix,
              "-e", "trace=%file,%desc,fsync,fdatasync"]  # fmt: skip
    done = subprocess.run(strace + cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{label}: {done.stderr.strip()}")
    c = count(prefix, src, dst)
    c["src stored bytes"] = _size(src)
    c["dst stored bytes"] = _size(dst)
    return dict(c)


def _stack(side: int) -> np.ndarray:
    return np.random.default_rng(0).integers(1, 4000, (6, side, side), dtype=np.uint16)


def zarr_source(path: Path, side: int) -> str:
    write_stack(path, _stack(side), axes="zyx", chunks=(6, 32, 32))
    return str(path)


def tiff_source(path: Path, side: int) -> str:
    import tifffile

    tifffile.imwrite(path, _stack(side), photometric="minisblack")
    return str(path)


def planes_source(path: Path, side: int) -> str:
    import tifffile

    path.mkdir()
    for z, plane in enumerate(_stack(side)):
        tifffile.imwrite(path / f"p{z:02d}.tif", plane, photometric="minisblack")
    return str(path)


_INTERRUPT = """
import sys
from fstack_dask import fuse_zarr
from fstack_dask._runs.blocks import FuseJob
real, calls = FuseJob.fuse_and_write, [0]
def stop_half_way(self, block, *args, **kwargs):
    if calls[0] >= int(sys.argv[3]):
        raise KeyboardInterrupt
    calls[0] += 1
    return real(self, block, *args, **kwargs)
FuseJob.fuse_and_write = stop_half_way
try:
    fuse_zarr(sys.argv[1], sys.argv[2], chunks=32, levels=0, scheduler="synchronous",
              progress=False)
except KeyboardInterrupt:
    pass
"""


def cases(work: Path, n: int) -> dict[str, tuple[str, str, list[str]]]:
    """label -> (src, dst, options) of each case with ``n`` blocks of level 0."""
    side = 32 * int(round(n**0.5))
    zarr = zarr_source(work / f"s{n}.zarr", side)
    level0 = ["--chunks", "32", "--levels", "0"]
    half = str(work / f"half{n}.zarr")
    subprocess.run([sys.executable, "-c", _INTERRUPT, zarr, half, str(n // 2)], check=True)
    old = str(work / f"old{n}.zarr")  # a finished output (default levels) to replace
    fuse = [sys.executable, "-m", "fstack_dask", "fuse", "--no-progress", "--chunks", "32"]
    subprocess.run([*fuse, zarr, old], check=True, capture_output=True)
    return {
        "zarr": (zarr, str(work / f"o{n}.zarr"), level0),
        "zarr default levels": (zarr, str(work / f"p{n}.zarr"), ["--chunks", "32"]),
        "--resume of half": (zarr, half, [*level0, "--resume"]),
        "--overwrite of a finished output": (zarr, old, ["--chunks", "32", "--overwrite"]),
        "TIFF": (tiff_source(work / f"s{n}.tif", side), str(work / f"t{n}.zarr"), level0),
        "plane folder": (
            planes_source(work / f"planes{n}", side),
            str(work / f"f{n}.zarr"),
            level0,
        ),  # fmt: skip
    }


def table(rows: dict[str, tuple[int, dict]]) -> str:
    keys = sorted({k for _, c in rows.values() for k in c})
    out = ["| count | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for k in keys:
        cells = []
        for n, c in rows.values():
            v = c.get(k, 0)
            cells.append(f"{v}" if "bytes" in k else f"{v} ({v / n:.2f})")
        out.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default="4,64,1024")
    parser.add_argument("--only", default="", help="case labels, comma-separated (all)")
    args = parser.parse_args()
    if shutil.which("strace") is None:
        raise SystemExit("needs strace (apt-get install strace)")
    work = Path(tempfile.mkdtemp())
    by_case: dict[str, dict[str, tuple[int, dict]]] = {}
    for n in map(int, args.blocks.split(",")):
        for label, (src, dst, options) in cases(work, n).items():
            if args.only and label not in args.only.split(","):
                continue
            tag = re.sub(r"\W", "", label) + str(n)
            counted = run_case(work, tag, src, dst, options)
            by_case.setdefault(label, {})[f"{n} blocks"] = (n, counted)
    for label, rows in by_case.items():
        print(f"\n{label} (per block of level 0 in brackets)\n")
        print(table(rows))


if __name__ == "__main__":
    main()
