"""A run's I/O, counted (on NFS, Lustre and GPFS each open, stat and read is a round trip):
what a block costs stays a small constant, and nothing is opened, stat'ed or read again
that the run has in hand. Counts, never times (``benchmarks/io_counts.py`` counts a whole run
with strace)."""

from __future__ import annotations

import json
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
