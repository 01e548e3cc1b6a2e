"""Reliability of fuse_zarr: kills and resume, worker loss, concurrent writers, bad input.

Real processes and real stores throughout: runs are killed with SIGKILL (the CLI and
a Python child), cluster workers are killed, a second writer runs in a second process,
full and read-only disks are real tmpfs mounts. Mocks are used only for faults that
cannot be caused for real at a chosen point (an I/O error in the middle of one block's
writes; a kill at an exact line).

Every test checks that the source is never modified (sha256 of every file) and that
nothing is left behind: no lock, no temporary files in dst's parent or in the test's own
temporary directory (TMPDIR of this process and of every child).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import dask
import numpy as np
import pytest
import zarr
from conftest import tree_digest as _tree
from safety_util import cli_whose_chunk_writes_fail

from fstack_dask import DestinationLockedError, SourceReadError, fuse_zarr, synthetic_stack
from fstack_dask._cli.main import main
from fstack_dask._outputs.ownership import STATE_DIR
from fstack_dask._outputs.staleness import LOCK_STALE_AFTER, machine_id

STATE = STATE_DIR
GRID, BLOCK, PLANES = 12, 40, 9  # 480 x 480 x 9: 144 blocks of 40 x 40, about 1 s to fuse
N_BLOCKS = GRID * GRID
FUSE_OPTS = ["--chunks", str(BLOCK), "--depth-map", "--selectivity-map", "--no-progress"]
FUSE_KW = {"chunks": BLOCK, "depth_map": True, "selectivity_map": True, "progress": False}
TIMEOUT = 120


# ---------------------------------------------------------------------------- helpers


def _write_zyx(path, data, chunks=None):
    """Store a (y, x, z) uint16 stack as a plain zyx Zarr v3 array (the source of a run)."""
    zyx = np.moveaxis(data, 2, 0)
    arr = zarr.create_array(
        str(path), shape=zyx.shape, dtype="uint16", chunks=chunks or "auto",
        dimension_names=["z", "y", "x"],
    )  # fmt: skip
    arr[...] = zyx


def _markers(dst: Path) -> set[tuple[int, int]]:
    """Blocks (y, x) with a done-marker (names are the block index, y and x last); not an
    empty one, which a kill between its creation and its write leaves, and a resume drops as
    cut short (its block is fused again)."""
    try:
        names = os.listdir(dst / STATE / "done")
    except FileNotFoundError:
        return set()
    whole = [n for n in names if (dst / STATE / "done" / n).stat().st_size]
    return {tuple(map(int, n.split("_")[-2:])) for n in whole}


def _chunk_stats(dst: Path, blocks) -> dict:
    """(inode, mtime) of each block's level-0 chunk: a rewrite (atomic replace) changes both."""
    out = {}
    for i, j in blocks:
        st = (dst / "0" / "c" / str(i) / str(j)).stat()
        out[(i, j)] = (st.st_ino, st.st_mtime_ns)
    return out


def _env(tmp: Path) -> dict[str, str]:
    """The child's environment: its own TMPDIR, to show that we leave nothing there."""
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp)}


def cli(*args, tmp: Path, timeout: int = TIMEOUT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fstack_dask", *map(str, args)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=_env(tmp), check=False
    )


def popen_cli(*args, tmp: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fstack_dask", *map(str, args)]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp)
    )


# A Python child calling fuse_zarr; the "point" optionally kills it (SIGKILL, itself) at an
# exact place: while creating dst (after array "0", before "depth"), or after every block
# is written but before the output is marked complete (_outputs.lifecycle.finish).
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import zarr
    from fstack_dask import fuse_zarr
    from fstack_dask._outputs import lifecycle

    point, src, dst, scheduler = sys.argv[1:5]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "creating":
        create_array = zarr.Group.create_array

        def create_array_then_die(self, name, **kwargs):
            if name.startswith("depth"):
                die()
            return create_array(self, name, **kwargs)

        zarr.Group.create_array = create_array_then_die
    elif point == "mid-write":  # in zarr's write of the root's provenance, before its rename
        import pathlib

        replace = pathlib.Path.replace

        def replace_or_die(self, target):
            root = pathlib.Path(target) == pathlib.Path(dst) / "zarr.json"
            if root and self.name.endswith(".partial") and b'"complete"' in self.read_bytes():
                die()
            return replace(self, target)

        pathlib.Path.replace = replace_or_die
    elif point == "written":
        def die_before_finishing(*args, **kwargs):
            die()

        lifecycle.finish = die_before_finishing
    fuse_zarr(src, dst, chunks=40, depth_map=True, selectivity_map=True, progress=False,
              scheduler=scheduler)
    """
)


def popen_child(point: str, src: Path, dst: Path, scheduler: str, tmp: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-c", CHILD, point, str(src), str(dst), scheduler]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp)
    )


def _kill_when(proc: subprocess.Popen, dst: Path, *, markers=None, delay=None) -> int:
    """SIGKILL ``proc`` once ``markers`` blocks are done, or ``delay`` s after it took the
    lock (tight polling); returns its exit status (-9 if killed, 0 if it finished first)."""
    done, lock = dst / STATE / "done", dst / STATE / "lock"
    start, locked = time.monotonic(), None
    while proc.poll() is None:
        if markers is not None:
            with contextlib.suppress(FileNotFoundError):
                if len(os.listdir(done)) >= markers:
                    break
        else:
            if locked is None and lock.exists():
                locked = time.monotonic()
            if locked is not None and time.monotonic() - locked >= delay:
                break
        assert time.monotonic() - start < TIMEOUT, "the child never got there"
        time.sleep(0.0005)
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=TIMEOUT)
    return proc.returncode


def _one_error_line(res: subprocess.CompletedProcess, status: int, *needles: str) -> str:
    assert res.returncode == status, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("fstack-dask: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert res.stdout == ""
    return lines[0]


@contextlib.contextmanager
def _tmpfs(where: Path, options: str):
    """A real tmpfs mounted at ``where`` (skip where mounting is not permitted)."""
    where.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {res.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        where.rmdir()


@pytest.fixture(autouse=True)
def child_tmp(tmp_path, monkeypatch):
    """This test's own temporary directory, TMPDIR of this process and of every child (so
    that other users of /tmp cannot make the check fail): nothing may be left in it."""
    folder = tmp_path / "child-tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    left = sorted(os.listdir(folder))
    assert not left, f"left in {folder}: {left}"


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The 480 x 480 x 9 uint16 source (chunks of 40 x 40), and an uninterrupted run's output."""
    root = tmp_path_factory.mktemp("reliability")
    data = synthetic_stack((GRID * BLOCK,) * 2, PLANES, dtype="uint16", seed=3).stack
    src = root / "stack.zarr"
    _write_zyx(src, data, chunks=(PLANES, BLOCK, BLOCK))
    ref = root / "reference.zarr"
    fuse_zarr(str(src), ref, scheduler="synchronous", **FUSE_KW)
    group = zarr.open_group(str(ref), mode="r")
    arrays = {name: group[_LEVEL0[name]][...] for name in ("0", "depth", "selectivity")}
    return {"src": src, "src_tree": _tree(src), "ref": _tree(ref), "arrays": arrays}


_LEVEL0 = {"0": "0", "depth": "depth/0", "selectivity": "selectivity/0"}  # full resolution


def _check_marked_blocks(dst: Path, stack, blocks) -> None:
    """A done-marker means the block's regions of every output hold their final values."""
    group = zarr.open_group(str(dst), mode="r")
    for name in ("0", "depth", "selectivity"):
        arr, want = group[_LEVEL0[name]], stack["arrays"][name]
        for i, j in blocks:
            region = np.s_[BLOCK * i : BLOCK * (i + 1), BLOCK * j : BLOCK * (j + 1)]
            np.testing.assert_array_equal(arr[region], want[region], err_msg=f"{name} {i},{j}")


def _has_provenance(dst: Path) -> bool:
    try:
        return "fstack_dask" in json.loads((dst / "zarr.json").read_text())["attributes"]
    except FileNotFoundError:
        return False


def _finished_like_the_reference(dst: Path, stack) -> None:
    assert _tree(dst) == stack["ref"]  # every byte, no state folder, no stray temporary file
    assert _tree(stack["src"]) == stack["src_tree"]  # the input is never modified


# ---------------------------------------------------------------- 1. kill and resume


KILLS = [
    ("cli", "synchronous", {"markers": 1}),
    ("cli", "synchronous", {"markers": N_BLOCKS // 2}),
    ("cli", "threads", {"markers": N_BLOCKS - 10}),
    ("cli", "synchronous", {"delay": "random"}),
    ("python", "threads", {"markers": N_BLOCKS // 3}),
    ("python", "threads", {"delay": "random"}),
]


@pytest.mark.parametrize(
    ("how", "scheduler", "when"),
    KILLS,
    ids=[f"{h}-{s}-{next(iter(w))}{w.get('markers', '')}" for h, s, w in KILLS],
)
def test_sigkill_then_resume_is_bit_identical(tmp_path, stack, caplog, how, scheduler, when):
    dst = tmp_path / "out" / "fused.zarr"
    dst.parent.mkdir()
    child_tmp = tmp_path / "child-tmp"
    when = dict(when)
    if when.get("delay") == "random":
        seed = random.randrange(2**32)
        when["delay"] = random.Random(seed).uniform(0.0, 1.5)  # lock to end: about 1.5 s
    args = ["fuse", stack["src"], dst, *FUSE_OPTS, "--scheduler", scheduler]
    if how == "cli":
        proc = popen_cli(*args, tmp=child_tmp)
    else:
        proc = popen_child("none", stack["src"], dst, scheduler, child_tmp)
    status = _kill_when(proc, dst, **when)
    assert status in (-signal.SIGKILL, 0), f"{status} ({when})"

    # Killed before its very end, the run leaves its lock: its pid is dead, so it is stale.
    locked = (dst / STATE / "lock").exists()
    if locked:
        assert status == -signal.SIGKILL
        info = json.loads((dst / STATE / "lock").read_text())
        assert info["pid"] == proc.pid and info["host"] == socket.gethostname()
    done = _markers(dst)
    # Killed while creating dst (no provenance yet) the resume starts over; killed while
    # tidying up after the last block (complete) it only tidies up.
    unfinished = locked and _has_provenance(dst)
    if unfinished:
        unfinished = not zarr.open_group(str(dst), mode="r").attrs["fstack_dask"]["complete"]
        _check_marked_blocks(dst, stack, done)  # a marker is only ever set after the writes
        kept = _chunk_stats(dst, done)
    assert os.listdir(dst.parent) == [dst.name]

    if how == "cli":
        start = time.monotonic()
        res = cli(*args, "--resume", tmp=child_tmp)
        assert res.returncode == 0, res.stderr
        assert time.monotonic() - start < LOCK_STALE_AFTER  # no wait for the lock
        notes = res.stderr
    else:
        caplog.set_level(logging.INFO, logger="fstack_dask")
        fuse_zarr(str(stack["src"]), dst, resume=True, scheduler=scheduler, **FUSE_KW)
        notes = caplog.text
    if locked:
        assert f"taking over the stale lock of pid {proc.pid}" in notes
    if unfinished:
        left = re.search(r"resuming .*: (\d+) of (\d+) blocks left", notes)
        assert left, notes
        assert (int(left[1]), int(left[2])) == (N_BLOCKS - len(done), N_BLOCKS)
        assert _chunk_stats(dst, done) == kept  # finished blocks were not recomputed
    _finished_like_the_reference(dst, stack)
    assert os.listdir(dst.parent) == [dst.name]
    assert os.listdir(child_tmp) == []


@pytest.mark.parametrize("point", ["creating", "mid-write", "written"])
def test_kill_at_fixed_points_then_resume(tmp_path, stack, caplog, point):
    """Killed while creating dst (some arrays, no provenance yet; or inside zarr's write of
    the provenance, its temporary file left behind), or after every block but before the
    output is marked complete: all resume to the same bytes, no temporary file left."""
    dst = tmp_path / "fused.zarr"
    child_tmp = tmp_path / "child-tmp"
    proc = popen_child(point, stack["src"], dst, "threads", child_tmp)
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    assert (dst / STATE / "lock").exists()
    if point == "creating":
        assert (dst / "0" / "zarr.json").exists() and not (dst / "depth" / "0").exists()
        assert "fstack_dask" not in zarr.open_group(str(dst), mode="r").attrs
        # Without resume the leftover is refused (not silently replaced), and kept as is.
        before = _tree(dst)
        res = cli("fuse", stack["src"], dst, *FUSE_OPTS, tmp=child_tmp)
        _one_error_line(res, 2, "unfinished", "--resume")
        assert _tree(dst) == before
    elif point == "mid-write":
        left = [p.relative_to(dst).as_posix() for p in dst.rglob("*.partial")]
        assert len(left) == 1 and left[0].startswith("zarr."), left  # the root's, cut short
        assert "fstack_dask" not in zarr.open_group(str(dst), mode="r").attrs
    else:
        assert _markers(dst) == {(i, j) for i in range(GRID) for j in range(GRID)}
    caplog.set_level(logging.INFO, logger="fstack_dask")
    fuse_zarr(str(stack["src"]), dst, resume=True, scheduler="threads", **FUSE_KW)
    if point == "written":
        assert f"resuming {dst}: 0 of {N_BLOCKS} blocks left" in caplog.text
    _finished_like_the_reference(dst, stack)
    assert os.listdir(child_tmp) == []


def test_a_block_cut_short_by_an_error_is_not_counted_as_done(tmp_path, stack, monkeypatch):
    """The marker is written only after every region: an I/O error on a block's last write
    (selectivity) leaves its image written but the block unmarked, and resume redoes it."""
    dst = tmp_path / "fused.zarr"
    setitem = zarr.Array.__setitem__
    calls, torn = [], []

    def failing_setitem(self, key, value):
        if self.path == "selectivity/0":
            calls.append(key)
            if len(calls) == 5:
                torn.append(key)
                raise OSError(errno.EIO, "injected I/O error writing selectivity")
        return setitem(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", failing_setitem)
    with pytest.raises(OSError, match="injected"):
        fuse_zarr(str(stack["src"]), dst, scheduler="synchronous", **FUSE_KW)
    monkeypatch.setattr(zarr.Array, "__setitem__", setitem)

    (ys, xs) = torn[0]
    block = (ys.start // BLOCK, xs.start // BLOCK)
    done = _markers(dst)
    assert len(done) == 4 and block not in done
    assert (dst / "0" / "c" / str(block[0]) / str(block[1])).exists()  # its image was written
    assert not (dst / STATE / "lock").exists()  # released
    _check_marked_blocks(dst, stack, done)
    kept = _chunk_stats(dst, done)
    fuse_zarr(str(stack["src"]), dst, resume=True, scheduler="synchronous", **FUSE_KW)
    assert _chunk_stats(dst, done) == kept
    _finished_like_the_reference(dst, stack)


# ------------------------------------------------------------------- 2. worker loss


def test_killing_a_worker_mid_run_still_gives_the_full_output(tmp_path, stack):
    from distributed import Client, LocalCluster

    dst = tmp_path / "fused.zarr"
    with (
        dask.config.set({"temporary-directory": str(tmp_path / "dask")}),  # the scheduler's
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            local_directory=str(tmp_path / "dask"),
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        killed_at = []

        def kill_a_worker():
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                n = len(_markers(dst))
                if n >= 10:
                    os.kill(victim, signal.SIGKILL)
                    killed_at.append(n)
                    return
                time.sleep(0.0005)

        killer = threading.Thread(target=kill_a_worker)
        killer.start()
        try:
            fuse_zarr(str(stack["src"]), dst, scheduler=client, **FUSE_KW)
        finally:
            killer.join()
    assert killed_at and killed_at[0] < N_BLOCKS  # the worker died in the middle of the run
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)
    _finished_like_the_reference(dst, stack)


def _kill_the_worker_once_a_block_is_done(client, dst: Path) -> threading.Thread:
    """Kill -9 the cluster's one worker (as the OOM killer would; its nanny starts another)
    once the run has a done-marker."""
    victim = min(client.run(os.getpid).values())

    def kill():
        deadline = time.monotonic() + TIMEOUT
        while not _markers(dst) and time.monotonic() < deadline:
            time.sleep(0.0005)
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill)
    killer.start()
    return killer


@contextlib.contextmanager
def _one_worker_cluster(tmp_path, threads: int, lost_after: str = "300s"):
    """A client of a LocalCluster of one worker process (its nanny restarts it), its files
    under ``tmp_path``. The cluster closes a worker lost and not back within ``lost_after``
    (distributed's lost-worker-timeout, 15 s by default: a worker killed at each try, its
    restart slow on a loaded machine, was closed, and the run waited 600 s for none)."""
    from distributed import Client, LocalCluster

    with (
        dask.config.set({"temporary-directory": str(tmp_path / "dask"),
                         "distributed.deploy.lost-worker-timeout": lost_after}),  # fmt: skip
        LocalCluster(
            n_workers=1, threads_per_worker=threads, dashboard_address=None,
            local_directory=str(tmp_path / "dask"),
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        yield client


def _in_memory_run_on_one_worker(tmp_path, dst: Path, data, **kw):
    """fuse_zarr of an in-memory zyx array on a 1-worker LocalCluster whose worker is killed
    mid-run; ``kw`` for fuse_zarr."""
    with _one_worker_cluster(tmp_path, threads=1) as client:
        killer = _kill_the_worker_once_a_block_is_done(client, dst)
        try:
            fuse_zarr(data, dst, axes="zyx", scheduler=client, **{**FUSE_KW, **kw})
        finally:
            killer.join()


def _like_the_uninterrupted_run(dst: Path, stack) -> None:
    group = zarr.open_group(str(dst), mode="r")
    for name in ("0", "depth", "selectivity"):
        np.testing.assert_array_equal(group[_LEVEL0[name]][...], stack["arrays"][name])


def test_an_in_memory_stack_survives_its_cluster_worker_killed_mid_run(
    tmp_path, stack, caplog, capsys
):
    """An in-memory stack is scattered to the cluster: no lineage, lost with the worker that
    held it. The run failed with dask's multi-line FuturesCancelledError ("already
    forgotten"); the driver now sends the array again and the run finishes, identical. Its
    progress said the blocks of the try that failed were "done before this run"."""
    data = zarr.open_array(str(stack["src"]), mode="r")[...]  # zyx, in memory
    dst = tmp_path / "fused.zarr"
    with caplog.at_level(logging.WARNING, logger="fstack_dask"):
        _in_memory_run_on_one_worker(tmp_path, dst, data, progress=True)
    assert "lost its copy of the in-memory source" in caplog.text  # the worker did die mid-run
    _like_the_uninterrupted_run(dst, stack)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fusing:")]
    assert lines[-1].startswith(f"fusing: {N_BLOCKS}/{N_BLOCKS} blocks (100%), "), lines
    assert not any("done before this run" in line for line in lines), lines


def test_an_in_memory_stack_lost_too_often_fails_in_one_line_and_resumes(
    tmp_path, stack, monkeypatch
):
    """Where the cluster keeps losing the array (here: no try allowed), one line says what
    was lost and that resume=True finishes the run (it was dask's multi-line
    FuturesCancelledError); the resumed run's output is identical."""
    from fstack_dask._runs import passes

    monkeypatch.setattr(passes, "RESCATTERS", 0, raising=False)
    data = zarr.open_array(str(stack["src"]), mode="r")[...]  # zyx, in memory
    dst = tmp_path / "fused.zarr"
    with pytest.raises(RuntimeError) as info:
        _in_memory_run_on_one_worker(tmp_path, dst, data)
    message = str(info.value)
    assert "\n" not in message and "lost its copy of the in-memory source" in message
    assert "rerun with resume=True to continue" in message
    assert 0 < len(_markers(dst)) < N_BLOCKS
    fuse_zarr(data, dst, axes="zyx", resume=True, scheduler="threads", **FUSE_KW)
    _like_the_uninterrupted_run(dst, stack)


def test_an_in_memory_stack_whose_block_kills_its_worker_each_time_says_so(tmp_path, stack):
    """A block that kills its worker at each try (more memory than the worker has) lost the
    scattered copy at each try: after the tries the one line said only "lost its copy" and
    sent the user to resume=True, which loops the same way. It now says that the worker died
    each time before a block finished, and what to try."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class KillAtTheMiddleBlock(WorkerPlugin):  # (defined here: sent to the workers by value)
        """The middle block's fusion kills its worker each time, as a block that needs more
        memory than a worker has does (the OOM killer, the nanny's memory limit)."""

        def setup(self, worker):
            from fstack_dask._runs import blocks

            fuse = blocks.FuseJob.fuse_and_write

            def fuse_and_write(job, block, *args, **kwargs):
                if tuple(block) == list(job.plan.blocks())[job.plan.n_blocks // 2]:
                    os.kill(os.getpid(), signal.SIGKILL)
                return fuse(job, block, *args, **kwargs)

            blocks.FuseJob.fuse_and_write = fuse_and_write

    plugin = KillAtTheMiddleBlock()
    data = zarr.open_array(str(stack["src"]), mode="r")[...]  # zyx, in memory
    with _one_worker_cluster(tmp_path, threads=2) as client:
        client.register_plugin(plugin)
        with pytest.raises(RuntimeError) as info:
            fuse_zarr(data, tmp_path / "fused.zarr", axes="zyx", scheduler=client, **FUSE_KW)
    message = str(info.value)
    assert "\n" not in message and "lost its copy of the in-memory source" in message
    assert "times in a row with no block finished" in message, message
    assert "more memory than a worker has" in message, message


def test_a_worker_its_cluster_closed_once_lost_is_said_at_once(tmp_path, stack):
    """A LocalCluster closes a worker lost and not back within distributed's
    lost-worker-timeout (killed again as it came back, or slow to restart on a loaded node),
    and starts none in its place: the run waited out its stall timeout, 600 s, then told to
    start workers with ``dask worker`` (the lead's loaded run of the test above). It says
    what the cluster did, within seconds of REFUSED_AFTER."""
    from distributed.diagnostics.plugin import WorkerPlugin

    from fstack_dask._runs.waiting import StalledError

    class KillAtTheFirstBlock(WorkerPlugin):  # (defined here: sent to the workers by value)
        def setup(self, worker):
            from fstack_dask._runs import blocks

            def fuse_and_write(job, block, *args, **kwargs):
                os.kill(os.getpid(), signal.SIGKILL)

            blocks.FuseJob.fuse_and_write = fuse_and_write

    start = time.monotonic()
    with _one_worker_cluster(tmp_path, threads=1, lost_after="50ms") as client:
        client.register_plugin(KillAtTheFirstBlock())
        with pytest.raises(StalledError) as info:
            fuse_zarr(stack["src"], tmp_path / "fused.zarr", scheduler=client,
                      stall_timeout=100, **FUSE_KW)  # fmt: skip
    assert "which closed the worker(s) it lost" in str(info.value), info.value
    assert "\n" not in str(info.value)
    assert time.monotonic() - start < 90, "waited for the stall timeout"


def test_a_fuse_whose_worker_died_after_it_ended_is_not_waited_for_for_ever(
    tmp_path, stack, monkeypatch
):
    """A fuse task that ended, its worker dying before the run fetched its result (a batch
    job ending, the OOM killer): ``Future.result`` waited for it to be computed again, for
    ever where no worker would come, past the run's stall checks (the lead's CI hung in
    test_slurm, a job scancelled as a fuse ended). The run says what became of the worker."""
    from fstack_dask._runs import runners

    killed: list[dict] = []
    fetch = runners._Cluster.result

    def result_after_a_kill(self, handle):
        if not killed:  # the worker dies between the task's end and the fetch of its result
            killed.append(_kill_the_workers(self.client, {handle}))
        return fetch(self, handle)

    monkeypatch.setattr(runners._Cluster, "result", result_after_a_kill)
    _the_lost_result_is_said(tmp_path, stack, killed)


def _the_lost_result_is_said(tmp_path, stack, killed: list) -> None:
    """The stack fused on a cluster that closes a lost worker at once, the test's patch
    killing its worker before a result was fetched (``killed``): the run is not left waiting
    for ever, and says what became of the worker."""
    from fstack_dask._runs.waiting import StalledError

    with _one_worker_cluster(tmp_path, threads=1, lost_after="50ms") as client:
        outcome, hung = _fused_in_a_thread(client, stack, tmp_path / "fused.zarr")
    assert killed, "no task's result was fetched (halo exchange not used?)"
    assert not hung, "the run waited for ever for the lost result"
    assert isinstance(outcome[0], StalledError), outcome
    assert "which closed the worker(s) it lost" in str(outcome[0]), outcome[0]


def _kill_the_workers(client, ended: set) -> dict:
    """SIGKILL every worker process of ``client``, and wait until the scheduler has lost the
    results of the tasks ``ended``; the pids killed, by worker."""
    pids = client.run(os.getpid)
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + TIMEOUT
    while any(f.status == "finished" for f in ended) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids


def _fused_in_a_thread(client, stack, dst: Path) -> tuple[list, bool]:
    """The stack fused on ``client`` in a thread: its outcome (the output, or what the run
    raised), and whether it still ran after TIMEOUT (hung)."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(fuse_zarr(stack["src"], dst, scheduler=client, stall_timeout=100,
                                     **FUSE_KW))  # fmt: skip
        except BaseException as exc:  # (the thread's outcome, for the caller to assert)
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    return outcome, thread.is_alive()


@pytest.mark.parametrize("exchange", ["1", "0"], ids=["halo-exchange", "blocks"])
def test_a_result_slow_to_fetch_is_fetched_once(tmp_path, stack, monkeypatch, exchange):
    """A task's result that takes longer to fetch than the bound the run fetched it within
    (30 s; here 0.5 s: a slow link, a loaded worker) was fetched again at each bound, each try
    serialized anew on the worker, and none ended: the run hung.
    It is fetched once, however long that takes, and the run finishes, its output the
    reference's. (Halo exchange's fuses and the blocks' own tasks alike.)"""
    from distributed.diagnostics.plugin import WorkerPlugin

    from fstack_dask._runs import runners

    monkeypatch.setattr(runners, "_FETCH_S", 0.5, raising=False)  # (037ea07's, shortened)
    monkeypatch.setenv("FSTACK_DASK_HALO_EXCHANGE", exchange)
    first = tmp_path / "first-result"

    class SlowFirstResult(WorkerPlugin):  # (defined here: sent to the workers by value)
        def setup(self, worker):
            from fstack_dask._runs import reports

            class Slow(list):  # serialized in 1.5 s, as over a slow link
                def __reduce__(self):
                    time.sleep(1.5)
                    return (list, (list(self),))

            def slow(task):
                def run(*args, **kwargs):
                    outcomes = task(*args, **kwargs)
                    try:
                        first.mkdir()  # (the first result only: the others as they are)
                    except FileExistsError:
                        return outcomes
                    return Slow(outcomes)

                return run

            reports.fuse_rows_on_worker = slow(reports.fuse_rows_on_worker)
            reports.run_on_worker = slow(reports.run_on_worker)

    with _one_worker_cluster(tmp_path, threads=1) as client:
        client.register_plugin(SlowFirstResult())
        outcome, hung = _fused_in_a_thread(client, stack, tmp_path / "fused.zarr")
    assert first.exists(), "no result was made slow"
    assert not hung, "the run fetched the slow result again and again"
    assert not isinstance(outcome[0], BaseException), outcome[0]
    got = zarr.open_group(str(tmp_path / "fused.zarr"), mode="r")
    np.testing.assert_array_equal(got["0"][...], stack["arrays"]["0"])


def test_a_block_task_whose_worker_died_after_it_ended_is_not_waited_for_for_ever(
    tmp_path, stack, monkeypatch
):
    """As test_a_fuse_whose_worker_died_after_it_ended_is_not_waited_for_for_ever, without halo
    exchange (blocks not whole units of the source, ``FSTACK_DASK_HALO_EXCHANGE=0``): a task
    of blocks that ended, its worker dying
    before the run fetched its result: ``Future.result`` waited for ever for it to be
    computed again where no worker would come (037ea07 fixed halo exchange's fuses only; the
    g98 review). The run says what became of the worker."""
    from fstack_dask._runs import schedulers

    monkeypatch.setenv("FSTACK_DASK_HALO_EXCHANGE", "0")
    killed: list[dict] = []
    make_waiter = schedulers.cluster_waiter

    def waiter_then_a_kill(client, *args):
        wait = make_waiter(client, *args)

        def waited(running):
            done, rest = wait(running)
            if done and not killed:  # the worker dies between the task's end and the fetch
                killed.append(_kill_the_workers(client, done))
            return done, rest

        return waited

    monkeypatch.setattr(schedulers, "cluster_waiter", waiter_then_a_kill)
    _the_lost_result_is_said(tmp_path, stack, killed)


# ------------------------------------------------------------- 3. concurrent writers


def _wait_stopped(pid: int) -> None:
    import psutil

    deadline = time.monotonic() + TIMEOUT
    while psutil.Process(pid).status() != psutil.STATUS_STOPPED:
        assert time.monotonic() < deadline, "the process did not stop"
        time.sleep(0.001)


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path, stack):
    dst = tmp_path / "fused.zarr"
    child_tmp = tmp_path / "child-tmp"
    first = popen_cli("fuse", stack["src"], dst, *FUSE_OPTS, "--scheduler", "synchronous",
                      tmp=child_tmp)  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        while not _markers(dst):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.0005)
        first.send_signal(signal.SIGSTOP)  # alive but making no progress (a slow run)
        # The signal is not taken at once: a busy machine saw a chunk written after it was sent.
        _wait_stopped(first.pid)
        before = _tree(dst)
        for extra in ([], ["--resume"], ["--overwrite"]):
            res = cli("fuse", stack["src"], dst, *FUSE_OPTS, *extra, tmp=child_tmp)
            _one_error_line(res, 1, f"being written by pid {first.pid}", "refused")
            assert _tree(dst) == before, extra  # the second run wrote and deleted nothing
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=TIMEOUT)
    assert first.returncode == 0, err
    _finished_like_the_reference(dst, stack)
    assert os.listdir(child_tmp) == []


def test_an_in_memory_stack_whose_worker_dies_as_it_is_sent_is_sent_again(tmp_path, stack):
    """The one worker dies as the scattered array reaches it (the OOM killer; a worker killed
    just before a copy is sent again), once: the scheduler, its send failed, closes the call,
    and the run failed "lost the connection to the dask scheduler ... (it stopped, or the
    network failed)", the scheduler alive (the g84 review, a flaky test's message). The
    array is sent again to the worker its nanny restarts, and the run finishes."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class DieOnTheFirstData(WorkerPlugin):  # (defined here: sent to the workers by value)
        def __init__(self, flag):
            self.flag = flag

        def setup(self, worker):
            receive, flag = worker.handlers["update_data"], self.flag

            def update_data(*args, **kwargs):
                if not os.path.exists(flag):
                    open(flag, "w").close()  # noqa: SIM115 (one empty file, closed)
                    os.kill(os.getpid(), signal.SIGKILL)
                return receive(*args, **kwargs)

            worker.handlers["update_data"] = update_data

    data = zarr.open_array(str(stack["src"]), mode="r")[...]  # zyx, in memory
    dst = tmp_path / "fused.zarr"
    with _one_worker_cluster(tmp_path, threads=1) as client:
        client.register_plugin(DieOnTheFirstData(str(tmp_path / "died")))
        fuse_zarr(data, dst, axes="zyx", scheduler=client, **FUSE_KW)
    assert (tmp_path / "died").exists()
    _like_the_uninterrupted_run(dst, stack)


@pytest.fixture
def unfinished(tmp_path):
    """A small unfinished output, its src, and a pristine copy of the output: a run that
    could not read one corner chunk of src (its 4 blocks are missing, the 5 others done);
    the chunk was repaired since."""
    data = synthetic_stack((120, 120), 7, dtype="uint16", seed=1).stack
    src = tmp_path / "small.zarr"
    _write_zyx(src, data, chunks=(7, 40, 40))
    dst = tmp_path / "fused.zarr"
    chunk = src / "c" / "0" / "2" / "2"
    good = chunk.read_bytes()
    chunk.write_bytes(b"not a zstd frame" * 4)
    with pytest.raises(SourceReadError, match="kept with 5 of 9 blocks done"):
        fuse_zarr(str(src), dst, chunks=40, progress=False, scheduler="synchronous")
    chunk.write_bytes(good)
    assert len(_markers(dst)) == 5 and not (dst / STATE / "lock").exists()
    pristine = tmp_path / "pristine"
    shutil.copytree(dst, pristine)
    return src, dst, pristine


def _write_lock(dst: Path, *, age: float = 0.0, raw: bytes | None = None, **info) -> Path:
    lock = dst / STATE / "lock"
    lock.write_bytes(raw if raw is not None else json.dumps(info).encode())
    stamp = time.time() - age
    os.utime(lock, (stamp, stamp))
    return lock


def _hold_flock(lock: Path) -> subprocess.Popen:
    """Another live process holding the lock file's flock, as a running fstack_dask does."""
    code = (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_staleness_rules(tmp_path, unfinished, caplog, monkeypatch):
    """This machine: live iff a process holds the lock file's flock, whatever its heartbeat
    and whatever pid it names. Another machine (or an unreadable lock): live while its
    heartbeat (mtime) is younger than LOCK_STALE_AFTER, and stale once an older one has not
    moved while watched for the stale age (3 s here, 60 s by default). A pid never
    decides."""
    from fstack_dask._outputs import staleness as _staleness

    src, dst, pristine = unfinished
    src_tree = _tree(src)
    host, here = socket.gethostname(), machine_id()
    stale_age = LOCK_STALE_AFTER + 5
    holder = None
    try:
        live = [
            # held: its run is alive (suspended, say), though its heartbeat is old and the
            # pid it names is long gone
            ({"host": host, "machine": here, "pid": 2**22 + 1}, stale_age, True),
            ({"host": "other-node.example", "machine": "other", "pid": 1}, 0.0, False),
        ]
        for info, age, held in live:
            lock = _write_lock(dst, age=age, **info)
            holder = _hold_flock(lock) if held else None
            before = _tree(dst)
            for kwargs in ({"resume": True}, {"overwrite": True}, {}):
                with pytest.raises(DestinationLockedError, match="being written by"):
                    fuse_zarr(str(src), dst, chunks=40, progress=False, **kwargs)
            assert _tree(dst) == before  # refused before writing or deleting anything
            if holder is not None:
                holder.kill()
                holder.wait()
        _write_lock(dst, raw=b'{"host": "oth', age=1.0)  # torn and young: maybe live
        with pytest.raises(DestinationLockedError, match="unreadable lock"):
            fuse_zarr(str(src), dst, chunks=40, resume=True, progress=False)

        caplog.set_level(logging.INFO, logger="fstack_dask")
        monkeypatch.setattr(_staleness, "LOCK_STALE_AFTER", 3.0)
        monkeypatch.setattr(_staleness, "HEARTBEAT_EVERY", 0.5)
        stale = [
            # this machine, nobody holds it: its run is gone, though the pid it names (this
            # very test process) is alive and the heartbeat is fresh
            ({"host": host, "machine": here, "pid": os.getpid()}, 0.0),
            ({"host": "other-node.example", "machine": "other", "pid": 1}, stale_age),
            ({"raw": b""}, stale_age),
        ]
        for info, age in stale:
            shutil.rmtree(dst)  # the unfinished output again
            shutil.copytree(pristine, dst)
            _write_lock(dst, age=age, **info)
            caplog.clear()
            start = time.monotonic()
            out = fuse_zarr(str(src), dst, chunks=40, resume=True, progress=False)
            assert time.monotonic() - start < 10  # no waiting for LOCK_STALE_AFTER
            assert "taking over the stale lock" in caplog.text, info
            assert out.attrs["fstack_dask"]["complete"] is True
            assert not (dst / STATE).exists()
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    assert _tree(src) == src_tree


def test_overwrite_replaces_an_unfinished_run_under_its_lock(tmp_path, unfinished):
    """--overwrite of a killed run's dst: its lock is taken over, its old markers go too (a
    block they claim is recomputed), and the new output is whole."""
    src, dst, _ = unfinished
    src_tree = _tree(src)
    expected = fuse_zarr(str(src), tmp_path / "expected.zarr", chunks=40, progress=False)
    group = zarr.open_group(str(dst), mode="r+")
    group["0"][:40, :40] = 0  # a marked block whose data is gone: only a recompute restores it
    _write_lock(dst, host=socket.gethostname(), machine=machine_id(), pid=2**22 + 1)  # unheld
    with pytest.raises(FileExistsError, match="unfinished"):
        fuse_zarr(str(src), dst, chunks=40, progress=False)
    out = fuse_zarr(str(src), dst, chunks=40, overwrite=True, progress=False)
    np.testing.assert_array_equal(out["0"][...], expected["0"][...], strict=True)
    assert _tree(dst) == _tree(tmp_path / "expected.zarr")
    assert _tree(src) == src_tree


# --------------------------------------------------------------------- 4. bad input


def _bad_sources(root: Path) -> dict[str, Path]:
    """Real stores that cannot be fused."""
    root.mkdir()
    out = {"missing": root / "nope.zarr", "plain_dir": root / "plain"}
    out["plain_dir"].mkdir()
    (out["plain_dir"] / "notes.txt").write_text("not zarr")
    out["text_file"] = root / "stack.txt"
    out["text_file"].write_text("not zarr either")

    def array(name, shape, dtype, names="zyx", **kwargs):
        out[name] = root / f"{name}.zarr"
        zarr.create_array(
            str(out[name]), shape=shape, dtype=dtype, dimension_names=list(names), **kwargs
        )

    array("good", (5, 16, 16), "uint16")
    array("no_z", (16, 16), "uint16", names="yx")
    array("z_empty", (0, 16, 16), "uint16")
    array("complex", (5, 16, 16), "complex64")
    array("bool", (5, 16, 16), "bool")
    array("object", (5, 4, 4), zarr.dtype.VariableLengthBytes())  # numpy dtype object
    out["string_v2"] = root / "string_v2.zarr"
    zarr.create_array(
        str(out["string_v2"]), shape=(5, 4, 4), dtype=zarr.dtype.VariableLengthUTF8(),
        zarr_format=2, attributes={"_ARRAY_DIMENSIONS": ["z", "y", "x"]},
    )  # fmt: skip
    return out


VALIDATION = {  # (src, extra options, exit status, words the one line must hold)
    "src missing": ("missing", [], 2, ["does not exist"]),
    "src a plain directory": ("plain_dir", [], 2, ["not a Zarr array or group"]),
    "src a text file": ("text_file", [], 2, ["not a Zarr array or group"]),
    "axes too long": ("good", ["--axes", "tzyx"], 2, ["4 letters", "3 dimensions"]),
    "axes too short": ("good", ["--axes", "zy"], 2, ["'zy'"]),
    "axes repeat a letter": ("good", ["--axes", "zyy"], 2, ["repeats 'y'"]),
    "no z axis": ("no_z", [], 2, ["lacks 'z'"]),
    "no z axis given": ("good", ["--axes", "cyx"], 2, ["lacks 'z'"]),
    "z of length 0": ("z_empty", [], 2, ["length 0 along axis 'z'"]),
    "complex dtype": ("complex", [], 2, ["dtype complex64"]),
    "bool dtype": ("bool", [], 2, ["dtype bool"]),
    "object dtype": ("object", [], 2, ["dtype object"]),
    "string dtype (zarr v2, object codec)": ("string_v2", [], 2, ["dtype"]),
    "dst inside src": ("good", ["@inside"], 2, ["lies inside"]),
}


@pytest.mark.filterwarnings("ignore:The data type:FutureWarning")  # zarr: VariableLengthBytes
@pytest.mark.parametrize("case", list(VALIDATION))
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    which, extra, status, needles = VALIDATION[case]
    sources = _bad_sources(tmp_path / "in")
    src = sources[which]
    dst = tmp_path / "out" / "fused.zarr"
    if extra == ["@inside"]:
        dst, extra = src / "fused.zarr", []
    (tmp_path / "out").mkdir()
    before = _tree(tmp_path)
    assert main(["fuse", str(src), str(dst), *extra, "--no-progress"]) == status
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 1, err
    assert lines[0].startswith("fstack-dask: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not dst.exists()
    assert _tree(tmp_path) == before  # src untouched, nothing created anywhere


def _corrupt(src: Path, kind: str, key: str) -> None:
    path = src / key
    if kind == "garbage":
        path.write_bytes(b"not a zstd frame" * 4)
    else:  # truncated
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_source_chunk(tmp_path, kind):
    """Read by every block: nothing is written. Read by some blocks: the others are finished
    and kept for --resume once the chunk is repaired."""
    data = synthetic_stack((120, 120), 7, dtype="uint16", seed=2).stack
    src = tmp_path / "in.zarr"
    _write_zyx(src, data, chunks=(7, 40, 40))
    good = {key: (src / key).read_bytes() for key in ("c/0/1/1", "c/0/2/2")}
    child_tmp = tmp_path / "child-tmp"

    # The centre chunk: all 9 blocks read it (halo 13 px). Nothing can be written.
    _corrupt(src, kind, "c/0/1/1")
    src_tree = _tree(src)
    (tmp_path / "out").mkdir()
    dst = tmp_path / "out" / "fused.zarr"
    res = cli("fuse", src, dst, "--chunks", "40", "--no-progress", tmp=child_tmp)
    _one_error_line(res, 1, f"chunk 'c/0/1/1' of src '{src}'", "corrupt", "nothing was written")
    assert not dst.exists() and os.listdir(tmp_path / "out") == []
    assert _tree(src) == src_tree

    # A corner chunk: 4 of 9 blocks read it; the other 5 are finished and kept.
    (src / "c/0/1/1").write_bytes(good["c/0/1/1"])
    _corrupt(src, kind, "c/0/2/2")
    src_tree = _tree(src)
    res = cli("fuse", src, dst, "--chunks", "40", "--no-progress", tmp=child_tmp)
    _one_error_line(res, 1, "chunk 'c/0/2/2'", "kept with 5 of 9 blocks done", "--resume")
    assert _markers(dst) == {(0, 0), (0, 1), (0, 2), (1, 0), (2, 0)}
    assert not (dst / STATE / "lock").exists()
    assert _tree(src) == src_tree
    (src / "c/0/2/2").write_bytes(good["c/0/2/2"])  # repaired
    res = cli("fuse", src, dst, "--chunks", "40", "--no-progress", "--resume", tmp=child_tmp)
    assert res.returncode == 0, res.stderr
    assert "resuming" in res.stderr and "4 of 9 blocks left" in res.stderr
    # an uninterrupted run of the repaired source (its provenance records the source's files
    # as they are now: the repaired chunk's new mtime)
    reference = tmp_path / "reference.zarr"
    fuse_zarr(str(src), reference, chunks=40, progress=False)
    assert _tree(dst) == _tree(reference)
    assert os.listdir(tmp_path / "out") == ["fused.zarr"]
    assert os.listdir(child_tmp) == []


def test_dst_not_writable(tmp_path, capsys):
    data = synthetic_stack((40, 40), 5, dtype="uint16", seed=4).stack
    src = tmp_path / "in.zarr"
    _write_zyx(src, data)
    src_tree = _tree(src)
    child_tmp = tmp_path / "child-tmp"
    # /proc cannot hold new folders, even for root.
    res = cli("fuse", src, "/proc/fstack-dask-test.zarr", "--no-progress", tmp=child_tmp)
    _one_error_line(res, 1, "cannot be created")
    assert not os.path.exists("/proc/fstack-dask-test.zarr")
    # A parent folder that does not exist is not created (a typo): refused up front.
    for dst in ("/proc/fstack-dask-test/fused.zarr", str(tmp_path / "typo" / "fused.zarr")):
        assert main(["fuse", str(src), dst, "--no-progress"]) == 2
        out, err = capsys.readouterr()
        parent = os.path.dirname(dst)
        assert out == "" and len(err.splitlines()) == 1, err
        assert f"cannot be created: its parent folder '{parent}' does not exist" in err
        assert not os.path.exists(parent)
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        res = cli("fuse", src, ro / "fused.zarr", "--no-progress", tmp=child_tmp)
        _one_error_line(res, 1, "not writable")
        assert os.listdir(ro) == []
    assert _tree(src) == src_tree
    assert os.listdir(child_tmp) == []


# The CLI on a disk whose user's quota is reached at the fifth chunk file written (EDQUOT:
# Lustre, GPFS, NFS home folders of HPC centres; the disk itself has room).
_OVER_QUOTA = cli_whose_chunk_writes_fail("EDQUOT", at=5)


def test_a_disk_quota_reached_is_said_as_the_quota(tmp_path):
    """A user's disk quota reached (EDQUOT) was told "no space left on device ... free space",
    where the disk had room and only the user's quota was spent: it says the quota now, how to
    see it, and --resume, which finishes once space is freed."""
    data = synthetic_stack((256, 256), 7, dtype="uint16", seed=5).stack
    src, dst = tmp_path / "in.zarr", tmp_path / "fused.zarr"
    _write_zyx(src, data, chunks=(7, 64, 64))
    args = ["fuse", src, dst, "--chunks", "64", "--scheduler", "synchronous", "--no-progress"]
    res = subprocess.run([sys.executable, "-c", _OVER_QUOTA, *map(str, args[:3]), *args[3:]],
                         capture_output=True, text=True, timeout=TIMEOUT, env=_env(tmp_path),
                         check=False)  # fmt: skip
    _one_error_line(res, 1, f"disk quota exceeded while writing dst '{dst}': free space within "
                    "your quota (quota -s; on Lustre, lfs quota -u $USER) or choose another dst",
                    "rerun with --resume to continue")  # fmt: skip
    res = cli(*args, "--resume", tmp=tmp_path)
    assert res.returncode == 0, res.stderr
    expected = fuse_zarr(str(src), tmp_path / "whole.zarr", chunks=64, progress=False)
    np.testing.assert_array_equal(zarr.open_group(dst, mode="r")["0"][...], expected["0"][...])


@pytest.mark.parametrize(("size", "kept"), [("256k", True), ("8k", False)])
def test_disk_full(tmp_path, size, kept):
    """ENOSPC: one line, exit 1, lock and temporary files gone; the finished blocks are kept
    (marked incomplete) for --resume after freeing space; with nothing finished, nothing is."""
    data = synthetic_stack((256, 256), 7, dtype="uint16", noise=0.05, seed=5).stack
    src = tmp_path / "in.zarr"
    _write_zyx(src, data, chunks=(7, 64, 64))
    src_tree = _tree(src)
    opts = ["--chunks", "64", "--depth-map", "--selectivity-map", "--no-progress"]
    reference = tmp_path / "reference.zarr"
    fuse_zarr(str(src), reference, chunks=64, depth_map=True, selectivity_map=True,
              progress=False)  # fmt: skip
    assert sum(f.stat().st_size for f in reference.rglob("*") if f.is_file()) > 256 * 1024
    child_tmp = tmp_path / "child-tmp"
    with _tmpfs(tmp_path / "small", f"size={size}") as disk:
        dst = disk / "fused.zarr"
        res = cli("fuse", src, dst, *opts, "--scheduler", "synchronous", tmp=child_tmp)
        line = _one_error_line(res, 1, f"no space left on device while writing dst '{dst}'",
                               "free space or choose another dst")  # fmt: skip
        leftovers = [p.name for p in disk.rglob("*") if ".partial" in p.name or p.name == "lock"]
        assert leftovers == []
        if not kept:
            assert "nothing was written" in line
            assert os.listdir(disk) == []
            return
        assert "rerun with --resume to continue" in line
        assert zarr.open_group(str(dst), mode="r").attrs["fstack_dask"]["complete"] is False
        done = _markers(dst)
        assert 0 < len(done) < 16
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)  # freed
        res = cli("fuse", src, dst, *opts, "--resume", tmp=child_tmp)
        assert res.returncode == 0, res.stderr
        assert f"{16 - len(done)} of 16 blocks left" in res.stderr
        assert _tree(dst) == _tree(reference)
        assert os.listdir(disk) == ["fused.zarr"]
    assert _tree(src) == src_tree
    assert os.listdir(child_tmp) == []
