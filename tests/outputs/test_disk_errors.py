"""A disk that fails under a run: an ext4 filesystem (a loop device) whose error handling
remounts it read-only mid-run (``errors=remount-ro``, the error raised through
``/sys/fs/ext4/<dev>/trigger_fs_error``), as a failing disk does. Its journal is aborted: what
was not synced is lost, as in a power cut. Root only (mount), else skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr
from safety_util import CHUNK, cli, small_stack, write_src

from fstack_dask import focus_stack

FUSE = ("--chunks", CHUNK, "--no-progress")

# The CLI's fuse (argv[2:]), the filesystem made read-only by an error once the first block
# is marked done (argv[1]: the filesystem's trigger_fs_error).
FAILS_AFTER_A_BLOCK = textwrap.dedent(
    """
    import sys
    from fstack_dask._outputs import state
    from fstack_dask._cli.main import main

    mark = state.OutputState.mark_done

    def mark_then_fail(self, *args, **kwargs):
        mark(self, *args, **kwargs)
        with open(sys.argv[1], "w") as f:
            f.write("a disk error, for a test")

    state.OutputState.mark_done = mark_then_fail
    sys.exit(main(["fuse", *sys.argv[2:]]))
    """
)


@pytest.fixture
def ext4(tmp_path):
    """A fresh ext4 filesystem mounted with errors=remount-ro: (mount point, its
    trigger_fs_error file, a function that checks and mounts it again, writable)."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not shutil.which("e2fsck"):
        pytest.skip("needs root, mkfs.ext4 and e2fsck (a loop-mounted ext4)")
    image, mnt = tmp_path / "disk.img", tmp_path / "disk"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    proc = subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(mnt)],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot loop-mount ext4 here: {proc.stderr.strip()}")
    source = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    trigger = f"/sys/fs/ext4/{os.path.basename(source)}/trigger_fs_error"

    def again() -> None:
        subprocess.run(["umount", str(mnt)], check=True)
        subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True)  # (1: repaired)
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)

    try:
        if not os.path.exists(trigger):
            pytest.skip(f"this kernel has no {trigger}")
        yield mnt, trigger, again
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], capture_output=True)


def test_a_disk_gone_read_only_mid_run_is_said_and_the_run_resumes(tmp_path, ext4):
    """A disk error remounted dst's filesystem read-only after the first block. The run said
    only "error: [Errno 30] Read-only file system: '.../.fstack_dask/lock'" (its lock could
    not be removed, and that error replaced the run's own: nothing of what was kept nor what
    to do). And the journal's abort lost the arrays' zarr.json, written but never synced
    beside synced chunks and markers: every --resume failed "error: Expecting value: line 1
    column 1 (char 0)". The line says the disk went read-only and what is kept; the arrays'
    metadata is synced before any block, and --resume finishes with the same bits."""
    mnt, trigger, again = ext4
    src = write_src(tmp_path / "src.zarr")
    dst = mnt / "out.zarr"
    args = [trigger, src, dst, *FUSE, "--depth-map"]
    proc = subprocess.run([sys.executable, "-c", FAILS_AFTER_A_BLOCK, *map(str, args)],
                          capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    # (a write in flight as the journal aborts gets EIO, the next ones EROFS)
    assert line.startswith(("fstack-dask: error: read-only file system while writing dst",
                            "fstack-dask: error: [Errno 5] Input/output error")), line  # fmt: skip
    assert "blocks done; rerun with --resume to continue" in line, line
    assert "its lock" in line and "the next run takes it over" in line, line
    again()
    proc = cli("fuse", src, dst, *FUSE, "--depth-map", "--resume")
    assert proc.returncode == 0, proc.stderr
    expected = focus_stack(small_stack().transpose(1, 2, 0))
    np.testing.assert_array_equal(zarr.open_group(str(dst), mode="r")["0"][...], expected)
