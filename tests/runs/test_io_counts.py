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

import pytest


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
