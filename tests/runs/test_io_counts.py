"""A run's I/O, counted (on NFS, Lustre and GPFS each open, stat and read is a round trip):
what a block costs stays a small constant, and nothing is opened, stat'ed or read again
that the run has in hand. Counts, never times (``benchmarks/io_counts.py`` counts a whole run
with strace)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fstack_dask import fuse_zarr, write_stack
from fstack_dask._runs import pyramid

SIDE, CHUNK = 128, 32  # 16 blocks of level 0; levels 1 and 2: 4 blocks and 1


def _src(path: Path) -> Path:
    data = np.random.default_rng(0).integers(1, 4000, (6, SIDE, SIDE), dtype=np.uint16)
    write_stack(path, data, axes="zyx", chunks=(6, CHUNK, CHUNK))
    return path


def test_the_pyramid_opens_the_output_once_a_level_not_once_a_block(tmp_path, monkeypatch):
    """Each pyramid block (a task) opened the output's group and its two levels' arrays:
    each one's zarr.json read, and three failed lookups of zarr v2 names, a round trip each
    on NFS (341 blocks above 1024 of level 0: 2.2 MB of zarr.json read for a 2.3 MB output)."""
    calls = []
    real = pyramid.open_output

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(pyramid, "open_output", counted)
    fuse_zarr(_src(tmp_path / "s.zarr"), tmp_path / "o.zarr", chunks=CHUNK, progress=False,
              scheduler="threads")  # fmt: skip
    assert len(calls) <= 2, f"{len(calls)} opens of the output for 2 levels of 5 blocks"


def test_done_markers_record_the_sizes_without_a_stat_of_each_chunk(tmp_path, monkeypatch):
    """mark_done stat'ed every chunk file that make_durable had just opened and fsync'ed
    (one stat per chunk per block, a round trip each on NFS): the size is taken from the open
    file, and the markers hold the same sizes as before."""
    dst = tmp_path / "o.zarr"
    stats = []
    real = os.stat

    def counted(path, *args, **kwargs):
        if str(path).startswith(str(dst)) and re.search(r"/c/\d+/\d+$", str(path)):
            stats.append(path)
        return real(path, *args, **kwargs)

    src = _src(tmp_path / "s.zarr")
    monkeypatch.setattr(os, "stat", counted)
    # a resume keeps the markers (a finished run removes them): stop after the last block
    from fstack_dask._runs.blocks import FuseJob

    seen = {}
    real_mark = FuseJob.fuse_and_write

    def keep_markers(self, block, *args, **kwargs):
        out = real_mark(self, block, *args, **kwargs)
        marker = dst / ".fstack_dask" / "done" / out.name
        seen[out.name] = marker.read_text().split("\n")
        return out

    monkeypatch.setattr(FuseJob, "fuse_and_write", keep_markers)
    fuse_zarr(src, dst, chunks=CHUNK, progress=False, levels=0, scheduler="threads")
    monkeypatch.setattr(os, "stat", real)
    assert len(seen) == (SIDE // CHUNK) ** 2
    assert not stats, f"{len(stats)} stats of chunk files, e.g. {stats[0]}"
    for name, lines in seen.items():
        keys = lines[1].split()
        sizes = next(ln.split()[1:] for ln in lines[2:] if ln.startswith("sizes "))
        assert sizes == [str((dst / k).stat().st_size) for k in keys], name


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_a_lease_check_reads_the_lock_in_four_system_calls(tmp_path):
    """Each block checks its lease twice (a read of the lock file); ``open().read()`` took ten
    system calls on the lock (open, three fstats, an ioctl, two lseeks, two reads, close)
    where four do."""
    lock = tmp_path / "lock"
    lock.write_text(json.dumps({"token": "t" * 32, "host": "h", "pid": 1}))
    script = textwrap.dedent(f"""
        from fstack_dask._locations import resolve
        from fstack_dask._outputs.lock import Lease
        lease = Lease(resolve({str(lock)!r}, name="lock"), "t" * 32, "dst")
        for _ in range(50):
            lease.check()
    """)
    trace = tmp_path / "trace"
    done = subprocess.run(["strace", "-f", "-y", "-qq", "-o", str(trace), sys.executable, "-c",
                           script], capture_output=True, text=True, timeout=120)  # fmt: skip
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    calls = [ln for ln in trace.read_text().splitlines() if f"{lock}>" in ln or f'"{lock}"' in ln]
    assert len(calls) <= 4 * 50 + 4, f"{len(calls)} system calls on the lock for 50 checks"
