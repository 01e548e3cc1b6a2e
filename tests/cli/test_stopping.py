"""A run told to stop ends, even with a task blocked in a read that never returns (a dead
mount): SIGTERM alone after its grace period, or a third Ctrl-C, and the run resumes to the
end afterwards (an adversarial run, 2026-12-05: such a run ignored both for ever).

The real command line in a subprocess; the stuck read is the source's own read function
replaced, in that process, by one that never returns after the first two reads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import synthetic_store

TIMEOUT = 60

SCRIPT = """
import sys, threading
from fstack_dask._cli import stopping
from fstack_dask._sources import fetch

stopping.TERMINATION_GRACE = 2.0
real, calls = fetch._read, []

def hung(source, sel, into=None):
    calls.append(sel)
    if len(calls) > 2:
        print("a read hangs", file=sys.stderr, flush=True)
        threading.Event().wait()  # never returns, as a read on a dead mount
    return real(source, sel, into)

fetch._read = hung
from fstack_dask._cli.main import main
sys.argv = ["fstack-dask", "fuse", *sys.argv[1:]]
sys.exit(main())
"""


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("src") / "stack.ome.zarr", (128, 128), 7,
                           chunk=32, seed=4)  # fmt: skip


def _start_and_wait_for_the_hang(src, dst):
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(src), str(dst), "--chunks", "32", "--no-progress",
         "--scheduler", "threads"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines = []
    start = time.monotonic()
    while time.monotonic() - start < TIMEOUT:
        line = proc.stderr.readline()
        lines.append(line)
        if "a read hangs" in line or not line:
            break
    assert "a read hangs" in lines[-1], "".join(lines)
    time.sleep(0.5)  # every worker thread reaches its read
    return proc


def _ended(proc, *signals, pause=1.0):
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(pause)
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"the run did not end within {TIMEOUT} s of {signals}") from None
    return proc.returncode, err


@pytest.mark.parametrize(
    "signals, code",
    [((signal.SIGTERM,), 143), ((signal.SIGINT,) * 3, 130)],
    ids=["sigterm-once", "ctrl-c-three-times"],
)
def test_a_run_with_a_read_that_never_returns_still_stops(src, tmp_path, signals, code):
    dst = tmp_path / "out.ome.zarr"
    proc = _start_and_wait_for_the_hang(src, dst)
    returncode, err = _ended(proc, *signals)
    assert returncode == code, err
    assert "--resume" in err and "had not ended" in err
    # nothing of ours keeps running, and the run resumes to the end
    done = subprocess.run(
        [sys.executable, "-m", "fstack_dask", "fuse", str(src), str(dst), "--resume",
         "--no-progress"],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not os.path.exists(dst / ".fstack_dask")  # the output is complete
